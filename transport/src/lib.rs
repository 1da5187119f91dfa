//! # rayhpc-transport
//!
//! The TCP transport between node runtimes: plain blocking `std::net` sockets and threads (a
//! node has few peers, and a thread per connection keeps every path a straight line), one
//! authenticated connection per pair of nodes, many requests in flight on it.
//!
//! ## Frames
//!
//! Every message is a 28-byte header, then `length` bytes of payload. Integers are
//! little-endian.
//!
//! | bytes    | field     | meaning |
//! |----------|-----------|---------|
//! | `0..4`   | magic     | `b"RHPC"` |
//! | `4..6`   | version   | [`VERSION`] (1); another is refused |
//! | `6..8`   | kind      | [`Kind`]: `1..=5` the transport's own (HELLO, HELLO_OK, REFUSED, PING, PONG), `0x100..` the application's, passed through; others refused |
//! | `8..10`  | flags     | bit 0: response ([`FLAG_RESPONSE`]); other bits refused |
//! | `10..12` | reserved  | 0 |
//! | `12..20` | id        | request id; a response carries its request's; 0 = one-way |
//! | `20..24` | length    | payload bytes, at most the receiver's limit (default 64 MiB) |
//! | `24..28` | check     | FNV-1a (32-bit) of bytes `0..24` |
//!
//! The check makes garbage fail at the first header rather than be read as a huge length;
//! TCP already protects the payload. [`FrameDecoder`] is sans-IO (bytes in, frames out, at
//! any split) and fuzzed; [`write_frame`] writes header and payload with one vectored write,
//! from the caller's slice. Message bodies are postcard ([`Frame::body`]).
//!
//! ## Handshake
//!
//! Every node of a job is given the job's secret. The dialer D and the listener L exchange:
//!
//! 1. D → L `HELLO` { node id, incarnation, nonce, largest payload accepted, listen address }
//! 2. L → D `HELLO`, the same of L
//! 3. D → L `HELLO_OK` { HMAC-SHA-256(secret, "dialer" ‖ both HELLOs), keep }
//! 4. L → D `HELLO_OK` { HMAC-SHA-256(secret, "acceptor" ‖ both HELLOs), keep }
//!
//! Proofs are compared in constant time. The secret never crosses the wire, the nonces make
//! every proof fresh, and L proves nothing before D has (no oracle for strangers). Before
//! step 4 a peer may send at most 4 KiB per frame, and the whole exchange has a deadline
//! (10 s by default) on its own thread: a peer that connects and says nothing blocks nobody.
//!
//! One connection per pair: the lower node id decides (`keep`) for every connection of its
//! pair, whoever dialed: it keeps the first that reaches its decision and refuses later ones
//! while that one is up; the higher id obeys, replacing any older connection it still holds.
//! So when two nodes dial each other at once, exactly one connection survives and both
//! [`Endpoint::connect`] calls return it. The incarnation (random per endpoint) tells a node
//! that restarted from a duplicate: its new connection replaces the old one.
//!
//! ## Multiplexing
//!
//! A [`Peer`] is one connection. Writes are serialized (one frame whole at a time); a reader
//! thread decodes what arrives. A frame with the response flag completes the pending request
//! with its id (any number of threads may wait on one connection); a request or one-way
//! message goes to the endpoint's [`MessageHandler`], which answers with
//! [`Peer::respond`] (or [`Peer::refuse`]) now or later from another thread. PING is answered
//! by the transport itself ([`Peer::ping`]).
//!
//! One-way messages can also be posted ([`Peer::post`]): queued in the connection's outbox
//! and written several to a system call by the connection's writer thread. A stream of small
//! messages (a cluster's tasks and their outcomes) then costs a copy per message rather than
//! a system call, and wakes the receiver once per batch. Messages that come too far apart to
//! meet in one write may be allowed to wait a bounded moment for each other
//! ([`Peer::post_within`]). Frames leave a connection in the order they were posted or sent,
//! whatever the threads.
//!
//! ## Bad input
//!
//! Nothing a peer sends can panic this crate or make it allocate past the limit (checked
//! before allocating). A connection that sends garbage, another version, a bad proof, an
//! oversized frame, or a control message out of place is sent `REFUSED` with the reason when
//! possible, closed, and logged with one line, `rayhpc[transport]: dropped <addr>: <reason>`;
//! the endpoint keeps serving. When a connection ends for any reason, every request pending
//! on it fails with [`Error::Disconnected`] and the disconnect callback runs once.
//!
//! ## One-sided reads (feature `fabric`)
//!
//! [`fabric`] reads registered memory of a peer process over libfabric (RDMA where the
//! hardware has it, else TCP or shared memory), through a small C shim; it needs libfabric's
//! headers to build (`apt-get install libfabric-dev`). Its `fabric::sys` module and
//! `Fabric::register` (an `unsafe fn`: the caller keeps the registered memory alive) hold
//! the crate's `unsafe`; without the feature the crate has none.
#![cfg_attr(not(feature = "fabric"), forbid(unsafe_code))]
#![cfg_attr(feature = "fabric", deny(unsafe_code))]

mod auth;
mod conn;
mod endpoint;
#[cfg(feature = "fabric")]
pub mod fabric;
pub mod frame;
mod outbox;
mod peer;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

pub use endpoint::{Config, Endpoint, Stats};
pub use frame::{
    write_frame, Frame, FrameDecoder, FrameError, Header, Kind, DEFAULT_MAX_PAYLOAD, FLAG_RESPONSE, HEADER_LEN, MAGIC, VERSION,
};
pub use peer::{DisconnectHandler, MessageHandler, Peer, PendingReply};

/// A node's id within a job, given by the caller (a rank, for instance). The lower id of a
/// pair arbitrates its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket operation of this side failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The listener at `addr` refused the connection (wrong secret, version, ...).
    #[error("{addr} refused the connection: {reason}")]
    Refused {
        /// The address dialed.
        addr: SocketAddr,
        /// The listener's reason.
        reason: String,
    },
    /// The handshake with `addr` failed on this side's checks (it did not prove the secret,
    /// sent garbage, timed out, ...).
    #[error("handshake with {addr} failed: {reason}")]
    Handshake {
        /// The address dialed.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The connection to `peer` ended; requests pending on it fail with this.
    #[error("connection to node {peer} closed: {reason}")]
    Disconnected {
        /// The other node.
        peer: NodeId,
        /// Why it ended.
        reason: String,
    },
    /// No response in time. The connection stays up; a late response is discarded.
    #[error("no response from node {peer} to a {kind} request within {after:?}")]
    Timeout {
        /// The other node.
        peer: NodeId,
        /// The request's kind.
        kind: Kind,
        /// The timeout.
        after: Duration,
    },
    /// A payload longer than the receiving node accepts (refused before sending; the
    /// connection is unaffected).
    #[error("payload of {len} bytes exceeds the receiver's limit of {max} bytes")]
    TooLarge {
        /// The payload's length.
        len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// Applications send kinds from [`Kind::FIRST_APP`] up; the others are the transport's.
    #[error("{0} is a control kind of the transport; application kinds start at 0x100")]
    ReservedKind(Kind),
    /// A response to id 0, which is a one-way message.
    #[error("message id 0 is one-way: there is no request to respond to")]
    OneWay,
    /// The other node's handler refused the request ([`Peer::refuse`]), has none, or panicked.
    #[error("node {peer} refused the request: {reason}")]
    Remote {
        /// The other node.
        peer: NodeId,
        /// Its reason.
        reason: String,
    },
    /// The endpoint is shut down.
    #[error("the endpoint is shut down")]
    Closed,
    /// An invalid [`Config`].
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// A message body that postcard cannot encode or decode.
    #[error("message body: {0}")]
    Codec(#[from] postcard::Error),
}

impl Error {
    fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }
}

/// A message body in the project's wire codec (postcard); [`Frame::body`] decodes it.
pub fn encode_body<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    Ok(postcard::to_allocvec(value)?)
}
