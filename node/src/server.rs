//! The node's server: the ring end of the [`crate::api::Api`]. Every request of a worker
//! process (made while it runs a call) or of an attached driver (on a thread of its own) is
//! decoded, translated from the ids the peer names its handles by into the handles its
//! [`Session`] holds, made on the node's [`Service`], and answered. The server adds no
//! semantics of its own: only the carrier's concerns (ids, values in place in the store, a
//! peer that goes away while it waits).
//!
//! An attached driver may open several links (one per thread that calls the API, so that a
//! thread blocked in `get` holds up no other): each is served by a thread of its own, and
//! all share the handles of its first link ([`Call::Join`], [`Session`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rayhpc::objstore::fdpass;
use rayhpc::objstore::ring::Channel;

use rayhpc::ids::ObjectId;

use crate::api::{lock, timeout_secs, ActorRef, Api, Arg, CallOptions, Class, ErrorKind, Failure, Func, Ref, Result, Value};
use crate::service::Service;
use crate::session::{Session, SessionHandle};
use crate::wire::{self, Call, Envelope, Reply, WireArg, WireClass, WireFunc};
use crate::workers::{answer, reply, Answer, Peer, Requests, Worker, RING};

impl Requests for Service {
    fn serve(&self, s: &mut Session, ch: &Channel, body: &[u8]) -> Vec<u8> {
        serve_request(self, None, s, ch, body)
    }

    fn post(&self, s: &mut Session, ch: &Channel, body: &[u8]) {
        match wire::decode::<Envelope>(body) {
            Ok(env) => {
                s.release(env.release);
                // Only calls that make an object the peer named are posted, and their
                // failures become that object's: nothing is left to answer.
                if let Err(f) = serve_call(self, s, ch, env.call, true) {
                    eprintln!("rayhpc node: a posted call failed with nothing to hold its error: {f}");
                }
            }
            Err(m) => eprintln!("rayhpc node: a malformed posted call was dropped: {m}"),
        }
    }
}

/// The sessions of attached drivers' first links, by the worker number the node gave each
/// (with the driver's pid): what the driver's other links join.
type FirstLinks = Mutex<HashMap<u32, (u32, SessionHandle)>>;

/// The server of one link of an attached driver: the service's, and [`Call::Join`].
struct DriverLink<'a> {
    svc: &'a Service,
    first: &'a FirstLinks,
    pid: u32,
}

impl Requests for DriverLink<'_> {
    fn serve(&self, s: &mut Session, ch: &Channel, body: &[u8]) -> Vec<u8> {
        serve_request(self.svc, Some((self.first, self.pid)), s, ch, body)
    }

    fn post(&self, s: &mut Session, ch: &Channel, body: &[u8]) {
        self.svc.post(s, ch, body)
    }
}

/// Answers one request (encoded); `joins` (an attached driver's link) lets it join the
/// session of the driver's first link.
fn serve_request(svc: &Service, joins: Option<(&FirstLinks, u32)>, s: &mut Session, ch: &Channel, body: &[u8]) -> Vec<u8> {
    let reply = match wire::decode::<Envelope>(body) {
        Ok(env) => {
            s.release(env.release);
            match env.call {
                Call::Join { worker } => join(joins, s, worker).map(|()| Reply::Done),
                call => serve_call(svc, s, ch, call, false),
            }
            .unwrap_or_else(Reply::Failed)
        }
        Err(m) => Reply::Failed(Failure::new(ErrorKind::System, m)),
    };
    wire::encode(&reply)
}

/// Makes this link's session the one of the first link of the same driver (`worker`).
fn join(joins: Option<(&FirstLinks, u32)>, s: &mut Session, worker: u32) -> Result<()> {
    let Some((first, pid)) = joins else {
        return Err(Failure::new(ErrorKind::Value, "only a link of an attached driver may join another"));
    };
    let joined = lock(first).get(&worker).filter(|(p, _)| *p == pid).and_then(|(_, h)| h.join());
    match joined {
        Some(shared) => {
            *s = shared;
            Ok(())
        }
        None => Err(Failure::new(ErrorKind::Value, format!("no live link of process {pid} has worker number {worker}"))),
    }
}

/// Makes object `id`, which the peer named, with `make`; holds it for the peer. A posted
/// call's failure becomes the object's (its `get` raises it); a request's is the caller's.
fn made_as(svc: &Service, s: &mut Session, id: ObjectId, posted: bool, actor: bool, make: impl FnOnce() -> Result<Ref>) -> Result<Reply> {
    let failure = match rayhpc::raw::with_task_id(id.task(), make) {
        Ok(r) if r.id() == id => return Ok(Reply::Ref(s.lend(r))),
        Ok(r) => {
            Failure::new(ErrorKind::System, format!("the call made object {:032x}, not {:032x} as its caller named it", r.id().0, id.0))
        }
        Err(f) => f,
    };
    if !posted {
        return Err(failure);
    }
    match rayhpc::raw::with_task_id(id.task(), || svc.runtime().promise()) {
        Ok((r, promise)) => {
            promise.fail(failure.into_error());
            s.lend(Ref::local(r, actor));
            Ok(Reply::Done)
        }
        Err(e) => Err(e.into()),
    }
}

fn args_of(svc: &Service, s: &mut Session, args: Vec<WireArg>) -> Result<Vec<Arg>> {
    args.into_iter()
        .map(|a| match a {
            WireArg::Value(b) => Ok(Arg::Bytes(b)),
            WireArg::Ref(id) => s.resolve(id, |i, a| svc.ref_from_id(i, a)).map(Arg::Ref),
        })
        .collect()
}

fn refs_of(svc: &Service, s: &mut Session, ids: &[rayhpc::ids::ObjectId]) -> Result<Vec<Ref>> {
    ids.iter().map(|id| s.resolve(*id, |i, a| svc.ref_from_id(i, a))).collect()
}

/// The handle of actor `id` the peer names: one it holds, else one reached by id.
fn actor_of(svc: &Service, s: &Session, id: rayhpc::ids::ActorId) -> Result<ActorRef> {
    match s.actor(id) {
        Some(a) => Ok(a),
        None => svc.actor_from_id(id, svc.actors().key_of(id).unwrap_or_default()),
    }
}

/// Holds `a` for the peer: the reply that names it.
fn actor_reply(s: &mut Session, a: ActorRef) -> Reply {
    let (key, methods) = (a.class_key(), a.methods().map(|m| (**m).clone()));
    Reply::Actor(s.lend_actor(a), key, methods)
}

fn serve_call(svc: &Service, s: &mut Session, ch: &Channel, call: Call, posted: bool) -> Result<Reply> {
    // A wait ends early when the peer's channel closes (its actor killed, the runtime shut
    // down), instead of holding the executor.
    let stop = || ch.closed();
    Ok(match call {
        Call::Define { key, blob, class_name } => {
            svc.define(key, &blob, class_name.as_deref())?;
            Reply::Done
        }
        Call::Submit { id, func, options, args } => {
            let f = match func {
                WireFunc::Python(k) => Func::Python(k),
                WireFunc::Native(n) => Func::Native(n),
            };
            // The options first: a call that fails still leaves them known for later ones.
            let made = s.options(options).and_then(|o| Ok((args_of(svc, s, args)?, o)));
            made_as(svc, s, id, posted, false, || {
                let (args, o) = made?;
                svc.submit(&f, args, &o)
            })?
        }
        Call::CreateActor { class, options, args } => {
            let class = match class {
                WireClass::Python(k) => Class::Python(k),
                WireClass::Native(n) => Class::Native(n),
            };
            let a = svc.create_actor(&class, args_of(svc, s, args)?, &CallOptions::new(options))?;
            actor_reply(s, a)
        }
        Call::Method { id, actor, method, args } => {
            let made = actor_of(svc, s, actor).and_then(|a| Ok((a, args_of(svc, s, args)?)));
            made_as(svc, s, id, posted, true, || {
                let (a, args) = made?;
                svc.call_actor(&a, &method, args)
            })?
        }
        Call::Put { bytes } => {
            let r = svc.put(bytes.len(), &mut |buf| {
                buf.copy_from_slice(&bytes);
                Ok(())
            })?;
            Reply::Ref(s.lend(r))
        }
        Call::Get { ids, timeout } => {
            let refs = refs_of(svc, s, &ids)?;
            let values = svc.get_until(&refs, timeout_secs(timeout)?, Some(&stop))?;
            // A stored object goes by key: the peer reads it in place, pinned by the ref it
            // holds until it has its own pin.
            Reply::Values(
                values
                    .into_iter()
                    .map(|v| {
                        v.map(|v| match &v {
                            Value::View(view) => match view.stored_key() {
                                Some(key) => wire::key_marker(key, v.len() as u64).to_vec(),
                                None => v.to_vec(),
                            },
                            _ => v.to_vec(),
                        })
                    })
                    .collect(),
            )
        }
        Call::Wait { ids, num_returns, timeout } => {
            let refs = refs_of(svc, s, &ids)?;
            Reply::Ready(svc.wait_indices_until(&refs, num_returns, timeout_secs(timeout)?, Some(&stop))?)
        }
        Call::Kill { actor, no_restart } => {
            svc.kill(&actor_of(svc, s, actor)?, no_restart)?;
            Reply::Done
        }
        Call::GetActor { name } => {
            let a = svc.get_actor(&name)?;
            actor_reply(s, a)
        }
        Call::Escape { id } => {
            // A ref this peer holds is kept while its id travels; one it only passes on
            // (escaped already, here or on the node that made it) needs nothing, and above
            // all no fetch.
            if let Some(r) = s.get(id) {
                svc.escape(&r)?;
            }
            Reply::Done
        }
        Call::RefFromId { id, from_actor } => Reply::Ref(s.lend_by_id(id, from_actor)),
        Call::EscapeActor { actor } => {
            svc.escape_actor(&actor_of(svc, s, actor)?)?;
            Reply::Done
        }
        Call::ActorFromId { actor, key } => {
            let a = match s.actor(actor) {
                Some(a) => a,
                None => svc.actor_from_id(actor, key)?,
            };
            actor_reply(s, a)
        }
        Call::Cancel { id, force } => {
            svc.cancel(&s.resolve(id, |i, a| svc.ref_from_id(i, a))?, force)?;
            Reply::Done
        }
        Call::Items { id, n } => {
            let refs = svc.items(&s.resolve(id, |i, a| svc.ref_from_id(i, a))?, n)?;
            Reply::Refs(refs.into_iter().map(|r| s.lend(r)).collect())
        }
        Call::Adopt { key, as_ref } => {
            let o = svc
                .runtime()
                .object_store()
                .adopt(key)
                .map_err(|e| Failure::new(ErrorKind::Value, format!("object {key:032x} to adopt: {e}")))?;
            if as_ref {
                let r = svc.runtime().put_object(o)?;
                Reply::Ref(s.lend(Ref::local(r, false)))
            } else {
                s.adopted.insert(key, o);
                Reply::Done
            }
        }
        Call::Resources => Reply::Resources(svc.resources()?),
        Call::Nodes => Reply::Nodes(svc.nodes()?),
        Call::Kv(op) => Reply::Kv(svc.kv(op)?),
        Call::Sync => Reply::Done,
        // Served on the thread that runs the worker's call (it waits for its answer).
        Call::Context => Reply::Context(svc.context()?),
        Call::ActorNames => Reply::Names(svc.actor_names()?),
        Call::Join { .. } => return Err(Failure::new(ErrorKind::Value, "a link joins with a request of its own, first")),
    })
}

/// The links of attached drivers: their channels, closed when the node stops, and the
/// sessions of their first links.
#[derive(Default)]
pub struct Drivers {
    channels: Mutex<Vec<Arc<Channel>>>,
    first: Arc<FirstLinks>,
}

impl Drivers {
    /// Closes every driver's channel (they see the node gone).
    pub fn close_all(&self) {
        for ch in lock(&self.channels).drain(..) {
            ch.close();
        }
    }
}

/// Serves a link of a driver process that connected to this node runtime
/// (`init(address=...)`): reads its hello (magic and pid), hands it a channel (the
/// descriptor over the connection) and answers its requests, on a thread of its own, until
/// it goes. A driver's first link has a session of its own; its other links join it
/// ([`Call::Join`]). Its handles are let go when all its links are gone.
///
/// # Errors
/// The hello is not a driver's, or the channel cannot be made or sent.
pub fn attach_driver(svc: &Arc<Service>, drivers: &Drivers, conn: std::os::unix::net::UnixStream) -> std::io::Result<()> {
    use std::io::Read;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut hello = [0u8; 12];
    (&conn).read_exact(&mut hello)?;
    if &hello[..8] != wire::DRIVER_MAGIC {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a rayhpc driver"));
    }
    let pid = u32::from_le_bytes(hello[8..].try_into().expect("4 bytes"));
    let ch = Channel::create(RING)?;
    let ids = svc.workers().peer_ids();
    let mut answer_ = [0u8; 16];
    answer_[..8].copy_from_slice(wire::NODE_MAGIC);
    answer_[8..12].copy_from_slice(&ids.node.to_le_bytes());
    answer_[12..].copy_from_slice(&ids.worker.to_le_bytes());
    fdpass::send(&conn, &answer_, &[ch.fd()])?;
    conn.set_nonblocking(true)?;
    {
        let mut channels = lock(&drivers.channels);
        channels.retain(|c| !c.closed());
        channels.push(ch.clone());
    }
    let mut w = Worker::new(Peer::Driver { conn, pid }, ch);
    w.session = Session::of_driver(ids);
    {
        let mut first = lock(&drivers.first);
        first.retain(|_, (_, h)| h.alive());
        first.insert(ids.worker, (pid, w.session.handle()));
    }
    let svc = Arc::downgrade(svc);
    let first = drivers.first.clone();
    std::thread::Builder::new().name(format!("rayhpc-driver-{pid}")).spawn(move || loop {
        let Some(s) = svc.upgrade() else { break };
        match answer(None, &mut w) {
            Ok(Answer::Request(body)) => {
                if reply(&DriverLink { svc: &s, first: &first, pid }, &mut w, &body).is_err() {
                    break;
                }
            }
            Ok(Answer::Post(body)) => s.post(&mut w.session, &w.ch, &body),
            Ok(Answer::Released | Answer::Done(_)) => {}
            Err(_) => break, // gone, or the runtime shut down
        }
    })?;
    Ok(())
}
