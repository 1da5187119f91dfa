//! The cluster layer's errors.

use std::time::Duration;

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
