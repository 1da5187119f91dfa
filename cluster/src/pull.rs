//! Pulls: how the bytes of another node's object reach this node's store, read by the
//! [`RangeReader`]s that apply, best first ([`Remote::pull_into`]): the fabric when both
//! nodes have the same one ([`crate::fabric`]), bulk streams from [`BULK_FROM`] bytes
//! ([`crate::bulk`]), chunks on the control connection always ([`crate::read`]). Which node
//! a large object is pulled from is [`crate::spread`]'s; the pull of an object into this
//! node's copy, [`crate::objects`]'.

use rayhpc::ids::ObjectId;
use rayhpc_transport::Peer;

use crate::bulk::BulkStreams;
use crate::error::ReadError;
use crate::fabric::FabricReads;
use crate::read::{self, Chunks, RangeReader};
use crate::remote::Remote;

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
pub(crate) fn pull_failed(id: ObjectId, e: &ReadError) -> String {
    format!("pull of {:032x}: {e}", id.0)
}

impl Remote {
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
