//! What one peer of a ring (a worker process, an attached driver) holds at the node: the
//! objects and actors it has handles to, and the objects it sealed into the store for its
//! running call. The peer names them by id; the node keeps them alive until the peer says it
//! let go (with its next request or a release message) or goes away. Each handle the node
//! hands out is counted, and each one the peer drops is told once: an object handed out
//! twice stays until both are let go.
//!
//! An attached driver may have several links (one per thread that calls the API, see
//! [`crate::ring_client::RingClient`]), each served by a thread of the node: their [`Session`]s share
//! one holding ([`SessionHandle::join`]), so that a handle made through one link is good on all.
//! A link's messages are served in order, but two links are not ordered with each other: a
//! result another thread of the peer posted (and named itself) may not be held yet when this
//! link names it. Such an id — one the peer made, with its [`IdGen`] — is waited for (a
//! bounded moment: the post is already in the other link's ring); a release of it that comes
//! first is kept and applied when the object comes.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use rayhpc::ids::{ActorId, ObjectId};
use rayhpc::objstore::Object;

use crate::api::{ActorRef, CallOptions, ErrorKind, Failure, Ref};
use crate::wire::{IdGen, Opts, Release};

/// How long a link waits for what another link of its peer has on its way (a post already
/// sent: it comes within microseconds unless the node is overloaded).
const IN_FLIGHT: Duration = Duration::from_secs(10);

/// One peer's handles, as one of its links sees them.
pub struct Session {
    /// Objects the peer sealed into the store as its running call's result, by key (this
    /// link's: only a worker's running call makes them).
    pub(crate) adopted: HashMap<u128, Object>,
    shared: Arc<Shared>,
}

/// What every link of a peer shares.
struct Shared {
    held: Mutex<Held>,
    /// Signalled when the holdings grow (what a link waits on for another link's post).
    grew: Condvar,
    /// How the peer names its calls' results: such an id not held yet may be on its way.
    ids: Option<IdGen>,
}

#[derive(Default)]
struct Held {
    /// The objects it holds; `None` until first used, for a ref that travelled inside a
    /// value (resolved then: an object of another node is fetched only if it is read).
    refs: HashMap<ObjectId, (Option<Ref>, bool, u32)>,
    actors: HashMap<ActorId, (ActorRef, u32)>,
    /// The options its calls named, by their number.
    options: HashMap<u64, Arc<CallOptions>>,
    /// Releases of the peer's own results that came (on another link) before the result.
    early: HashMap<ObjectId, u32>,
    /// Links waiting on `grew` (a notify costs a system call even when nobody waits: it is
    /// made only when somebody does).
    waiting: u32,
}

impl Default for Session {
    fn default() -> Self {
        Session::new(None)
    }
}

/// A weak hold on a peer's session, by which its other links join it.
#[derive(Clone)]
pub struct SessionHandle(Weak<Shared>);

impl SessionHandle {
    /// A new link's session sharing the peer's holdings, while any link of it lives.
    pub fn join(&self) -> Option<Session> {
        self.0.upgrade().map(|shared| Session { adopted: HashMap::new(), shared })
    }

    /// Whether a link of the peer still lives.
    pub fn alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

impl Session {
    fn new(ids: Option<IdGen>) -> Session {
        Session { adopted: HashMap::new(), shared: Arc::new(Shared { held: Mutex::default(), grew: Condvar::new(), ids }) }
    }

    /// The session of a driver that names its results with `ids` (and may add links).
    pub fn of_driver(ids: IdGen) -> Session {
        Session::new(Some(ids))
    }

    /// A handle other links of the peer join with.
    pub fn handle(&self) -> SessionHandle {
        SessionHandle(Arc::downgrade(&self.shared))
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.shared.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `id` names a result the peer made itself, which another of its links may
    /// still be bringing.
    fn may_come(&self, id: ObjectId) -> bool {
        self.shared.ids.is_some_and(|g| id.node() == g.node && id.task().worker() == g.worker) && self.linked()
    }

    /// Whether other links share this session.
    fn linked(&self) -> bool {
        Arc::strong_count(&self.shared) > 1
    }

    /// What `find` finds in the holdings; when `wait`, waits (up to [`IN_FLIGHT`]) for
    /// another link to bring it.
    fn find<T>(&self, wait: bool, mut find: impl FnMut(&mut Held) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + IN_FLIGHT;
        let mut held = self.held();
        loop {
            if let Some(v) = find(&mut held) {
                return Some(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !wait || left.is_zero() {
                return None;
            }
            held.waiting += 1;
            held = self.shared.grew.wait_timeout(held, left).unwrap_or_else(|e| e.into_inner()).0;
            held.waiting -= 1;
        }
    }

    /// Ends a change of the holdings: wakes the links waiting for one, if any.
    fn grown(&self, held: MutexGuard<'_, Held>) {
        let wake = held.waiting > 0;
        drop(held);
        if wake {
            self.shared.grew.notify_all();
        }
    }

    /// Holds `r` for the peer: the id it names it by.
    pub fn lend(&mut self, r: Ref) -> ObjectId {
        let id = r.id();
        let mut held = self.held();
        if let Some(n) = held.early.get_mut(&id) {
            // Let go of already (on another link): nothing to hold.
            *n -= 1;
            if *n == 0 {
                held.early.remove(&id);
            }
            drop(held);
            return id;
        }
        let e = held.refs.entry(id).or_insert((None, r.from_actor(), 0));
        e.0.get_or_insert(r);
        e.2 += 1;
        self.grown(held);
        id
    }

    /// The options a call names: new ones are kept under their number.
    ///
    /// # Errors
    /// A number the peer never sent.
    pub fn options(&mut self, o: Opts) -> Result<Arc<CallOptions>, Failure> {
        match o {
            Opts::New(n, w) => {
                let mut held = self.held();
                let o = held.options.entry(n).or_insert_with(|| Arc::new(CallOptions::new(w))).clone();
                self.grown(held);
                Ok(o)
            }
            // Numbered by the peer: new ones may be on their way on another link.
            Opts::Known(n) => self
                .find(self.linked(), |h| h.options.get(&n).cloned())
                .ok_or_else(|| Failure::new(ErrorKind::Value, format!("options {n} were never sent"))),
        }
    }

    /// Holds `a` for the peer.
    pub fn lend_actor(&mut self, a: ActorRef) -> ActorId {
        let id = a.id();
        self.held().actors.entry(id).or_insert((a, 0)).1 += 1;
        id
    }

    /// Holds object `id`, whose ref travelled inside a value, for the peer: resolved when
    /// first used.
    pub fn lend_by_id(&mut self, id: ObjectId, from_actor: bool) -> ObjectId {
        let mut held = self.held();
        held.refs.entry(id).or_insert((None, from_actor, 0)).2 += 1;
        self.grown(held);
        id
    }

    /// The object the peer names `id`, if it holds it resolved.
    pub fn get(&self, id: ObjectId) -> Option<Ref> {
        self.find(self.may_come(id), |h| h.refs.get(&id).map(|(r, _, _)| r.clone())).flatten()
    }

    /// The object the peer names `id`, resolved now if it was not yet, by `from_id` (given
    /// the id and whether it is an actor's result; the service's `ref_from_id`).
    ///
    /// # Errors
    /// The peer holds no such ref, or it cannot be resolved.
    pub fn resolve(&mut self, id: ObjectId, from_id: impl FnOnce(ObjectId, bool) -> Result<Ref, Failure>) -> Result<Ref, Failure> {
        let (r, actor) = self.find(self.may_come(id), |h| h.refs.get(&id).map(|(r, a, _)| (r.clone(), *a))).ok_or_else(|| unknown(id))?;
        if let Some(r) = r {
            return Ok(r);
        }
        // Resolved without the lock (it may fetch the object from another node).
        let got = from_id(id, actor)?;
        Ok(match self.held().refs.get_mut(&id) {
            Some(e) => e.0.get_or_insert(got).clone(),
            None => got,
        })
    }

    /// The actor the peer names `id`, if it holds a handle.
    pub fn actor(&self, id: ActorId) -> Option<ActorRef> {
        self.held().actors.get(&id).map(|(a, _)| a.clone())
    }

    /// Lets go of what the peer dropped.
    pub fn release(&mut self, r: Release) {
        let mut gone = Vec::new();
        let mut held = self.held();
        for id in r.objects {
            match held.refs.entry(id) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    e.get_mut().2 -= 1;
                    if e.get().2 == 0 {
                        gone.push(e.remove());
                    }
                }
                std::collections::hash_map::Entry::Vacant(_) if self.may_come(id) => *held.early.entry(id).or_insert(0) += 1,
                std::collections::hash_map::Entry::Vacant(_) => {}
            }
        }
        let mut gone_actors = Vec::new();
        for id in r.actors {
            if let std::collections::hash_map::Entry::Occupied(mut e) = held.actors.entry(id) {
                e.get_mut().1 -= 1;
                if e.get().1 == 0 {
                    gone_actors.push(e.remove());
                }
            }
        }
        drop(held);
        // Handles dropped outside the lock.
        drop((gone, gone_actors));
    }

    /// Refs held now (for tests and diagnostics).
    pub fn held_refs(&self) -> usize {
        self.held().refs.len()
    }
}

fn unknown(id: ObjectId) -> Failure {
    Failure::new(ErrorKind::Value, format!("ObjectRef({:032x}) is not held by this process", id.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayhpc::ids::TaskId;

    fn own(seq: u64) -> ObjectId {
        TaskId::new(0, 7, seq).object(0)
    }

    #[test]
    fn a_sibling_link_waits_for_a_post_in_flight_and_early_releases_are_kept() {
        let rt = rayhpc::Runtime::init(rayhpc::Config { executors: Some(1), ..rayhpc::Config::default() }).unwrap();
        let mut a = Session::of_driver(IdGen { node: 0, worker: 7 });
        let b = a.handle().join().unwrap();
        let id = own(1);
        let r = rayhpc::raw::with_task_id(id.task(), || rt.put_bytes(b"x")).unwrap();
        assert_eq!(r.id(), id);
        let waiter = std::thread::spawn(move || (b.get(id).map(|r| r.id()), b));
        std::thread::sleep(Duration::from_millis(50));
        a.lend(Ref::local(r, false));
        let (found, _b) = waiter.join().unwrap();
        assert_eq!(found, Some(id), "the other link found the object once it came");

        // A release that overtakes its object: the object, when it comes, is not held.
        let id2 = own(2);
        a.release(Release { objects: vec![id2], actors: vec![] });
        let r2 = rayhpc::raw::with_task_id(id2.task(), || rt.put_bytes(b"y")).unwrap();
        a.lend(Ref::local(r2, false));
        assert_eq!(a.held_refs(), 1);
        // Not the peer's own id: not waited for.
        let t = Instant::now();
        assert!(a.get(TaskId::new(0, 8, 1).object(0)).is_none());
        assert!(t.elapsed() < Duration::from_secs(1));
        rt.shutdown();
    }
}
