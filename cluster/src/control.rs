//! The control store's messages (postcard, in transport frames of kind `Control`: see
//! [`crate::messages`]) and the head's state: the node table with joins, leaves and
//! heartbeats; the cluster resource view every node receives with each heartbeat's answer; a
//! function table (Python functions by key, so that a node that never saw the driver can
//! run them); named actors; a KV store with watches. None of it is on the per-task path:
//! tasks and objects are tracked by their owners.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rayhpc::ids::ActorId;
use rayhpc_node::kv::{Kv, KvAnswer, KvOp};
use rayhpc_node::wire::Key;
use rayhpc_transport::NodeId;
use serde::{Deserialize, Serialize};

/// One node as the cluster sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its index in the node table (0: the head), given at join.
    pub id: u32,
    /// Its rank in the launch (the head is rank 0).
    pub rank: u32,
    /// Its transport node id.
    pub transport_id: NodeId,
    /// Host name.
    pub host: String,
    /// Its transport endpoint, `ip:port`.
    pub addr: String,
    /// Resources: name → (total, available).
    pub resources: BTreeMap<String, (f64, f64)>,
    /// Object store: bytes used, capacity, objects, and its backing ("2 MiB hugetlb"...).
    pub store_used: u64,
    /// Object store capacity in bytes.
    pub store_capacity: u64,
    /// Objects in the store.
    pub store_objects: u64,
    /// How the store's arena is backed.
    pub store_backing: String,
    /// Objects this node pulled from others, and their bytes.
    pub pulled: (u64, u64),
    /// How objects are pulled from this node: `tcp`, or `fabric:<provider>`.
    pub transport: String,
    /// Its RDMA fabric (address and registered arena), if it has one.
    pub fabric: Option<crate::fabric::FabricInfo>,
    /// False once it left or missed its heartbeats.
    pub alive: bool,
}

/// What a node reports with each heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Resources: name → (total, available).
    pub resources: BTreeMap<String, (f64, f64)>,
    /// Store bytes used.
    pub store_used: u64,
    /// Objects in the store.
    pub store_objects: u64,
    /// Objects pulled from other nodes, and their bytes.
    pub pulled: (u64, u64),
}

/// A request to the head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// A node joins: its description (id and alive are the head's to set).
    Join(NodeInfo),
    /// A node's periodic report; answered with the view.
    Heartbeat {
        /// The node's id.
        id: u32,
        /// What it has free now.
        load: Load,
    },
    /// A node leaves in order.
    Leave {
        /// The node's id.
        id: u32,
    },
    /// The node table (for `rayhpc status` and drivers).
    View,
    /// An operation on the KV store ([`rayhpc_node::kv`]). A watch is answered at once here; the
    /// head's server parks one that has nothing to answer yet.
    Kv(KvOp),
    /// Stores a function (a pickled Python function, by its 16-byte key).
    FnPut {
        /// Key.
        key: Key,
        /// The pickled function.
        blob: Vec<u8>,
    },
    /// Reads a function.
    FnGet {
        /// Key.
        key: Key,
    },
    /// Names an actor (fails if the name is taken by a live actor).
    ActorName {
        /// The name.
        name: String,
        /// The node that holds it.
        node: u32,
        /// Its id.
        actor: ActorId,
        /// Its class's key.
        key: Key,
    },
    /// Forgets a name (its actor is gone or its creation failed).
    ActorForget {
        /// The name.
        name: String,
        /// The actor it named.
        actor: ActorId,
    },
    /// Where a named actor lives.
    ActorLookup {
        /// The name.
        name: String,
    },
    /// The names of the live named actors.
    ActorNames,
    /// Stops the cluster: every node is told to stop.
    Shutdown,
}

/// The head's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Joined: the node's id, and the view.
    Joined {
        /// The id given.
        id: u32,
        /// Every node.
        view: Vec<NodeInfo>,
    },
    /// The view (version, every node).
    View {
        /// Bumped at every change of membership.
        version: u64,
        /// Every node.
        nodes: Vec<NodeInfo>,
    },
    /// A value, if the key exists.
    Value(Option<Vec<u8>>),
    /// A named actor: its id and class key.
    Actor(Option<(ActorId, Key)>),
    /// Names, sorted.
    Names(Vec<String>),
    /// The KV store's answer.
    Kv(KvAnswer),
    /// Done.
    Ok,
    /// The stop is on: a node that gets this as a heartbeat's answer stops.
    Stopping,
    /// Refused, with the reason.
    Error(String),
}

/// How long a node may stay silent before it is counted dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(3);

/// The head's tables (its server answers requests from them).
#[derive(Default)]
pub struct Head {
    nodes: Vec<(NodeInfo, Instant)>,
    version: u64,
    kv: Kv,
    functions: HashMap<Key, Vec<u8>>,
    actors: HashMap<String, (u32, ActorId, Key)>,
    stopping: bool,
}

impl Head {
    /// Empty tables.
    pub fn new() -> Head {
        Head::default()
    }

    /// Nodes that joined and are alive.
    pub fn alive(&self) -> usize {
        self.nodes.iter().filter(|(n, _)| n.alive).count()
    }

    /// True once a shutdown was asked.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// The KV store.
    pub fn kv(&mut self) -> &mut Kv {
        &mut self.kv
    }

    /// The node table.
    pub fn view(&self) -> Vec<NodeInfo> {
        self.nodes.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Marks the node of transport id `tid` dead (its connection ended); true if it was
    /// alive.
    pub fn disconnected(&mut self, tid: NodeId) -> bool {
        let mut any = false;
        for (n, _) in &mut self.nodes {
            if n.transport_id == tid && n.alive && n.id != 0 {
                n.alive = false;
                any = true;
            }
        }
        if any {
            self.version += 1;
        }
        any
    }

    /// Marks nodes silent for longer than [`DEAD_AFTER`] dead; returns those newly dead.
    pub fn expire(&mut self, now: Instant) -> Vec<u32> {
        let mut dead = Vec::new();
        for (n, seen) in &mut self.nodes {
            if n.alive && n.id != 0 && now.duration_since(*seen) > DEAD_AFTER {
                n.alive = false;
                dead.push(n.id);
            }
        }
        if !dead.is_empty() {
            self.version += 1;
        }
        dead
    }

    /// Answers one request.
    pub fn handle(&mut self, r: Request, now: Instant) -> Response {
        match r {
            Request::Join(mut info) => {
                if self.stopping {
                    return Response::Error("the cluster is stopping".into());
                }
                // A rank that joins again (a restarted node) takes a new id; the old entry
                // stays, dead.
                for (n, _) in &mut self.nodes {
                    if n.rank == info.rank && n.alive && info.rank != 0 {
                        n.alive = false;
                    }
                }
                info.id = self.nodes.len() as u32;
                info.alive = true;
                let id = info.id;
                self.nodes.push((info, now));
                self.version += 1;
                Response::Joined { id, view: self.view() }
            }
            Request::Heartbeat { id, load } => {
                let Some((n, seen)) = self.nodes.get_mut(id as usize) else {
                    return Response::Error(format!("no node {id}: join first"));
                };
                if !n.alive {
                    return Response::Error(format!("node {id} was counted dead: join again"));
                }
                n.resources = load.resources;
                n.store_used = load.store_used;
                n.store_objects = load.store_objects;
                n.pulled = load.pulled;
                *seen = now;
                if self.stopping {
                    return Response::Stopping;
                }
                Response::View { version: self.version, nodes: self.view() }
            }
            Request::Leave { id } => {
                if let Some((n, _)) = self.nodes.get_mut(id as usize) {
                    if n.alive {
                        n.alive = false;
                        self.version += 1;
                    }
                }
                Response::Ok
            }
            Request::View => Response::View { version: self.version, nodes: self.view() },
            Request::Kv(op) => match self.kv.apply(op) {
                Ok(a) => Response::Kv(a),
                Err(m) => Response::Error(m),
            },
            Request::FnPut { key, blob } => {
                self.functions.entry(key).or_insert(blob);
                Response::Ok
            }
            Request::FnGet { key } => Response::Value(self.functions.get(&key).cloned()),
            Request::ActorName { name, node, actor, key } => {
                let alive = |n: u32| self.nodes.iter().any(|(i, _)| i.rank == n && i.alive);
                if self.actors.get(&name).is_some_and(|(n, a, _)| alive(*n) && *a != actor) {
                    return Response::Error(format!("the actor name {name:?} is taken"));
                }
                self.actors.insert(name, (node, actor, key));
                Response::Ok
            }
            Request::ActorForget { name, actor } => {
                if self.actors.get(&name).is_some_and(|(_, a, _)| *a == actor) {
                    self.actors.remove(&name);
                }
                Response::Ok
            }
            Request::ActorLookup { name } => {
                let alive = |n: u32| self.nodes.iter().any(|(i, _)| i.rank == n && i.alive);
                Response::Actor(self.actors.get(&name).filter(|(n, _, _)| alive(*n)).map(|(_, a, k)| (*a, *k)))
            }
            Request::ActorNames => {
                let alive = |n: u32| self.nodes.iter().any(|(i, _)| i.rank == n && i.alive);
                let mut names: Vec<String> = self.actors.iter().filter(|(_, (n, _, _))| alive(*n)).map(|(k, _)| k.clone()).collect();
                names.sort_unstable();
                Response::Names(names)
            }
            Request::Shutdown => {
                self.stopping = true;
                Response::Ok
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(rank: u32) -> NodeInfo {
        NodeInfo {
            id: 99,
            rank,
            transport_id: NodeId(rank.into()),
            host: format!("node{rank}"),
            addr: format!("10.0.0.{rank}:1"),
            resources: [("CPU".to_string(), (2.0, 2.0))].into(),
            store_used: 0,
            store_capacity: 1 << 30,
            store_objects: 0,
            store_backing: "4 KiB pages".into(),
            pulled: (0, 0),
            transport: "tcp".into(),
            fabric: None,
            alive: false,
        }
    }

    #[test]
    fn joins_heartbeats_and_silence_make_the_view() {
        let t0 = Instant::now();
        let mut h = Head::new();
        for rank in 0..3 {
            let Response::Joined { id, view } = h.handle(Request::Join(node(rank)), t0) else { panic!() };
            assert_eq!((id, view.len()), (rank, rank as usize + 1));
            assert!(view.iter().all(|n| n.alive));
        }
        let load = Load { resources: [("CPU".to_string(), (2.0, 0.5))].into(), store_used: 10, store_objects: 1, pulled: (1, 10) };
        let t1 = t0 + Duration::from_secs(2);
        let Response::View { nodes, .. } = h.handle(Request::Heartbeat { id: 1, load: load.clone() }, t1) else { panic!() };
        assert_eq!(nodes[1].resources["CPU"], (2.0, 0.5));
        assert_eq!(nodes[1].pulled, (1, 10));
        // Node 2 stays silent past DEAD_AFTER; node 1 spoke at t1; the head (0) never expires.
        assert_eq!(h.expire(t0 + DEAD_AFTER + Duration::from_millis(1)), vec![2]);
        assert_eq!(h.alive(), 2);
        assert!(matches!(h.handle(Request::Heartbeat { id: 2, load: load.clone() }, t1), Response::Error(m) if m.contains("dead")));
        assert!(matches!(h.handle(Request::Heartbeat { id: 7, load }, t1), Response::Error(m) if m.contains("join first")));
        // It joins again under a new id.
        let Response::Joined { id, .. } = h.handle(Request::Join(node(2)), t1) else { panic!() };
        assert_eq!(id, 3);
        assert_eq!(h.handle(Request::Leave { id: 3 }, t1), Response::Ok);
        assert_eq!(h.alive(), 2);
        // A closed connection counts a node dead at once.
        assert!(h.disconnected(NodeId(1)));
        assert!(!h.disconnected(NodeId(1)));
        assert_eq!(h.alive(), 1);
    }

    #[test]
    fn kv_functions_and_named_actors() {
        let now = Instant::now();
        let mut h = Head::new();
        h.handle(Request::Join(node(0)), now);
        let get = Request::Kv(KvOp::Get { key: b"a".to_vec() });
        assert_eq!(h.handle(get.clone(), now), Response::Kv(KvAnswer::Value(None)));
        h.handle(Request::Kv(KvOp::Put { key: b"a".to_vec(), value: b"1".to_vec(), overwrite: true }), now);
        assert_eq!(h.handle(get.clone(), now), Response::Kv(KvAnswer::Value(Some(b"1".to_vec()))));
        assert!(matches!(h.handle(Request::Kv(KvOp::Put { key: vec![0; 5000], value: vec![], overwrite: true }), now), Response::Error(_)));
        h.handle(Request::FnPut { key: [1; 16], blob: b"f".to_vec() }, now);
        assert_eq!(h.handle(Request::FnGet { key: [1; 16] }, now), Response::Value(Some(b"f".to_vec())));
        assert_eq!(h.handle(Request::ActorName { name: "c".into(), node: 0, actor: ActorId(5), key: [2; 16] }, now), Response::Ok);
        assert!(matches!(
            h.handle(Request::ActorName { name: "c".into(), node: 0, actor: ActorId(6), key: [2; 16] }, now),
            Response::Error(_)
        ));
        assert_eq!(h.handle(Request::ActorLookup { name: "c".into() }, now), Response::Actor(Some((ActorId(5), [2; 16]))));
        assert_eq!(h.handle(Request::ActorNames, now), Response::Names(vec!["c".into()]));
        h.handle(Request::ActorForget { name: "c".into(), actor: ActorId(5) }, now);
        assert_eq!(h.handle(Request::ActorLookup { name: "c".into() }, now), Response::Actor(None));
        h.handle(Request::Shutdown, now);
        assert!(h.stopping());
        assert!(matches!(h.handle(Request::Join(node(1)), now), Response::Error(_)));
    }
}
