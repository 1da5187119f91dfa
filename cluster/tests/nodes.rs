//! Three node runtimes of one process in a cluster over loopback: they join the head, share
//! its KV store and names, and move objects between them — pulled over TCP (chunks on the
//! control connection and bulk streams) and broadcast as a tree — byte-exact.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use rayhpc_cluster::fabric::FabricMode;
use rayhpc_cluster::{Cluster, ClusterConfig, Role};
use rayhpc_node::api::Api;
use rayhpc_node::kv::{KvAnswer, KvOp};
use rayhpc_node::{Node, NodeConfig};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn node(rank: u32) -> Arc<Node> {
    let cfg = NodeConfig { num_cpus: Some(1.0), object_store_memory: Some(128 << 20), node_id: rank, ..NodeConfig::default() };
    Arc::new(Node::start(cfg).expect("a node starts"))
}

fn config(role: Role, rank: u32) -> ClusterConfig {
    ClusterConfig { role, rank, bind: Some(LOOPBACK), secret: vec![7; 32], fabric: FabricMode::Off }
}

#[test]
fn nodes_join_share_the_kv_store_and_pull_objects_byte_exact() {
    let nodes: Vec<Arc<Node>> = (0..3).map(node).collect();
    let head = Cluster::start(nodes[0].clone(), config(Role::Head, 0)).expect("the head starts");
    let members: Vec<Cluster> = (1..3)
        .map(|rank| Cluster::start(nodes[rank as usize].clone(), config(Role::Member { head: head.address() }, rank)).expect("joins"))
        .collect();
    let view = head.wait_nodes(3, Duration::from_secs(10)).expect("every node joins");
    assert_eq!(view.iter().map(|n| n.rank).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(view.iter().all(|n| n.alive && n.transport == "tcp"));
    assert_eq!(members[0].id(), 1);

    // The KV store is the head's, whichever node asks; so are the nodes and resources.
    let put = KvOp::Put { key: b"k".to_vec(), value: b"v".to_vec(), overwrite: true };
    nodes[2].service().kv(put).expect("a member puts");
    let got = nodes[0].service().kv(KvOp::Get { key: b"k".to_vec() }).expect("the head reads");
    assert_eq!(got, KvAnswer::Value(Some(b"v".to_vec())));
    // A member's view is the head's answer to its last heartbeat.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while nodes[1].service().nodes().unwrap().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "the first member never saw the third node");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpus = nodes[1].service().resources().unwrap().into_iter().find(|r| r.name == "CPU").expect("CPUs").total;
    assert_eq!(cpus, 3.0);

    // Pulls from the head, in chunks (under 1 MiB) and over bulk streams, byte-exact.
    for len in [300 << 10, 3 << 20] {
        let figures = head.bench_pull(len, 1).expect("the pulls");
        assert_eq!(figures.iter().map(|f| f.rank).collect::<Vec<_>>(), vec![1, 2]);
        assert!(figures.iter().all(|f| f.pull_tcp > 0.0 && f.raw_tcp > 0.0 && f.pull_fabric.is_none()));
    }
    // A broadcast from the head alone, then as a tree (the second puller may pull from the
    // first): every copy byte-exact.
    let (n, direct, tree) = head.bench_broadcast(9 << 20).expect("the broadcasts");
    assert_eq!((n, direct.rounds), (2, 1));
    assert!((1..=2).contains(&tree.rounds), "{tree:?}");

    for m in &members {
        m.shutdown(Duration::from_secs(2));
    }
    head.shutdown(Duration::from_secs(2));
    assert!(head.stopped().is_some());
    for n in &nodes {
        n.shutdown();
    }
}

/// With the fabric backend: two nodes over libfabric's `tcp;ofi_rxm` (no RDMA device here),
/// an object read with `Locate`, one fabric read and `Unpin`, byte-exact.
#[cfg(feature = "fabric")]
#[test]
fn objects_move_over_the_fabric_when_both_nodes_have_one() {
    let fabric = FabricMode::Provider("tcp;ofi_rxm".into());
    let nodes: Vec<Arc<Node>> = (0..2).map(node).collect();
    let head = Cluster::start(nodes[0].clone(), ClusterConfig { fabric: fabric.clone(), ..config(Role::Head, 0) }).expect("the head");
    let member =
        Cluster::start(nodes[1].clone(), ClusterConfig { fabric, ..config(Role::Member { head: head.address() }, 1) }).expect("the member");
    let view = head.wait_nodes(2, Duration::from_secs(10)).expect("both join");
    assert!(view.iter().all(|n| n.transport == "fabric:tcp;ofi_rxm"), "{view:?}");
    let figures = head.bench_pull(3 << 20, 1).expect("the pulls");
    assert!(figures[0].pull_fabric.is_some_and(|r| r > 0.0), "{figures:?}");
    member.shutdown(Duration::from_secs(2));
    head.shutdown(Duration::from_secs(2));
    for n in &nodes {
        n.shutdown();
    }
}
