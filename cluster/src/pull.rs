//! Pulls: how the bytes of another node's object reach this node's store. Over the fabric
//! when both nodes have one ([`crate::fabric`]: `Locate`, one read, `Unpin`), else over bulk
//! streams when large ([`crate::bulk`]), else (or if those fail) in chunks on the control
//! connection (`Pull`: [`IN_FLIGHT`] chunks of [`CHUNK`] bytes in flight, each written where
//! it belongs). Every path is a read of `(offset, length)` ranges of a remote object. A pull
//! of a large object first asks its owner which node to pull from ([`crate::spread`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayhpc::ids::ObjectId;
use rayhpc::{ObjectRef, Promise, Untyped};
use rayhpc_transport::Peer;

use crate::bulk;
use crate::messages::{Msg, PullMsg};
use crate::remote::{lock, Remote};

/// Bytes per pulled chunk.
pub const CHUNK: usize = 4 << 20;
/// Chunks in flight per pull.
pub const IN_FLIGHT: usize = 8;
/// Objects from this size up are pulled over bulk streams.
const BULK_FROM: usize = 1 << 20;

/// How a pull moves the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The fabric when both nodes have one, else TCP.
    Best,
    /// TCP (bulk streams, or chunks on the control connection).
    Tcp,
    /// The fabric only (fails without one).
    Fabric,
}

impl Remote {
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
            let done =
                promise.fulfill_with(len as usize, |buf| me.pull_spread(&peer, (from, named), id, buf, Via::Best).map(|s| source = s));
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

    /// Pulls object `id` (`len` bytes) from `peer` into a new object of this node and lets
    /// it go (what the bench measures: the transfer, into this node's store): the
    /// nanoseconds from `started` to the end of the transfer, and the copy's digest.
    ///
    /// # Errors
    /// The pull failed (the message says why).
    pub(crate) fn pull_blocking(&self, peer: &Peer, id: ObjectId, len: u64, via: Via, started: Instant) -> Result<(u64, u64), String> {
        let service = self.service.upgrade().ok_or("shut down")?;
        let (r, promise) = service.runtime().promise().map_err(|e| e.to_string())?;
        promise.fulfill_with(len as usize, |buf| self.pull_into(peer, id, buf, via)).map_err(|e| e.to_string())?;
        let nanos = started.elapsed().as_nanos() as u64;
        let digest = match r.try_view() {
            Some(Ok(v)) => crate::bench::digest(&v),
            _ => return Err("the pulled copy cannot be read".into()),
        };
        Ok((nanos, digest))
    }

    /// As a reader of `peer`'s export `id` would get it (see [`crate::spread`]): pulled
    /// from the source `peer` names, then kept as this node's copy (so that it serves
    /// others). The nanoseconds from `started` to the end, the copy's digest, and its round.
    pub(crate) fn pull_shared_blocking(
        self: &Arc<Self>,
        peer: &Peer,
        id: ObjectId,
        len: u64,
        started: Instant,
    ) -> Result<(u64, u64, u32), String> {
        let service = self.service.upgrade().ok_or("shut down")?;
        let (r, promise) = service.runtime().promise().map_err(|e| e.to_string())?;
        let (from, named) = self.source_for(peer, id, len);
        let mut source = None;
        let done = promise.fulfill_with(len as usize, |buf| self.pull_spread(peer, (from, named), id, buf, Via::Best).map(|s| source = s));
        let nanos = started.elapsed().as_nanos() as u64;
        let servable = lock(&self.objects.copies).keep(id, &r, len);
        if let Some(s) = source {
            self.report_pulled(peer, id, s, done.is_ok() && servable);
        }
        done.map_err(|e| e.to_string())?;
        let round = source.map_or(1, |s| s.round.saturating_add(1));
        let digest = match r.try_view() {
            Some(Ok(v)) => crate::bench::digest(&v),
            _ => return Err("the pulled copy cannot be read".into()),
        };
        Ok((nanos, digest, round))
    }

    /// Exports an object for the bench's pull.
    pub(crate) fn export_for_bench(&self, id: ObjectId, r: ObjectRef<Untyped>) {
        self.export(id, r);
    }

    /// Ends [`Remote::export_for_bench`].
    pub(crate) fn unexport_for_bench(&self, id: ObjectId) {
        self.unexport(id);
    }

    /// Reads `buf.len()` bytes of object `id` from `peer` into `buf`: with [`Via::Best`], over
    /// the fabric when both nodes have one (falling back to TCP if that fails), else over
    /// bulk streams when large (see `bulk`), else (or if those fail) in chunks on the
    /// control connection.
    pub(crate) fn pull_into(&self, peer: &Peer, id: ObjectId, buf: &mut [u8], via: Via) -> Result<(), String> {
        if via != Via::Tcp {
            match self.fabric_pull(peer, id, buf) {
                Ok(true) => return Ok(()),
                // No fabric between the two (either lacks one, or theirs differ): TCP.
                Ok(false) if via == Via::Fabric => return Err(format!("no fabric between this node and node {}", peer.node())),
                Ok(false) => {}
                Err(e) if via == Via::Fabric => return Err(e),
                Err(e) => eprintln!("rayhpc node: fabric pull of {:032x}: {e}; pulling over TCP instead", id.0),
            }
        }
        if buf.len() >= BULK_FROM {
            match bulk::pull(peer, id, buf) {
                Ok(()) => return Ok(()),
                Err(e) => eprintln!("rayhpc node: {e}; pulling through the control connection instead"),
            }
        }
        pull_chunks(peer, id, buf)
    }

    /// Reads object `id` of `peer` over the fabric: `Locate`, one read of its range, `Unpin`.
    /// False when there is no fabric between the two nodes (this one or `peer`'s node has
    /// none, or they differ).
    fn fabric_pull(&self, peer: &Peer, id: ObjectId, buf: &mut [u8]) -> Result<bool, String> {
        let Some(fabric) = &self.objects.fabric else { return Ok(false) };
        let Some(info) = self.fabric_of(peer.node()) else { return Ok(false) };
        if info.provider != fabric.info().provider {
            return Ok(false);
        }
        let ask = postcard::to_allocvec(&id).map_err(|e| e.to_string())?;
        let located = peer
            .request(Msg::Locate.kind(), &ask, Duration::from_secs(30))
            .map_err(|e| format!("locate: {e}"))
            .and_then(|f| postcard::from_bytes::<(u64, u64)>(&f.payload).map_err(|e| format!("a malformed location: {e}")));
        let read = match located {
            Ok((offset, len)) if len == buf.len() as u64 => fabric.read(peer.node(), &info, offset, buf),
            Ok((_, len)) => Err(format!("the object is {len} bytes, not {}", buf.len())),
            Err(e) => Err(e),
        };
        // Whatever the answer (one that came too late may still have pinned it): Locate and
        // Unpin are handled in order there, and an Unpin of nothing is nothing.
        let _ = peer.send(Msg::Unpin.kind(), &ask);
        read.map(|()| true)
    }
}

/// Reads `buf.len()` bytes of object `id` from `peer` into `buf`, [`IN_FLIGHT`] chunks at a
/// time, on the control connection.
fn pull_chunks(peer: &Peer, id: ObjectId, buf: &mut [u8]) -> Result<(), String> {
    let total = buf.len();
    let mut inflight = std::collections::VecDeque::new();
    let mut next = 0usize;
    let timeout = Duration::from_secs(60);
    loop {
        while inflight.len() < IN_FLIGHT && next < total {
            let len = CHUNK.min(total - next);
            let msg = postcard::to_allocvec(&PullMsg { id, offset: next as u64, len: len as u32 }).map_err(|e| e.to_string())?;
            let pending =
                peer.start_request(Msg::Pull.kind(), &msg).map_err(|e| format!("pull of {:032x} from node {}: {e}", id.0, peer.node()))?;
            inflight.push_back((next, len, pending));
            next += len;
        }
        let Some((off, len, pending)) = inflight.pop_front() else { return Ok(()) };
        let f = pending.wait(timeout).map_err(|e| format!("pull of {:032x} from node {}: {e}", id.0, peer.node()))?;
        if f.payload.len() != len {
            return Err(format!("pull of {:032x}: {} bytes for a {len}-byte chunk", id.0, f.payload.len()));
        }
        buf[off..off + len].copy_from_slice(&f.payload);
    }
}
