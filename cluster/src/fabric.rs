//! One-sided pulls over an RDMA fabric (libfabric; cargo feature `fabric`).
//!
//! A node that opens a fabric registers its whole object arena once, at start, and puts
//! the fabric's address and the region's (base, key, length) in its join record
//! ([`FabricInfo`]). To read a range of an object ([`FabricReads`], a
//! [`RangeReader`]), a node asks its owner where it lies (`Locate`: the owner pins it and
//! answers its offset in the arena), reads that range of the owner's region straight into
//! its own arena (`fi_read`, chunked and pipelined by `rayhpc-transport`), then lets the pin
//! go (`Unpin`). A pull that fails on this path (no fabric on either side, an object outside
//! the arena, a provider error, a timeout) goes on over TCP, which reads the same ranges
//! (see `pull.rs`); a node whose peer died fails the pull there.
//!
//! [`FabricMode::Auto`] takes the best RDMA provider offered ([`RDMA_PROVIDERS`]) and falls
//! back to TCP with one log line when there is none or the feature is off; a provider named
//! by flag or `RAYHPC_FABRIC` (`tcp;ofi_rxm`, `shm` included) must open, or the node does not
//! start.

use std::net::IpAddr;
use std::time::Duration;

use rayhpc::ids::ObjectId;
use rayhpc_transport::{NodeId, Peer};
use serde::{Deserialize, Serialize};

use crate::error::ReadError;
use crate::messages::Msg;
use crate::read::RangeReader;

/// What a node tells the cluster of its fabric (in its join record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricInfo {
    /// The libfabric provider, e.g. `tcp;ofi_rxm`.
    pub provider: String,
    /// Its endpoint's address (`fi_getname`).
    pub address: Vec<u8>,
    /// The registered arena: the remote address of its byte 0 (0 with offsets).
    pub base: u64,
    /// The registration's key.
    pub key: u64,
    /// The arena's length.
    pub len: u64,
}

/// Which fabric a node asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FabricMode {
    /// The best provider offered, else TCP (said once in the log).
    #[default]
    Auto,
    /// TCP only.
    Off,
    /// This provider, or the node does not start.
    Provider(String),
}

impl From<&str> for FabricMode {
    /// "auto" (or empty), "off" (or "none"), else a provider's name.
    fn from(s: &str) -> FabricMode {
        match s.trim() {
            "" | "auto" => FabricMode::Auto,
            "off" | "none" => FabricMode::Off,
            p => FabricMode::Provider(p.to_string()),
        }
    }
}

/// The providers [`FabricMode::Auto`] takes, best first: RDMA hardware (InfiniBand and
/// RoCE through verbs, AWS EFA, HPE Slingshot, Omni-Path, Intel's psm3). libfabric's
/// `tcp;ofi_rxm` emulates one-sided reads over sockets: measured between two namespace
/// nodes here it pulled a 1 GiB object at 1.3–2.1 GiB/s where the project's own TCP
/// streams reached 2.2–3.6 in the same runs, so it is used only when named.
pub const RDMA_PROVIDERS: [&str; 5] = ["verbs;ofi_rxm", "efa", "cxi", "opx", "psm3"];

/// Whether the kernel lists an RDMA device (InfiniBand, RoCE, EFA, Omni-Path: under
/// `/sys/class/infiniband`; Slingshot: `/sys/class/cxi`).
pub fn rdma_devices() -> bool {
    ["/sys/class/infiniband", "/sys/class/cxi"].iter().any(|d| std::fs::read_dir(d).is_ok_and(|mut r| r.next().is_some()))
}

/// The libfabric providers offering one-sided reads here, `None` when this build has no
/// fabric backend (what `rayhpc fabric` shows).
pub fn offered() -> Option<Vec<String>> {
    #[cfg(feature = "fabric")]
    return Some(rayhpc_transport::fabric::providers());
    #[cfg(not(feature = "fabric"))]
    None
}

#[cfg(feature = "fabric")]
mod imp {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use rayhpc::objstore::Store;

    use rayhpc_transport::fabric::{Fabric, FabricOptions, PeerAddr, Region, RemoteRegion};
    use rayhpc_transport::NodeId;

    use super::{FabricInfo, FabricMode, IpAddr, ReadError};

    /// This node's fabric: the endpoint and the registered arena.
    pub struct NodeFabric {
        fabric: Fabric,
        region: Region,
        info: FabricInfo,
        peers: Mutex<HashMap<NodeId, PeerAddr>>,
        /// The store whose arena is registered: kept mapped while the registration lives
        /// (fields drop in order: this one last).
        _store: Arc<Store>,
    }

    impl NodeFabric {
        /// Opens the fabric `mode` asks for on `ip` and registers `store`'s whole arena:
        /// `Ok(None)` for [`FabricMode::Off`].
        ///
        /// # Errors
        /// No provider, or it cannot open or register (the message says which).
        #[allow(unsafe_code)] // the registration of the arena (below)
        pub fn open(mode: &FabricMode, ip: IpAddr, store: &Arc<Store>) -> Result<Option<NodeFabric>, String> {
            let arena = store.region();
            let provider = match mode {
                FabricMode::Off => return Ok(None),
                FabricMode::Auto => {
                    // Every provider auto takes drives a device the kernel lists there; asking
                    // libfabric (which loads and probes every provider) costs ~0.35 s of start-up.
                    if !super::rdma_devices() {
                        return Err("no RDMA device here (nothing in /sys/class/infiniband or /sys/class/cxi)".into());
                    }
                    let offered = rayhpc_transport::fabric::providers();
                    let Some(p) = super::RDMA_PROVIDERS.iter().find(|p| offered.iter().any(|o| o == *p)) else {
                        return Err(format!(
                            "no RDMA provider offered (libfabric offers: {}; its tcp;ofi_rxm emulation pulls slower than \
                             rayhpc's own TCP streams, name it with --fabric to use it anyway)",
                            if offered.is_empty() { "none".to_string() } else { offered.join(", ") }
                        ));
                    };
                    Some(p.to_string())
                }
                FabricMode::Provider(p) => Some(p.clone()),
            };
            // A read with no chunk done for 10 s has lost its peer (a 4 MiB chunk takes
            // milliseconds): it fails, and the pull goes on over TCP or fails there.
            let opts =
                FabricOptions { provider, source: Some(ip), timeout: std::time::Duration::from_secs(10), ..FabricOptions::default() };
            let fabric = Fabric::open(&opts).map_err(|e| e.to_string())?;
            // SAFETY: the arena is the store's mapping, which lives as long as the store, and
            // this value holds the store (dropped after the registration). Reads land only in ranges that a pull owns exclusively (an
            // allocation being filled), and peers read only ranges pinned for them.
            let region = unsafe { fabric.register(arena.0, arena.1) }.map_err(|e| format!("cannot register the object arena: {e}"))?;
            let r = region.remote();
            let info =
                FabricInfo { provider: fabric.provider().to_string(), address: fabric.address(), base: r.base, key: r.key, len: r.len };
            Ok(Some(NodeFabric { fabric, region, info, peers: Mutex::new(HashMap::new()), _store: store.clone() }))
        }

        /// What the cluster is told.
        pub fn info(&self) -> &FabricInfo {
            &self.info
        }

        /// Reads `buf.len()` bytes at `offset` of node `node`'s arena (described by `peer`)
        /// into `buf`, which must lie in this node's arena.
        ///
        /// # Errors
        /// `buf` is outside the arena, the peer's address is bad, or the read failed.
        pub fn read(&self, node: NodeId, peer: &FabricInfo, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
            let start = (buf.as_ptr() as usize).wrapping_sub(self.region.as_ptr() as usize);
            if buf.as_ptr() < self.region.as_ptr() as *const u8 || start.saturating_add(buf.len()) > self.region.len() {
                return Err(ReadError::Destination);
            }
            let addr = {
                let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
                match peers.get(&node) {
                    Some(a) => *a,
                    None => {
                        let a = self.fabric.connect(&peer.address)?;
                        peers.insert(node, a);
                        a
                    }
                }
            };
            let remote = RemoteRegion { base: peer.base, key: peer.key, len: peer.len };
            // `buf` is this pull's alone (an allocation being filled): the fabric writes
            // exactly its range before `read` returns, and nothing reads it meanwhile.
            let r = self.fabric.read(addr, remote, offset, &self.region, start, buf.len());
            if r.is_err() {
                // A timed-out peer's address is void: connect again next time.
                self.peers.lock().unwrap_or_else(|e| e.into_inner()).remove(&node);
            }
            Ok(r?)
        }
    }
}

#[cfg(not(feature = "fabric"))]
mod imp {
    use rayhpc_transport::NodeId;

    use super::{FabricInfo, FabricMode, IpAddr, ReadError};

    /// This build has no fabric backend: never made.
    pub struct NodeFabric(std::convert::Infallible);

    impl NodeFabric {
        /// `Ok(None)` for [`FabricMode::Off`], else why there is none.
        ///
        /// # Errors
        /// Always but for `Off`: the build lacks the feature.
        pub fn open(
            mode: &FabricMode,
            _ip: IpAddr,
            _store: &std::sync::Arc<rayhpc::objstore::Store>,
        ) -> Result<Option<NodeFabric>, String> {
            match mode {
                FabricMode::Off => Ok(None),
                _ => Err("this rayhpc was built without the `fabric` feature (libfabric)".into()),
            }
        }

        /// Never called.
        pub fn info(&self) -> &FabricInfo {
            match self.0 {}
        }

        /// Never called.
        ///
        /// # Errors
        /// None: there is no such value.
        pub fn read(&self, _node: NodeId, _peer: &FabricInfo, _offset: u64, _buf: &mut [u8]) -> Result<(), ReadError> {
            match self.0 {}
        }
    }
}

pub use imp::NodeFabric;

/// Reads over this node's fabric (a [`RangeReader`]): `Locate` (the holder pins the object
/// and answers where it lies in its arena), one read of the range, `Unpin`. The other node's
/// fabric is what `theirs` says of it (the cluster's view): none, or another provider than
/// this node's, is [`ReadError::NoPath`]. The buffer must lie in this node's arena.
pub struct FabricReads<'a, F> {
    fabric: &'a NodeFabric,
    theirs: F,
}

impl<'a, F: Fn(NodeId) -> Option<FabricInfo>> FabricReads<'a, F> {
    /// Reads over `fabric` from the nodes whose fabric `theirs` tells.
    pub fn new(fabric: &'a NodeFabric, theirs: F) -> Self {
        FabricReads { fabric, theirs }
    }
}

impl<F: Fn(NodeId) -> Option<FabricInfo>> RangeReader for FabricReads<'_, F> {
    fn name(&self) -> &'static str {
        "fabric"
    }

    fn read(&self, peer: &Peer, id: ObjectId, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let node = peer.node();
        let Some(info) = (self.theirs)(node).filter(|i| i.provider == self.fabric.info().provider) else {
            return Err(ReadError::NoPath { path: "fabric", node });
        };
        let ask = postcard::to_allocvec(&id).expect("an id serializes");
        let read = peer
            .request(Msg::Locate.kind(), &ask, Duration::from_secs(30))
            .map_err(ReadError::from)
            .and_then(|f| {
                postcard::from_bytes::<(u64, u64)>(&f.payload).map_err(|source| ReadError::Malformed { what: "location", node, source })
            })
            .and_then(|(at, len)| {
                let want = buf.len() as u64;
                match offset.checked_add(want) {
                    Some(end) if end <= len => self.fabric.read(node, &info, at.saturating_add(offset), buf),
                    _ => Err(ReadError::OutOfRange { offset, want, len }),
                }
            });
        // Whatever the answer (one that came too late may still have pinned it): Locate and
        // Unpin are handled in order there, and an Unpin of nothing is nothing.
        let _ = peer.send(Msg::Unpin.kind(), &ask);
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(FabricMode::from("auto"), FabricMode::Auto);
        assert_eq!(FabricMode::from(""), FabricMode::Auto);
        assert_eq!(FabricMode::from("off"), FabricMode::Off);
        assert_eq!(FabricMode::from("none"), FabricMode::Off);
        assert_eq!(FabricMode::from("shm"), FabricMode::Provider("shm".into()));
        assert_eq!(FabricMode::from("tcp;ofi_rxm"), FabricMode::Provider("tcp;ofi_rxm".into()));
    }
}
