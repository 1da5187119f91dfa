//! Objects between nodes: what this node lends (exports), how it serves them (`Pull`
//! chunks, bulk tickets, `Locate`/`Unpin` for fabric reads), and how it takes in the objects
//! of others (arguments of a task or actor sent here, results, refs that travelled inside
//! values: `Fetch`), into its [`Copies`].
//!
//! A task's arguments go inline or as objects the owner exports for the executor to pull; a
//! stored result is exported by the executor and pulled by the owner at once (so that the
//! driver's `get` is local), then let go (`Unexport`; what was lent to a node that dies is
//! let go too). A ref that travelled inside a value to another node is fetched from the node
//! that made it (`Fetch`, answered once it is ready); if that node is gone, the object is
//! lost.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rayhpc::ids::ObjectId;
use rayhpc::raw::RawArg;
use rayhpc::{Error, ObjectRef, ObjectView, Untyped};
use rayhpc_node::api::{Failure, Service};
use rayhpc_transport::{NodeId, Peer};

use crate::bulk::BulkServer;
use crate::copies::{failed, Copies};
use crate::fabric::{FabricInfo, NodeFabric};
use crate::messages::object_id;
use crate::messages::{Arg, Msg, Outcome, PullMsg, Ticket};
use crate::remote::Remote;
use crate::sync::lock;

/// A node's objects as the cluster sees them.
pub(crate) struct Objects {
    /// Objects this node lends to others: id → (the object, how many holders).
    exports: Mutex<HashMap<ObjectId, (ObjectRef<Untyped>, usize)>>,
    /// Results exported for each node until it pulled them (dropped if it dies).
    pub(crate) lent: Mutex<HashMap<NodeId, Vec<ObjectId>>>,
    /// Copies of other nodes' objects pulled here, shared by every reader on this node.
    pub(crate) copies: Mutex<Copies>,
    /// Objects pulled into this node, and their bytes.
    pub(crate) pulled: (AtomicU64, AtomicU64),
    /// Objects pinned in the arena for another node's fabric read, until it says `Unpin`.
    pub(crate) pins: Mutex<HashMap<NodeId, Vec<(ObjectId, ObjectView)>>>,
    /// This node's bulk listener (large objects to pullers).
    bulk: Arc<BulkServer>,
    /// This node's RDMA fabric, if it has one.
    pub(crate) fabric: Option<NodeFabric>,
}

impl Objects {
    /// Nothing lent or copied yet; copies kept within `copy_budget` bytes; large objects
    /// served over `bulk`, and pulled over `fabric` when there is one.
    pub(crate) fn new(copy_budget: u64, bulk: Arc<BulkServer>, fabric: Option<NodeFabric>) -> Objects {
        Objects {
            exports: Mutex::new(HashMap::new()),
            lent: Mutex::new(HashMap::new()),
            copies: Mutex::new(Copies::new(copy_budget)),
            pulled: (AtomicU64::new(0), AtomicU64::new(0)),
            pins: Mutex::new(HashMap::new()),
            bulk,
            fabric,
        }
    }

    /// Whether `id` is exported; `then` runs under the exports' lock (so that an unexport
    /// cannot slip in between).
    pub(crate) fn if_exported(&self, id: ObjectId, then: impl FnOnce()) -> bool {
        let exports = lock(&self.exports);
        let found = exports.contains_key(&id);
        if found {
            then();
        }
        found
    }
}

impl Remote {
    /// What this node tells the cluster of its fabric, if it has one.
    pub(crate) fn fabric_info(&self) -> Option<FabricInfo> {
        self.objects.fabric.as_ref().map(|f| f.info().clone())
    }

    /// The fabric's provider, if this node has one.
    pub(crate) fn fabric_provider(&self) -> Option<String> {
        self.objects.fabric.as_ref().map(|f| f.info().provider.clone())
    }

    /// The object `id` as this node can serve it to a puller: an export, or a complete copy
    /// of another node's object (a source of a tree).
    pub(crate) fn served(&self, id: ObjectId) -> Option<ObjectRef<Untyped>> {
        if let Some(r) = lock(&self.objects.exports).get(&id).map(|(r, _)| r.clone()) {
            return Some(r);
        }
        lock(&self.objects.copies).get(id).filter(|r| r.is_ready() && !failed(r))
    }

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
    /// refs of this node's copy (see [`Copies`]), pulled from `peer` if there is none yet
    /// (`lent`: tell it when pulled, or at once when a copy was here already).
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

    /// `BulkTicket`: a ticket for a bulk stream of an exported object.
    pub(crate) fn on_ticket(&self, peer: &Peer, id: u64, payload: &[u8]) {
        let Some(obj) = object_id(peer, id, payload, "ticket request") else { return };
        let r = self.served(obj);
        let Some(r) = r else {
            let _ = peer.refuse(id, &format!("object {:032x} is not exported here", obj.0));
            return;
        };
        let server = &self.objects.bulk;
        let len = match r.try_view() {
            Some(Ok(v)) => v.len() as u64,
            _ => {
                let _ = peer.refuse(id, "the object cannot be read");
                return;
            }
        };
        match server.ticket(r) {
            Ok(ticket) => {
                let t = Ticket { ticket, addr: server.addr(), len };
                let _ = peer.respond(id, Msg::BulkTicket.kind(), &postcard::to_allocvec(&t).expect("a ticket serializes"));
            }
            Err(e) => {
                let _ = peer.refuse(id, &format!("no ticket: {e}"));
            }
        }
    }

    /// `Locate`: where an exported object lies in this node's arena, for `peer`'s fabric
    /// read: pinned there for it until it says `Unpin` (or its connection ends).
    pub(crate) fn on_locate(&self, peer: &Peer, id: u64, payload: &[u8]) {
        let Some(obj) = object_id(peer, id, payload, "locate") else { return };
        let r = self.served(obj);
        let (Some(r), Some(service)) = (r, self.service.upgrade()) else {
            let _ = peer.refuse(id, &format!("object {:032x} is not exported here", obj.0));
            return;
        };
        let Some(Ok(view)) = r.try_view() else {
            let _ = peer.refuse(id, "the object cannot be read");
            return;
        };
        let (base, len) = service.runtime().object_store().region();
        let offset = (view.as_ptr() as usize).wrapping_sub(base as usize);
        if view.stored_key().is_none() || (view.as_ptr() as usize) < base as usize || offset + view.len() > len {
            let _ = peer.refuse(id, "the object is not in the arena");
            return;
        }
        let answer = (offset as u64, view.len() as u64);
        lock(&self.objects.pins).entry(peer.node()).or_default().push((obj, view));
        let _ = peer.respond(id, Msg::Locate.kind(), &postcard::to_allocvec(&answer).expect("a location serializes"));
    }

    /// `Unpin`: `peer` read what `Locate` pinned for it.
    pub(crate) fn on_unpin(&self, peer: &Peer, payload: &[u8]) {
        let Ok(obj) = postcard::from_bytes::<ObjectId>(payload) else { return };
        let mut pins = lock(&self.objects.pins);
        if let Some(list) = pins.get_mut(&peer.node()) {
            if let Some(i) = list.iter().position(|(x, _)| *x == obj) {
                list.swap_remove(i);
            }
        }
    }

    /// `Pull`: serves a chunk of an exported object.
    pub(crate) fn on_pull(&self, peer: &Peer, id: u64, payload: &[u8]) {
        let Ok(m) = postcard::from_bytes::<PullMsg>(payload) else {
            let _ = peer.refuse(id, "a malformed pull");
            return;
        };
        let Some(r) = self.served(m.id) else {
            let _ = peer.refuse(id, &format!("object {:032x} is not exported here", m.id.0));
            return;
        };
        match r.try_view() {
            Some(Ok(v)) => {
                let a = usize::try_from(m.offset).unwrap_or(usize::MAX);
                let b = a.saturating_add(m.len as usize);
                match v.get(a..b) {
                    Some(chunk) => {
                        let _ = peer.respond(id, Msg::Pull.kind(), chunk);
                    }
                    None => {
                        let _ = peer.refuse(id, &format!("bytes {a}..{b} of a {}-byte object", v.len()));
                    }
                }
            }
            _ => {
                let _ = peer.refuse(id, "the object cannot be read");
            }
        }
    }
}
