//! Pulls: how the bytes of another node's object reach this node's store, read by the
//! [`RangeReader`]s that apply, best first ([`Remote::pull_into`]): the fabric when both
//! nodes have the same one ([`crate::fabric`]), bulk streams from [`BULK_FROM`] bytes
//! ([`crate::bulk`]), chunks on the control connection always ([`crate::read`]). A pull of
//! a large object first asks its owner which node to pull from ([`crate::spread`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use rayhpc::ids::ObjectId;
use rayhpc::{ObjectRef, Promise, Untyped};
use rayhpc_transport::Peer;

use crate::bulk::BulkStreams;
use crate::error::ReadError;
use crate::fabric::FabricReads;
use crate::messages::Msg;
use crate::read::{self, Chunks, RangeReader};
use crate::remote::Remote;
use crate::sync::lock;

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

/// What a failed pull of `id` fails its object with.
fn failed(id: ObjectId, e: &ReadError) -> String {
    format!("pull of {:032x}: {e}", id.0)
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
            let done = promise.fulfill_with(len as usize, |buf| {
                me.pull_spread(&peer, (from, named), id, buf, Via::Best).map(|s| source = s).map_err(|e| failed(id, &e))
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

    /// Pulls object `id` (`len` bytes) from `peer` into a new object of this node and lets
    /// it go (what the bench measures: the transfer, into this node's store): the
    /// nanoseconds from `started` to the end of the transfer, and the copy's digest.
    ///
    /// # Errors
    /// The pull failed (the message says why).
    pub(crate) fn pull_blocking(&self, peer: &Peer, id: ObjectId, len: u64, via: Via, started: Instant) -> Result<(u64, u64), String> {
        let service = self.service.upgrade().ok_or("shut down")?;
        let (r, promise) = service.runtime().promise().map_err(|e| e.to_string())?;
        promise
            .fulfill_with(len as usize, |buf| self.pull_into(peer, id, buf, via).map_err(|e| failed(id, &e)))
            .map_err(|e| e.to_string())?;
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
        let done = promise.fulfill_with(len as usize, |buf| {
            self.pull_spread(peer, (from, named), id, buf, Via::Best).map(|s| source = s).map_err(|e| failed(id, &e))
        });
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
    /// the fabric when both nodes have the same one, else (or if that fails) over bulk
    /// streams when large, else (or if those fail) in chunks on the control connection;
    /// [`Via::Tcp`] leaves the fabric out, [`Via::Fabric`] all but it.
    pub(crate) fn pull_into(&self, peer: &Peer, id: ObjectId, buf: &mut [u8], via: Via) -> Result<(), ReadError> {
        let fabric = self.objects.fabric.as_ref().filter(|_| via != Via::Tcp).map(|f| FabricReads::new(f, |n| self.fabric_of(n)));
        let (bulk, chunks) = (BulkStreams::default(), Chunks::default());
        let mut readers: Vec<&dyn RangeReader> = Vec::with_capacity(3);
        if let Some(f) = &fabric {
            readers.push(f);
        }
        if via != Via::Fabric {
            if buf.len() >= BULK_FROM {
                readers.push(&bulk);
            }
            readers.push(&chunks);
        }
        if readers.is_empty() {
            // The fabric only, and this node has none.
            return Err(ReadError::NoPath { path: "fabric", node: peer.node() });
        }
        read::first_of(&readers, peer, id, 0, buf)
    }
}
