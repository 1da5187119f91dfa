//! What one peer of a ring (a worker process, an attached driver) holds at the node: the
//! objects and actors it has handles to, and the objects it sealed into the store for its
//! running call. The peer names them by id; the node keeps them alive until the peer says it
//! let go (with its next request or a release message) or goes away. Each handle the node
//! hands out is counted, and each one the peer drops is told once: an object handed out
//! twice stays until both are let go.

use std::collections::HashMap;

use rayhpc::ids::{ActorId, ObjectId};
use rayhpc::objstore::Object;

use crate::api::{ActorRef, Api, CallOptions, ErrorKind, Failure, Ref, Service};
use crate::wire::Opts;
use crate::wire::Release;

/// One peer's handles.
#[derive(Default)]
pub struct Session {
    /// The objects it holds; `None` until first used, for a ref that travelled inside a
    /// value (resolved then: an object of another node is fetched only if it is read).
    refs: HashMap<ObjectId, (Option<Ref>, bool, u32)>,
    actors: HashMap<ActorId, (ActorRef, u32)>,
    /// Objects the peer sealed into the store as its running call's result, by key.
    pub(crate) adopted: HashMap<u128, Object>,
    /// The options its calls named, by their number.
    options: HashMap<u64, std::sync::Arc<CallOptions>>,
}

impl Session {
    /// Holds `r` for the peer: the id it names it by.
    pub fn lend(&mut self, r: Ref) -> ObjectId {
        let id = r.id();
        let e = self.refs.entry(id).or_insert((None, r.from_actor(), 0));
        e.0.get_or_insert(r);
        e.2 += 1;
        id
    }

    /// The options a call names: new ones are kept under their number.
    ///
    /// # Errors
    /// A number the peer never sent.
    pub fn options(&mut self, o: Opts) -> Result<std::sync::Arc<CallOptions>, Failure> {
        match o {
            Opts::New(n, w) => Ok(self.options.entry(n).or_insert_with(|| std::sync::Arc::new(CallOptions::new(w))).clone()),
            Opts::Known(n) => {
                self.options.get(&n).cloned().ok_or_else(|| Failure::new(ErrorKind::Value, format!("options {n} were never sent")))
            }
        }
    }

    /// Holds `a` for the peer.
    pub fn lend_actor(&mut self, a: ActorRef) -> ActorId {
        let id = a.id();
        self.actors.entry(id).or_insert((a, 0)).1 += 1;
        id
    }

    /// Holds object `id`, whose ref travelled inside a value, for the peer: resolved when
    /// first used.
    pub fn lend_by_id(&mut self, id: ObjectId, from_actor: bool) -> ObjectId {
        self.refs.entry(id).or_insert((None, from_actor, 0)).2 += 1;
        id
    }

    /// The object the peer names `id`, if it holds it resolved.
    pub fn get(&self, id: ObjectId) -> Option<&Ref> {
        self.refs.get(&id).and_then(|(r, _, _)| r.as_ref())
    }

    /// The object the peer names `id`, resolved now if it was not yet.
    ///
    /// # Errors
    /// The peer holds no such ref, or it cannot be resolved.
    pub fn resolve(&mut self, svc: &Service, id: ObjectId) -> Result<Ref, Failure> {
        let (r, actor, _) = self.refs.get_mut(&id).ok_or_else(|| unknown(id))?;
        if let Some(r) = r {
            return Ok(r.clone());
        }
        let got = svc.ref_from_id(id, *actor)?;
        *r = Some(got.clone());
        Ok(got)
    }

    /// The object the peer names `id`, if it holds it resolved.
    ///
    /// # Errors
    /// The peer holds no such ref.
    pub fn get_or_err(&self, id: ObjectId) -> Result<&Ref, Failure> {
        self.get(id).ok_or_else(|| unknown(id))
    }

    /// The actor the peer names `id`, if it holds a handle.
    pub fn actor(&self, id: ActorId) -> Option<&ActorRef> {
        self.actors.get(&id).map(|(a, _)| a)
    }

    /// Lets go of what the peer dropped.
    pub fn release(&mut self, r: Release) {
        for id in r.objects {
            if let std::collections::hash_map::Entry::Occupied(mut e) = self.refs.entry(id) {
                e.get_mut().2 -= 1;
                if e.get().2 == 0 {
                    e.remove();
                }
            }
        }
        for id in r.actors {
            drop_one(&mut self.actors, id);
        }
    }

    /// Refs held now (for tests and diagnostics).
    pub fn held(&self) -> usize {
        self.refs.len()
    }
}

fn drop_one<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, (V, u32)>, k: K) {
    if let std::collections::hash_map::Entry::Occupied(mut e) = m.entry(k) {
        e.get_mut().1 -= 1;
        if e.get().1 == 0 {
            e.remove();
        }
    }
}

fn unknown(id: ObjectId) -> Failure {
    Failure::new(ErrorKind::Value, format!("ObjectRef({:032x}) is not held by this process", id.0))
}
