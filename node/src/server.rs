//! The node's server: the ring end of the [`crate::api::Api`]. Every request of a worker
//! process (made while it runs a call) or of an attached driver (on a thread of its own) is
//! decoded, translated from the ids the peer names its handles by into the handles its
//! [`Session`] holds, made on the node's [`Service`], and answered. The server adds no
//! semantics of its own: only the carrier's concerns (ids, values in place in the store, a
//! peer that goes away while it waits).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rayhpc::objstore::fdpass;
use rayhpc::objstore::ring::Channel;

use rayhpc::ids::ObjectId;

use crate::api::{lock, timeout_secs, ActorRef, Api, Arg, CallOptions, ErrorKind, Failure, Func, Ref, Result, Service, Value};
use crate::session::Session;
use crate::wire::{self, Call, Envelope, Reply, WireArg, WireFunc};
use crate::workers::{answer, reply, Answer, Peer, Requests, Worker, RING};

impl Requests for Service {
    fn serve(&self, s: &mut Session, ch: &Channel, body: &[u8]) -> Vec<u8> {
        let reply = match wire::decode::<Envelope>(body) {
            Ok(env) => {
                s.release(env.release);
                serve_call(self, s, ch, env.call, false).unwrap_or_else(Reply::Failed)
            }
            Err(m) => Reply::Failed(Failure::new(ErrorKind::System, m)),
        };
        wire::encode(&reply)
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
            WireArg::Ref(id) => s.resolve(svc, id).map(Arg::Ref),
        })
        .collect()
}

fn refs_of(svc: &Service, s: &mut Session, ids: &[rayhpc::ids::ObjectId]) -> Result<Vec<Ref>> {
    ids.iter().map(|id| s.resolve(svc, *id)).collect()
}

/// The handle of actor `id` the peer names: one it holds, else one reached by id.
fn actor_of(svc: &Service, s: &Session, id: rayhpc::ids::ActorId) -> Result<ActorRef> {
    match s.actor(id) {
        Some(a) => Ok(a.clone()),
        None => svc.actor_from_id(id, svc.actors().key_of(id).unwrap_or_default()),
    }
}

fn secs(t: Option<f64>) -> Result<Option<Duration>> {
    timeout_secs(t)
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
            let made = args_of(svc, s, args).and_then(|args| Ok((args, s.options(options)?)));
            made_as(svc, s, id, posted, false, || {
                let (args, o) = made?;
                svc.submit(&f, args, &o)
            })?
        }
        Call::CreateActor { key, options, args } => {
            let a = svc.create_actor(key, args_of(svc, s, args)?, &CallOptions::new(options))?;
            Reply::Actor(s.lend_actor(a), key)
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
            let values = svc.get_until(&refs, secs(timeout)?, Some(&stop))?;
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
            Reply::Ready(svc.wait_indices_until(&refs, num_returns, secs(timeout)?, Some(&stop))?)
        }
        Call::Kill { actor } => {
            svc.kill(&actor_of(svc, s, actor)?)?;
            Reply::Done
        }
        Call::GetActor { name } => {
            let a = svc.get_actor(&name)?;
            let key = a.class_key();
            Reply::Actor(s.lend_actor(a), key)
        }
        Call::Escape { id } => {
            // A ref this peer holds is kept while its id travels; one it only passes on
            // (escaped already, here or on the node that made it) needs nothing, and above
            // all no fetch.
            if let Some(r) = s.get(id) {
                svc.escape(r)?;
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
                Some(a) => a.clone(),
                None => svc.actor_from_id(actor, key)?,
            };
            Reply::Actor(s.lend_actor(a), key)
        }
        Call::Cancel { id, force } => {
            svc.cancel(&s.resolve(svc, id)?, force)?;
            Reply::Done
        }
        Call::Items { id, n } => {
            let refs = svc.items(&s.resolve(svc, id)?, n)?;
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
    })
}

/// The channels of attached drivers, closed when the node stops.
#[derive(Default)]
pub struct Drivers(Mutex<Vec<Arc<Channel>>>);

impl Drivers {
    /// Closes every driver's channel (they see the node gone).
    pub fn close_all(&self) {
        for ch in lock(&self.0).drain(..) {
            ch.close();
        }
    }
}

/// Serves a driver process that connected to this node runtime (`init(address=...)`): reads
/// its hello (magic and pid), hands it a channel (the descriptor over the connection) and
/// answers its requests, on a thread of its own, until it goes. Its handles are let go when
/// it does.
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
    lock(&drivers.0).push(ch.clone());
    let mut w = Worker::new(Peer::Driver { conn, pid }, ch);
    let svc = Arc::downgrade(svc);
    std::thread::Builder::new().name(format!("rayhpc-driver-{pid}")).spawn(move || loop {
        let Some(s) = svc.upgrade() else { break };
        match answer(None, &mut w) {
            Ok(Answer::Request(body)) => {
                if reply(&*s, &mut w, &body).is_err() {
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
