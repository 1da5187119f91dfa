//! The cluster layer's errors.

use std::time::Duration;

use rayhpc_transport::NodeId;

/// Why the cluster layer failed. A node that cannot reach its head, or is refused, may try
/// again ([`ClusterError::Connect`], [`ClusterError::Request`], [`ClusterError::Refused`]:
/// the head may not be up yet, or still counts a previous run of this rank); the others say
/// what this node or its configuration lacks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// A socket, listener or thread of this node could not be made, or no route leads to
    /// the head.
    #[error("{what}: {source}")]
    Io {
        /// What was being made.
        what: String,
        /// Why not.
        source: std::io::Error,
    },
    /// This node's endpoint could not bind, or another node could not be reached.
    #[error("{what}: {source}")]
    Connect {
        /// What was being done.
        what: String,
        /// Why not.
        source: rayhpc_transport::Error,
    },
    /// A control request to the head failed on its connection (the head is gone or slow).
    #[error(transparent)]
    Request(#[from] rayhpc_transport::Error),
    /// The head's answer could not be read.
    #[error("a malformed answer from the head: {0}")]
    Malformed(#[from] postcard::Error),
    /// The head refused this node (the reason).
    #[error("the head refused this node: {0}")]
    Refused(String),
    /// The head answered something else than the request calls for.
    #[error("{0}")]
    Unexpected(String),
    /// A member has no connection to a head (it never joined, or left).
    #[error("no head")]
    NoHead,
    /// What only the head does, asked of a member.
    #[error("only the head {0}")]
    NotHead(&'static str),
    /// Fewer nodes joined than awaited, in time.
    #[error("{joined} of {expected} nodes joined within {within:?}: {who}")]
    NotJoined {
        /// Nodes alive in the table.
        joined: usize,
        /// Nodes awaited.
        expected: usize,
        /// How long they were awaited.
        within: Duration,
        /// Which joined (rank and host).
        who: String,
    },
    /// The fabric named could not open (an explicitly named provider must).
    #[error("cannot open the fabric asked for: {0}")]
    Fabric(String),
    /// A bad argument (a KV watch's timeout...).
    #[error("{0}")]
    Invalid(String),
    /// A measurement of `rayhpc bench --across-nodes` failed.
    #[error("{0}")]
    Bench(String),
}

impl ClusterError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> ClusterError {
        ClusterError::Io { what: what.into(), source }
    }

    pub(crate) fn connect(what: impl Into<String>, source: rayhpc_transport::Error) -> ClusterError {
        ClusterError::Connect { what: what.into(), source }
    }
}

/// Why a read of another node's object (a range of it, into a buffer of this node: see
/// [`crate::read::RangeReader`]) failed. [`ReadError::NoPath`] says that a reader does not
/// apply between the two nodes (the next one is tried, silently); the others that it failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// No such path between this node and `node` (a fabric: either has none, or theirs
    /// differ).
    #[error("no {path} between this node and node {node}")]
    NoPath {
        /// The path (`"fabric"`).
        path: &'static str,
        /// The other node.
        node: NodeId,
    },
    /// Node `node` refused the read: it does not hold the object (or cannot read it), or the
    /// range is not in it.
    #[error("node {node} refused: {reason}")]
    Refused {
        /// The node asked.
        node: NodeId,
        /// Its reason.
        reason: String,
    },
    /// The range is not in the object (whose length the reader was told).
    #[error("bytes {offset}..{} are not in the {len}-byte object", offset.saturating_add(*want))]
    OutOfRange {
        /// The range's first byte.
        offset: u64,
        /// Its length.
        want: u64,
        /// The object's length.
        len: u64,
    },
    /// The connection to the node failed (it closed, an answer timed out, ...).
    #[error(transparent)]
    Transport(rayhpc_transport::Error),
    /// An answer that cannot be decoded.
    #[error("a malformed {what} from node {node}: {source}")]
    Malformed {
        /// What was answered (`"ticket"`, `"location"`).
        what: &'static str,
        /// The node that answered.
        node: NodeId,
        /// Why it cannot be decoded.
        source: postcard::Error,
    },
    /// An answer of another size than asked for.
    #[error("{got} bytes from node {node} for a {want}-byte {what}")]
    WrongSize {
        /// What was asked for (`"chunk"`).
        what: &'static str,
        /// The node that answered.
        node: NodeId,
        /// Bytes answered.
        got: u64,
        /// Bytes asked for.
        want: u64,
    },
    /// A stream of the read failed (connecting, writing or reading).
    #[error("{what}: {source}")]
    Io {
        /// Which stream.
        what: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// The buffer is not in this node's registered arena (where a fabric read lands).
    #[error("the destination is not in this node's registered arena")]
    Destination,
    /// The fabric's read failed.
    #[cfg(feature = "fabric")]
    #[error("the fabric: {0}")]
    Fabric(#[from] rayhpc_transport::fabric::FabricError),
    /// A thread of the read panicked (a bug).
    #[error("a {0} thread panicked")]
    Panicked(&'static str),
}

impl From<rayhpc_transport::Error> for ReadError {
    /// A refusal of the node's handler is [`ReadError::Refused`]; the rest, the transport's.
    fn from(e: rayhpc_transport::Error) -> ReadError {
        match e {
            rayhpc_transport::Error::Remote { peer, reason } => ReadError::Refused { node: peer, reason },
            e => ReadError::Transport(e),
        }
    }
}
