//! Reads of another node's objects: a [`RangeReader`] reads bytes `[offset, offset + n)` of
//! an object that another node holds into a buffer of this node. Three move the bytes, each
//! its own way:
//!
//! - [`Chunks`]: `Pull` requests on the control connection, [`IN_FLIGHT`] chunks of
//!   [`CHUNK`] bytes in flight, each answer copied where it belongs; always there.
//! - [`crate::bulk::BulkStreams`]: TCP streams of their own, read straight into the buffer
//!   (large objects).
//! - [`crate::fabric::FabricReads`]: `Locate`, one RDMA read of the range, `Unpin` (when
//!   both nodes have the same fabric).
//!
//! A pull tries the ones that apply, best first ([`first_of`]). The exporter's side:
//! `Pull`, `BulkTicket`, `Locate` and `Unpin` answered by the node holding the object
//! (`serve.rs`), and the bulk listener ([`crate::bulk::BulkServer`]).

use std::collections::VecDeque;
use std::time::Duration;

use rayhpc::ids::ObjectId;
use rayhpc_transport::Peer;

use crate::error::ReadError;
use crate::messages::{Msg, PullMsg};

/// Bytes per pulled chunk.
pub const CHUNK: usize = 4 << 20;
/// Chunks in flight per pull.
pub const IN_FLIGHT: usize = 8;
/// How long a chunk may take.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads ranges of objects that other nodes hold.
pub trait RangeReader {
    /// Its name in the log ("chunks", "bulk streams", "fabric").
    fn name(&self) -> &'static str;

    /// Reads bytes `[offset, offset + buf.len())` of object `id`, held by `peer`'s node, into
    /// `buf`. A read of no bytes still asks: it succeeds when the node holds the object and
    /// `offset` is at most its length.
    ///
    /// # Errors
    /// [`ReadError::NoPath`] when this reader does not apply between the two nodes; else the
    /// node refused (it does not hold the object, or the range is not in it), the range is
    /// out of the object, or the transport failed.
    fn read(&self, peer: &Peer, id: ObjectId, offset: u64, buf: &mut [u8]) -> Result<(), ReadError>;
}

/// Reads with each of `readers` in turn, until one succeeds: one that does not apply
/// ([`ReadError::NoPath`]) is passed over, one that fails is said in the log; the last one's
/// error is the read's.
///
/// # Errors
/// The last reader's (none: [`ReadError::NoPath`]).
pub fn first_of(readers: &[&dyn RangeReader], peer: &Peer, id: ObjectId, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
    let mut last = ReadError::NoPath { path: "reader", node: peer.node() };
    for (i, r) in readers.iter().enumerate() {
        last = match r.read(peer, id, offset, buf) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        match readers.get(i + 1) {
            Some(_) if matches!(last, ReadError::NoPath { .. }) => {}
            Some(next) => {
                eprintln!(
                    "rayhpc node: {} read of {:032x} from node {}: {last}; reading over {} instead",
                    r.name(),
                    id.0,
                    peer.node(),
                    next.name()
                )
            }
            None => {}
        }
    }
    Err(last)
}

/// Reads in chunks on the control connection (`Pull`), `in_flight` chunks of `chunk` bytes
/// in flight ([`IN_FLIGHT`] of [`CHUNK`] by default).
#[derive(Clone, Copy, Debug)]
pub struct Chunks {
    /// Bytes per chunk (at most `u32::MAX`).
    pub chunk: usize,
    /// Chunks in flight.
    pub in_flight: usize,
}

impl Default for Chunks {
    fn default() -> Chunks {
        Chunks { chunk: CHUNK, in_flight: IN_FLIGHT }
    }
}

impl RangeReader for Chunks {
    fn name(&self) -> &'static str {
        "chunks"
    }

    fn read(&self, peer: &Peer, id: ObjectId, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let total = buf.len();
        let chunk = self.chunk.clamp(1, u32::MAX as usize);
        let mut inflight = VecDeque::with_capacity(self.in_flight);
        let (mut next, mut asked) = (0usize, false);
        loop {
            // At least one request: a read of nothing still asks for a range of the object.
            while inflight.len() < self.in_flight.max(1) && (next < total || !asked) {
                asked = true;
                let len = chunk.min(total - next);
                let msg = PullMsg { id, offset: offset.saturating_add(next as u64), len: len as u32 };
                let pending = peer.start_request(Msg::Pull.kind(), &postcard::to_allocvec(&msg).expect("a pull serializes"))?;
                inflight.push_back((next, len, pending));
                next += len;
            }
            let Some((at, len, pending)) = inflight.pop_front() else { return Ok(()) };
            let f = pending.wait(CHUNK_TIMEOUT)?;
            if f.payload.len() != len {
                return Err(ReadError::WrongSize { what: "chunk", node: peer.node(), got: f.payload.len() as u64, want: len as u64 });
            }
            buf[at..at + len].copy_from_slice(&f.payload);
        }
    }
}
