//! The node's [`Router`], as the cluster implements it: placement over the cluster's view,
//! names and the KV store at the head, objects and actors of other nodes reached there.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Weak;

use rayhpc::ids::{ActorId, ObjectId};
use rayhpc::raw::RawArg;
use rayhpc::{Error, ObjectRef, Untyped};
use rayhpc_node::api::{NodeInfo as ApiNode, ResourceInfo};
use rayhpc_node::kv::{KvAnswer, KvOp};
use rayhpc_node::router::{Here, Router, TaskFn};
use rayhpc_node::wire::{Key, WireOptions};
use rayhpc_transport::{NodeId, Peer};

use crate::control::{Request, Response};
use crate::membership::Membership;
use crate::messages::{CancelMsg, CancelTarget, Msg};

/// The pool's [`Router`]: placement over the cluster's view.
pub(crate) struct RouterOf(pub(crate) Weak<Membership>);

impl Router for RouterOf {
    fn route(
        &self,
        func: TaskFn,
        args: Vec<RawArg>,
        options: &WireOptions,
        here: Here<'_, ObjectRef<Untyped>>,
    ) -> Result<ObjectRef<Untyped>, Error> {
        let Some(inner) = self.0.upgrade() else { return here(args) };
        if inner.stop.load(Ordering::Acquire) {
            return here(args);
        }
        let nodes = inner.candidates();
        match inner.remote.place_task(options, &args, &nodes) {
            Some(c) => match inner.peer_of(&c) {
                Some(peer) => inner.remote.submit(&peer, func, args, options.clone()),
                None => inner.remote.run_here(args, options, here),
            },
            None => inner.remote.run_here(args, options, here),
        }
    }

    fn create_actor(&self, key: Key, options: &WireOptions, args: Vec<RawArg>, here: Here<'_, ActorId>) -> Result<ActorId, Error> {
        let Some(inner) = self.0.upgrade() else { return here(args) };
        let nodes = inner.candidates();
        let peer = inner.remote.place_actor(options, &nodes).and_then(|c| inner.peer_of(&c));
        let node = peer.as_ref().map(Peer::node);
        inner.remote.note_actor(node, options);
        let made = match peer {
            Some(peer) => inner.remote.create_actor(&peer, key, options, args),
            None => here(args),
        };
        if let Ok(actor) = &made {
            inner.remote.note_made(*actor, node, options);
        }
        made
    }

    fn name_actor(&self, name: &str, actor: ActorId, key: Key) -> Result<(), Error> {
        let Some(inner) = self.0.upgrade() else { return Ok(()) };
        let owner = (actor.0 >> 96) as u32;
        match inner.control(Request::ActorName { name: name.to_string(), node: owner, actor, key }) {
            Ok(Response::Error(m)) => Err(Error::NameTaken(m)),
            Ok(_) => Ok(()),
            Err(e) => Err(Error::Invalid(format!("cannot name the actor: {e}"))),
        }
    }

    fn lookup_actor(&self, name: &str) -> Option<(ActorId, Key)> {
        let inner = self.0.upgrade()?;
        match inner.control(Request::ActorLookup { name: name.to_string() }) {
            Ok(Response::Actor(found)) => found,
            _ => None,
        }
    }

    fn actor_names(&self) -> Vec<String> {
        let Some(inner) = self.0.upgrade() else { return Vec::new() };
        match inner.control(Request::ActorNames) {
            Ok(Response::Names(names)) => names,
            _ => Vec::new(),
        }
    }

    fn forget_actor(&self, name: &str, actor: ActorId) {
        if let Some(inner) = self.0.upgrade() {
            let _ = inner.control(Request::ActorForget { name: name.to_string(), actor });
        }
    }

    fn nodes(&self) -> Vec<ApiNode> {
        let Some(inner) = self.0.upgrade() else { return Vec::new() };
        inner
            .view_now()
            .into_iter()
            .map(|n| ApiNode {
                rank: n.rank,
                alive: n.alive,
                address: n.addr.rsplit_once(':').map_or(n.addr.clone(), |(ip, _)| ip.to_string()),
                host: n.host,
                resources: n.resources.into_iter().map(|(k, (t, _))| (k, t)).collect(),
            })
            .collect()
    }

    fn resources(&self) -> Vec<ResourceInfo> {
        let Some(inner) = self.0.upgrade() else { return Vec::new() };
        let mut sum: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for n in inner.view_now().iter().filter(|n| n.alive) {
            for (k, (t, a)) in &n.resources {
                let e = sum.entry(k.clone()).or_default();
                e.0 += t;
                e.1 += a;
            }
        }
        sum.into_iter().map(|(name, (total, available))| ResourceInfo { name, total, available }).collect()
    }

    fn kv(&self, op: KvOp) -> Result<KvAnswer, Error> {
        let Some(inner) = self.0.upgrade() else { return Err(Error::Shutdown) };
        match inner.control(Request::Kv(op)) {
            Ok(Response::Kv(a)) => Ok(a),
            Ok(Response::Error(m)) => Err(Error::Invalid(m)),
            Ok(other) => Err(Error::Invalid(format!("the head answered a KV request with {other:?}"))),
            Err(e) => Err(Error::Invalid(format!("the KV store is out of reach: {e}"))),
        }
    }

    fn kill_actor(&self, actor: ActorId) -> bool {
        let Some(inner) = self.0.upgrade() else { return false };
        inner.remote.note_kill(actor);
        let owner = (actor.0 >> 96) as u32;
        if owner == inner.rank {
            return false;
        }
        if let Some(peer) = inner.candidates().iter().find(|c| c.node == NodeId(u64::from(owner))).and_then(|c| inner.peer_of(c)) {
            inner.remote.kill_actor(&peer, actor);
        }
        true
    }

    fn fetch(&self, id: ObjectId) -> Option<ObjectRef<Untyped>> {
        let inner = self.0.upgrade()?;
        let owner = id.node();
        if owner == inner.rank {
            return None;
        }
        // A live node: fetched from it; a node the cluster knew but lost (or never had): lost.
        let peer = inner.candidates().iter().find(|c| c.node == NodeId(u64::from(owner))).and_then(|c| inner.peer_of(c));
        inner.remote.fetch(peer, id)
    }

    fn cancel(&self, id: ObjectId, force: bool) -> bool {
        let Some(inner) = self.0.upgrade() else { return false };
        if inner.remote.cancel_routed(id, force) {
            return true;
        }
        let owner = id.node();
        if owner == inner.rank {
            return false;
        }
        // Made by another node (this one holds a copy of its ref): the cancel goes there.
        let peer = inner.candidates().iter().find(|c| c.node == NodeId(u64::from(owner))).and_then(|c| inner.peer_of(c));
        if let Some(peer) = peer {
            let msg = CancelMsg { target: CancelTarget::Result(id), force };
            let _ = peer.send(Msg::Cancel.kind(), &postcard::to_allocvec(&msg).expect("serializes"));
        }
        true
    }

    fn actor_call(&self, actor: ActorId, method: &str, args: Vec<RawArg>) -> Option<Result<ObjectRef<Untyped>, Error>> {
        let inner = self.0.upgrade()?;
        // An actor's id names the node that made it (ids are `node | worker | seq`).
        let owner = (actor.0 >> 96) as u32;
        if owner == inner.rank {
            return None;
        }
        let c = inner.candidates().iter().find(|c| c.node == NodeId(u64::from(owner)))?.clone();
        let peer = inner.peer_of(&c)?;
        let func = TaskFn::Method { actor, method: method.to_string() };
        // No retries: a call lost with its node finds the actor gone.
        let options = WireOptions { num_cpus: Some(0.0), max_retries: Some(0), ..WireOptions::default() };
        Some(inner.remote.submit(&peer, func, args, options))
    }
}
