//! The conformance test of the readers of other nodes' objects ([`crate::read`]): one test
//! of what a [`RangeReader`] must do, run against each: [`Chunks`], bulk streams
//! and (with the `fabric` feature, over libfabric's `tcp;ofi_rxm`) the fabric. Two node
//! runtimes of this process in a cluster over loopback: the head holds and exports an
//! object (a real store, the real handlers of `Pull`, `BulkTicket`, `Locate`, `Unpin`), the
//! member reads ranges of it into objects of its own store, through its connection to the
//! head.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use rayhpc::ids::ObjectId;
use rayhpc::{ObjectRef, Untyped};
use rayhpc_node::{Node, NodeConfig};
use rayhpc_transport::{NodeId, Peer};

use crate::bulk::BulkStreams;
use crate::cluster::{Cluster, ClusterConfig, Role};
use crate::error::ReadError;
use crate::fabric::FabricMode;
use crate::read::{Chunks, RangeReader, CHUNK};
use crate::remote::Remote;
use crate::sync::lock;

/// Bytes before and after each range read in its destination object, which must stay as
/// they were; the destination is then never inline (over 64 KiB), so a fabric read can land
/// in it.
const MARGIN: usize = (64 << 10) + 3;
/// What the margins hold.
const UNTOUCHED: u8 = 0xA5;

/// The byte at `i` of the exported object: no period a misplaced piece could hide in.
fn pattern(i: usize) -> u8 {
    ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (i >> 12) as u8
}

/// A head that exports objects and a member that reads them.
struct Pair {
    nodes: Vec<Arc<Node>>,
    clusters: Vec<Cluster>,
}

impl Pair {
    fn start(fabric: FabricMode) -> Pair {
        let nodes: Vec<Arc<Node>> = (0..2)
            .map(|rank| {
                let cfg = NodeConfig { num_cpus: Some(1.0), object_store_memory: Some(96 << 20), node_id: rank, ..NodeConfig::default() };
                Arc::new(Node::start(cfg).expect("a node starts"))
            })
            .collect();
        let config = |role, rank| ClusterConfig {
            role,
            rank,
            bind: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            secret: vec![9; 32],
            fabric: fabric.clone(),
        };
        let head = Cluster::start(nodes[0].clone(), config(Role::Head, 0)).expect("the head starts");
        let member = Cluster::start(nodes[1].clone(), config(Role::Member { head: head.address() }, 1)).expect("the member joins");
        Pair { nodes, clusters: vec![head, member] }
    }

    fn exporter(&self) -> &Arc<Remote> {
        &self.clusters[0].membership().remote
    }

    #[cfg(feature = "fabric")]
    fn reader(&self) -> &Arc<Remote> {
        &self.clusters[1].membership().remote
    }

    /// The member's connection to the head.
    fn peer(&self) -> Peer {
        lock(&self.clusters[1].membership().head_peer).clone().expect("joined")
    }

    /// An object of `len` bytes of [`pattern`], exported by the head.
    fn export(&self, len: usize) -> ObjectRef<Untyped> {
        let fill = |b: &mut [u8]| -> Result<(), rayhpc::Error> {
            b.iter_mut().enumerate().for_each(|(i, x)| *x = pattern(i));
            Ok(())
        };
        let r = self.nodes[0].runtime().put_with(len, fill).expect("the object");
        self.exporter().export(r.id(), r.clone());
        r
    }

    /// Bytes `[offset, offset + n)` of `id` read by `reader` into an object of the member's
    /// store (between margins, which are checked).
    fn read(&self, reader: &dyn RangeReader, id: ObjectId, offset: usize, n: usize) -> Result<Vec<u8>, ReadError> {
        let peer = self.peer();
        let mut failed = None;
        let dest = self.nodes[1].runtime().put_with(MARGIN + n + MARGIN, |b: &mut [u8]| -> Result<(), rayhpc::Error> {
            b.fill(UNTOUCHED);
            failed = reader.read(&peer, id, offset as u64, &mut b[MARGIN..MARGIN + n]).err();
            Ok(())
        });
        if let Some(e) = failed {
            return Err(e);
        }
        let view = dest.expect("a destination").try_view().expect("ready").expect("readable");
        let name = reader.name();
        assert!(view[..MARGIN].iter().chain(&view[MARGIN + n..]).all(|b| *b == UNTOUCHED), "{name} wrote outside [{offset}, +{n})");
        Ok(view[MARGIN..MARGIN + n].to_vec())
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for c in self.clusters.iter().rev() {
            c.shutdown(Duration::from_secs(2));
        }
        for n in &self.nodes {
            n.shutdown();
        }
    }
}

/// What every reader does, with an object of `len` bytes that it moves in pieces of `piece`
/// bytes (a chunk, a stream's part, a fabric read's chunk): whole; a head, a tail, ranges
/// across pieces, unaligned; nothing; then an unknown object and ranges past the end fail,
/// and the exporter serves on.
fn conforms(pair: &Pair, reader: &dyn RangeReader, len: usize, piece: usize) {
    assert!(len > 2 * piece + 4096, "the object spans several pieces");
    let object = pair.export(len);
    let id = object.id();
    let name = reader.name();
    let check = |offset: usize, n: usize| {
        let got = pair.read(reader, id, offset, n).unwrap_or_else(|e| panic!("{name}: a read of [{offset}, +{n}) failed: {e}"));
        let first_wrong = got.iter().enumerate().position(|(i, b)| *b != pattern(offset + i));
        assert_eq!(first_wrong, None, "{name}: a read of [{offset}, +{n}) differs");
    };
    // The whole object; a head, a tail; unaligned ranges across one piece boundary, across
    // two, and all but a byte at each end.
    check(0, len);
    check(0, 1000);
    check(len - 777, 777);
    check(piece - 13, 29);
    check(piece - 4099, piece + 8200);
    check(1, len - 2);
    // Nothing: at the start, inside, at the end.
    for at in [0, len / 2 + 1, len] {
        check(at, 0);
    }

    // An object the head does not hold: refused by the head.
    let unknown = ObjectId((0xFEED << 64) | 1);
    match pair.read(reader, unknown, 0, 4096) {
        Err(ReadError::Refused { node, .. }) => assert_eq!(node, NodeId(0)),
        other => panic!("{name}: a read of an unknown object gave {other:?}"),
    }
    // Past the end: across it, after it, nothing after it.
    for (offset, n) in [(len - 10, 20), (len, 1), (len + 4096, 4096), (len + 1, 0)] {
        match pair.read(reader, id, offset, n) {
            Err(ReadError::OutOfRange { len: l, .. }) => assert_eq!(l, len as u64),
            Err(ReadError::Refused { node, reason }) => assert!(node == NodeId(0) && reason.contains(&format!("{len}-byte")), "{reason}"),
            other => panic!("{name}: a read of [{offset}, +{n}) of a {len}-byte object gave {other:?}"),
        }
    }
    // The exporter serves on.
    check(len / 3, len / 3);
    pair.exporter().unexport(id);
}

#[test]
fn chunks_read_ranges() {
    let pair = Pair::start(FabricMode::Off);
    // Small chunks, fewer in flight than a whole read has: the pipeline refills.
    let small = Chunks { chunk: 64 << 10, in_flight: 3 };
    conforms(&pair, &small, 7 * (64 << 10) + 4097, 64 << 10);
    // As pulls read (an object of a few chunks).
    conforms(&pair, &Chunks::default(), 2 * CHUNK + 12_345, CHUNK);
}

#[test]
fn bulk_streams_read_ranges() {
    let pair = Pair::start(FabricMode::Off);
    // Three streams per read: a whole read splits into parts of `piece`.
    let len = (3 << 20) + 12_345;
    let piece = (len as u64).div_ceil(3).next_multiple_of(4096) as usize;
    conforms(&pair, &BulkStreams { streams: Some(3) }, len, piece);
}

#[cfg(feature = "fabric")]
#[test]
fn the_fabric_reads_ranges() {
    let pair = Pair::start(FabricMode::Provider("tcp;ofi_rxm".into()));
    let me = pair.reader();
    let fabric = me.objects.fabric.as_ref().expect("the member's fabric");
    let reads = crate::fabric::FabricReads::new(fabric, |n| me.fabric_of(n));
    // The transport reads 4 MiB per `fi_read`.
    conforms(&pair, &reads, (9 << 20) + 12_345, 4 << 20);
    // Without the same fabric on the other node, it does not apply.
    let object = pair.export(1 << 20);
    let none = crate::fabric::FabricReads::new(fabric, |_| None);
    match pair.read(&none, object.id(), 0, 4096) {
        Err(ReadError::NoPath { path: "fabric", node }) => assert_eq!(node, NodeId(0)),
        other => panic!("a fabric read without a fabric there gave {other:?}"),
    }
}
