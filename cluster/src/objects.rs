//! Objects between nodes: what this node lends (exports; how it serves them is
//! [`crate::serve`]'s), and how it takes in the objects of others (arguments of a task or
//! actor sent here, results, refs that travelled inside values: `Fetch`), into its
//! [`crate::copies::Copies`], each pulled on a thread of its own ([`Remote::pull`]).
//!
//! A task's arguments go inline or as objects the owner exports for the executor to pull; a
//! stored result is exported by the executor and pulled by the owner at once (so that the
//! driver's `get` is local), then let go (`Unexport`; what was lent to a node that dies is
//! let go too). A ref that travelled inside a value to another node is fetched from the node
//! that made it (`Fetch`, answered once it is ready); if that node is gone, the object is
//! lost.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rayhpc::ids::ObjectId;
use rayhpc::raw::RawArg;
use rayhpc::{Error, ObjectRef, Promise, Untyped};
use rayhpc_node::api::Failure;
use rayhpc_node::service::Service;
use rayhpc_transport::{NodeId, Peer};

use crate::messages::{object_id, Arg, Msg, Outcome};
use crate::pull::{pull_failed, Via};
use crate::remote::Remote;
use crate::sync::lock;

impl Remote {
    /// Lends `r` as `id` (once more).
    pub(crate) fn export(&self, id: ObjectId, r: ObjectRef<Untyped>) {
        lock(&self.objects.exports).entry(id).or_insert((r, 0)).1 += 1;
    }

    /// Lets one lending of `id` go; the last one forgets how it spread.
    pub(crate) fn unexport(&self, id: ObjectId) {
        let mut ex = lock(&self.objects.exports);
        if let Some(e) = ex.get_mut(&id) {
            e.1 -= 1;
            if e.1 == 0 {
                ex.remove(&id);
                drop(ex);
                self.forget_spread(id);
            }
        }
    }

    /// The arguments of a call to another node: bytes as they are (small objects' bytes
    /// too), larger objects exported for that node to pull (their ids, the second part).
    /// Every argument must be ready.
    ///
    /// # Errors
    /// An argument failed (what the call fails with, as Ray propagates it), or cannot be
    /// read; nothing stays exported then.
    pub(crate) fn outgoing(&self, args: &[RawArg]) -> Result<(Vec<Arg>, Vec<ObjectId>), Error> {
        let (mut out, mut exported) = (Vec::with_capacity(args.len()), Vec::new());
        let read = |r: &ObjectRef<Untyped>| -> Result<Arg, Error> {
            match r.with_inline_bytes(<[u8]>::to_vec) {
                Some(b) => b.map(Arg::Value),
                None => match r.try_view() {
                    Some(v) => v.map(|v| Arg::Object { id: r.id(), len: v.len() as u64 }),
                    None => Err(Error::Invalid("an argument is not ready".into())),
                },
            }
        };
        for a in args {
            let arg = match a {
                RawArg::Bytes(b) => Ok(Arg::Value(b.clone())),
                RawArg::Ref(r) => read(r),
            };
            match arg {
                Ok(arg) => {
                    if let (Arg::Object { id, .. }, RawArg::Ref(r)) = (&arg, a) {
                        self.export(*id, r.clone());
                        exported.push(*id);
                    }
                    out.push(arg);
                }
                Err(e) => {
                    for id in exported {
                        self.unexport(id);
                    }
                    return Err(e);
                }
            }
        }
        Ok((out, exported))
    }

    /// The arguments of a call from `peer`, as this node's: bytes as they are, objects as
    /// refs of this node's copy (see [`crate::copies::Copies`]), pulled from `peer` if there
    /// is none yet (`lent`: tell it when pulled, or at once when a copy was here already).
    pub(crate) fn received(self: &Arc<Self>, peer: &Peer, service: &Service, args: Vec<Arg>, lent: bool) -> Result<Vec<RawArg>, Error> {
        let mut out = Vec::with_capacity(args.len());
        for a in args {
            match a {
                Arg::Value(b) => out.push(RawArg::Bytes(b)),
                Arg::Object { id, len } => out.push(RawArg::Ref(self.copy_of(peer, service, id, len, lent)?)),
            }
        }
        Ok(out)
    }

    /// This node's copy of object `id` of `peer` (`len` bytes): the one there is, or a new
    /// one that a pull completes (`lent`: as [`Remote::received`]).
    fn copy_of(self: &Arc<Self>, peer: &Peer, service: &Service, id: ObjectId, len: u64, lent: bool) -> Result<ObjectRef<Untyped>, Error> {
        let mut copies = lock(&self.objects.copies);
        if let Some(r) = copies.get(id) {
            drop(copies);
            if lent {
                if let Ok(b) = postcard::to_allocvec(&id) {
                    let _ = peer.post(Msg::Unexport.kind(), &b);
                }
            }
            return Ok(r);
        }
        let (r, promise) = service.runtime().promise()?;
        copies.keep(id, &r, len);
        drop(copies);
        self.pull(peer.clone(), id, len, promise, lent);
        Ok(r)
    }

    /// The outcome of `held` (ready), made here for `requester`, to send back: a stored
    /// result is lent to it until it pulled it (or dies).
    pub(crate) fn outcome_of(&self, held: &ObjectRef<Untyped>, requester: NodeId) -> Outcome {
        match held.with_inline_bytes(<[u8]>::to_vec) {
            Some(Ok(b)) => Outcome::Inline(b),
            Some(Err(e)) => Outcome::Failed(Failure::of(e, false)),
            None => match held.try_view() {
                Some(Ok(v)) => {
                    let id = held.id();
                    let len = v.len() as u64;
                    drop(v);
                    self.export(id, held.clone());
                    lock(&self.objects.lent).entry(requester).or_default().push(id);
                    Outcome::Stored { id, len }
                }
                Some(Err(e)) => Outcome::Failed(Failure::of(e, false)),
                None => Outcome::Failed(Failure::of(Error::Invalid("not ready when done".into()), false)),
            },
        }
    }

    /// `Unexport`: the node pulled a result this node lent it.
    pub(crate) fn on_unexport(&self, peer: &Peer, payload: &[u8]) {
        let Ok(id) = postcard::from_bytes::<ObjectId>(payload) else { return };
        let mut lent = lock(&self.objects.lent);
        if let Some(ids) = lent.get_mut(&peer.node()) {
            if let Some(i) = ids.iter().position(|x| *x == id) {
                ids.swap_remove(i);
                drop(lent);
                self.unexport(id);
            }
        }
    }

    /// `Fetch`: another node wants an object this node made (a ref of it travelled there
    /// inside a value): answered once it is ready, with its bytes or as a lent export.
    pub(crate) fn on_fetch(self: &Arc<Self>, peer: &Peer, id: u64, payload: &[u8]) {
        let Some(obj) = object_id(peer, id, payload, "fetch") else { return };
        let found = self.service.upgrade().and_then(|s| s.escaped_here(obj));
        let Some(r) = found else {
            let o = Outcome::Failed(Failure::of(Error::ObjectLost(format!("{:032x} is not known on the node that made it", obj.0)), false));
            let _ = peer.respond(id, Msg::Fetch.kind(), &postcard::to_allocvec(&o).expect("an outcome serializes"));
            return;
        };
        let (me, held, peer) = (self.clone(), r.clone(), peer.clone());
        r.on_ready(move || {
            let m = me.clone();
            me.defer(move || {
                let o = m.outcome_of(&held, peer.node());
                let _ = peer.respond(id, Msg::Fetch.kind(), &postcard::to_allocvec(&o).expect("an outcome serializes"));
            });
        });
    }

    /// Fetches object `id` from the node that made it (`peer`); `None` for the peer means
    /// that node is gone: the object is lost.
    pub(crate) fn fetch(self: &Arc<Self>, peer: Option<Peer>, id: ObjectId) -> Option<ObjectRef<Untyped>> {
        let service = self.service.upgrade()?;
        let (r, promise) = service.runtime().promise().ok()?;
        let Some(peer) = peer else {
            promise.fail(Error::ObjectLost(format!("{:032x}: the node that made it is gone", id.0)));
            return Some(r);
        };
        if let Some(copy) = lock(&self.objects.copies).get(id) {
            return Some(copy);
        }
        // Shared from now on (its size is known once the answer is in).
        lock(&self.objects.copies).keep(id, &r, 0);
        let (me, r2) = (self.clone(), r.clone());
        let spawned = std::thread::Builder::new().name("rayhpc-fetch".into()).spawn(move || {
            let ask = postcard::to_allocvec(&id).expect("an id serializes");
            let answer = peer
                // An object may take as long as its task: no deadline but the connection's.
                .request(Msg::Fetch.kind(), &ask, Duration::from_secs(365 * 86400))
                .map_err(|e| e.to_string())
                .and_then(|f| postcard::from_bytes::<Outcome>(&f.payload).map_err(|e| format!("a malformed answer: {e}")));
            match answer {
                Ok(Outcome::Inline(b)) => {
                    let _ = promise.fulfill(&b);
                }
                Ok(Outcome::Stored { id: key, len }) => {
                    lock(&me.objects.copies).keep(key, &r2, len);
                    me.pull(peer, key, len, promise, true)
                }
                Ok(Outcome::Failed(f)) => promise.fail(f.into_error()),
                Err(e) => promise.fail(Error::ObjectLost(format!("{:032x} from node {}: {e}", id.0, peer.node()))),
            }
        });
        if let Err(e) = spawned {
            eprintln!("rayhpc node: cannot start a fetch: {e}");
        }
        Some(r)
    }

    /// Pulls object `id` (`len` bytes) from `peer` into this node's store, completing
    /// `promise`; then (`lent`: a result the peer lent) tells the peer to let it go. On a
    /// thread of its own: a pull is chunks in flight, each waited for in turn.
    pub(crate) fn pull(self: &Arc<Self>, peer: Peer, id: ObjectId, len: u64, promise: Promise, lent: bool) {
        self.objects.pulled.0.fetch_add(1, Ordering::Relaxed);
        self.objects.pulled.1.fetch_add(len, Ordering::Relaxed);
        let me = self.clone();
        let spawned = std::thread::Builder::new().name("rayhpc-pull".into()).spawn(move || {
            // Pulled or not, the lender lets it go (a failed pull fails the object here). The
            // source is asked for before the store's space is taken (it may take a while).
            let (from, named) = me.source_for(&peer, id, len);
            let mut source = None;
            let done = promise.fulfill_with(len as usize, |buf| {
                me.pull_spread(&peer, (from, named), id, buf, Via::Best).map(|s| source = s).map_err(|e| pull_failed(id, &e))
            });
            if let Some(s) = source {
                // A source for others only if this node keeps the copy (see `Copies`).
                let servable = lock(&me.objects.copies).contains(id);
                me.report_pulled(&peer, id, s, done.is_ok() && servable);
            }
            if lent {
                if let Ok(b) = postcard::to_allocvec(&id) {
                    let _ = peer.post(Msg::Unexport.kind(), &b);
                }
            }
        });
        if let Err(e) = spawned {
            eprintln!("rayhpc node: cannot start a pull: {e}");
        }
    }
}
