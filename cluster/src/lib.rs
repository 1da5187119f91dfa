//! Many nodes: a node runtime ([`rayhpc_node::Node`]) in a launch of several (`rayhpc launch`
//! under srun/mpirun). The head (rank 0) serves the control store ([`control::Head`]) on its
//! transport endpoint; every other node joins it, then reports its load with a heartbeat
//! every [`HEARTBEAT`] and receives the cluster's view in the answer. The head counts a node
//! dead when its connection ends or after [`control::DEAD_AFTER`] of silence. When the
//! launch ends, the head tells every node to stop; a node that loses its head stops too.
//!
//! Nodes find the head through [`rendezvous`]; every connection proves the job's secret
//! (see `rayhpc-transport`). Once in, the cluster is the node's [`rayhpc_node::router::Router`]:
//! tasks and actors go where [`place`] decides, objects move between nodes (ranges read by a
//! [`read::RangeReader`]: chunks on the control connection, bulk streams ([`bulk`]), an RDMA
//! fabric ([`fabric`]); a broadcast tree when many pull one), every message kind being in
//! one table ([`messages`]).
//!
//! The modules form layers, each using only those below it: message kinds and bodies
//! ([`messages`]), errors, placement (pure) and the rendezvous at the bottom; reads of
//! other nodes' objects ([`read`], [`bulk`], [`fabric`]); the head's control store
//! ([`control`]); what the cross-node service holds (`state.rs`), then the service itself
//! (`remote.rs`), then its behaviour (`pull.rs`, `serve.rs`, `spread.rs`, `objects.rs`,
//! `tasks.rs`, `actors.rs`); the benches and the membership; the router and the dispatch of
//! frames to their handlers; and [`Cluster`] on top (`python3 ci/module-cycles.py cluster/src`
//! shows the graph).
#![deny(unsafe_code)] // but for the registration of the object arena with the fabric (`fabric`)

mod actors;
pub mod bench;
pub mod bulk;
mod cluster;
#[cfg(test)]
mod conformance;
pub mod control;
mod copies;
mod dispatch;
mod error;
pub mod fabric;
mod membership;
pub mod messages;
mod objects;
pub mod place;
mod pull;
pub mod read;
mod remote;
pub mod rendezvous;
mod router;
mod serve;
mod spread;
mod state;
mod sync;
mod tasks;

pub use crate::cluster::{Cluster, ClusterConfig, PullFigures, Role};
pub use crate::error::{ClusterError, ReadError};
pub use crate::membership::{default_ip, hostname, query, route_to, HEARTBEAT};
pub use crate::read::{CHUNK, IN_FLIGHT};
pub use crate::spread::{FANOUT, TREE_FROM};
