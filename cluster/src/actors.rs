//! Actors on other nodes. An actor is created where what it asks for is free
//! ([`crate::place::place_actor`]): `ActorNew` to that node, which pins it until it is
//! killed (`ActorKill`). A call of an actor that lives on another node (an actor's id names
//! the node that made it: every node makes ids with its rank) goes to that node as a task
//! ([`crate::tasks`]), in order with the others. Names are the head's
//! ([`crate::control`]).

use std::sync::Arc;
use std::time::Duration;

use rayhpc::ids::ActorId;
use rayhpc::raw::RawArg;
use rayhpc::{Error, ObjectRef, Untyped};
use rayhpc_node::api::{CallOptions, ErrorKind, Failure};
use rayhpc_node::wire::{Key, WireOptions};
use rayhpc_transport::Peer;

use crate::messages::{ActorMade, ActorMsg, Msg};
use crate::remote::Remote;
use crate::sync::lock;

impl Remote {
    /// Creates an actor of class `key` on `peer`'s node (its arguments ready: this waits for
    /// them): the actor's id. Objects among the arguments are lent to that node until it
    /// pulled them.
    ///
    /// # Errors
    /// The node refused (the reason), or is gone.
    pub(crate) fn create_actor(
        self: &Arc<Self>,
        peer: &Peer,
        key: Key,
        options: &WireOptions,
        args: Vec<RawArg>,
    ) -> Result<ActorId, Error> {
        let service = self.service.upgrade().ok_or(Error::Shutdown)?;
        let refs: Vec<ObjectRef<Untyped>> =
            args.iter().filter_map(|a| if let RawArg::Ref(r) = a { Some(r.clone()) } else { None }).collect();
        service.runtime().wait_for(&refs, refs.len(), None)?;
        let blob =
            service.workers().blob(&key).ok_or_else(|| Error::Invalid("unknown actor class (not registered in this runtime)".into()))?;
        let class = service.actors().class_name(&key).unwrap_or_else(|| "Actor".into());
        let (wargs, exported) = self.outgoing(&args)?;
        // Lent to that node (let go if it dies, or when it says it pulled them), whatever
        // happens to this creation.
        lock(&self.objects.lent).entry(peer.node()).or_default().extend(exported);
        let msg = ActorMsg { key, blob: blob.to_vec(), class, options: options.clone(), args: wargs };
        let bytes = postcard::to_allocvec(&msg).map_err(|e| Error::Invalid(format!("cannot encode an actor for another node: {e}")))?;
        let f = peer
            .request(Msg::ActorNew.kind(), &bytes, Duration::from_secs(60))
            .map_err(|e| Error::Invalid(format!("node {}: {e}", peer.node())))?;
        postcard::from_bytes::<ActorMade>(&f.payload)
            .map_err(|e| Error::Invalid(format!("a malformed answer from node {}: {e}", peer.node())))?
            .map_err(|f| Error::Invalid(format!("node {} could not create the actor: {}", peer.node(), f.message)))
    }

    /// `ActorNew`: an actor created here for another node (reached by id, pinned until
    /// killed).
    pub(crate) fn on_actor_new(self: &Arc<Self>, peer: &Peer, id: u64, payload: &[u8]) {
        let answer = |r: ActorMade| {
            let _ = peer.respond(id, Msg::ActorNew.kind(), &postcard::to_allocvec(&r).expect("an answer serializes"));
        };
        let Ok(msg) = postcard::from_bytes::<ActorMsg>(payload) else {
            return answer(Err(Failure::new(ErrorKind::System, "a malformed actor")));
        };
        let Some(service) = self.service.upgrade() else { return answer(Err(Failure::new(ErrorKind::Shutdown, "shut down"))) };
        service.define_local(msg.key, &msg.blob, Some(&msg.class));
        // Lent: the requester lets them go when this node says it pulled them.
        let args = match self.received(peer, &service, msg.args, true) {
            Ok(a) => a,
            Err(e) => return answer(Err(Failure::of(e, false))),
        };
        answer(service.create_pinned(msg.key, &CallOptions::new(msg.options.clone()), args).map_err(|e| Failure::of(e, false)));
    }

    /// `ActorKill`: kills an actor of this node, in order with the calls that came before
    /// and after it; only freeing its name (which may wait for the head) is left to another
    /// thread.
    pub(crate) fn on_actor_kill(&self, payload: &[u8]) {
        if let (Ok(actor), Some(service)) = (postcard::from_bytes::<ActorId>(payload), self.service.upgrade()) {
            service.kill_local(actor, false);
        }
    }

    /// Kills an actor of `peer`'s node.
    pub(crate) fn kill_actor(&self, peer: &Peer, actor: ActorId) {
        if let Ok(b) = postcard::to_allocvec(&actor) {
            let _ = peer.send(Msg::ActorKill.kind(), &b);
        }
    }
}
