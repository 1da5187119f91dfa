//! Every transport message kind of the cluster, in one table, with the payload each carries
//! (postcard). Which handler each frame goes to is `dispatch.rs`'s.
//!
//! | kind ([`Msg`]) | number | from → to | payload | answer |
//! |---|---|---|---|---|
//! | `Control` | 0x100 | node → head, request | [`crate::control::Request`] | [`crate::control::Response`] |
//! | `Stop` | 0x101 | head → node, one-way | none | |
//! | `Task` | 0x110 | owner → executor, one-way | [`TaskMsg`] | |
//! | `TaskDone` | 0x111 | executor → owner, one-way | [`DoneMsg`] | |
//! | `Pull` | 0x112 | puller → exporter, request | [`PullMsg`] | the chunk's bytes |
//! | `Unexport` | 0x113 | puller → exporter, one-way | [`ObjectId`] | |
//! | `BulkTicket` | 0x114 | puller → exporter, request | [`ObjectId`] | [`Ticket`] |
//! | `Fetch` | 0x115 | reader → the object's node, request | [`ObjectId`] | [`Outcome`] |
//! | `ActorNew` | 0x116 | requester → node, request | [`ActorMsg`] | [`ActorMade`] |
//! | `ActorKill` | 0x117 | requester → the actor's node, one-way | [`ActorId`] | |
//! | `Locate` | 0x118 | puller → exporter, request | [`ObjectId`] | `(offset, len)` in the arena |
//! | `Unpin` | 0x119 | puller → exporter, one-way | [`ObjectId`] | |
//! | `Where` | 0x11A | puller → owner, request | [`ObjectId`] | [`Source`] (perhaps later) |
//! | `Pulled` | 0x11B | puller → owner, one-way | [`PulledMsg`] | |
//! | `Cancel` | 0x11C | canceller → the result's node, owner → executor, one-way | [`CancelMsg`] | |
//! | `BenchRaw` | 0x120 | head → node, request | [`BenchAsk`] | a port (u16, little-endian) |
//! | `BenchPull` | 0x121 | head → node, request | [`BenchAsk`] | `(nanoseconds, digest, round)` |
//!
//! A frame of any other kind is logged and dropped (a request among them is refused, so that
//! its sender does not wait).

use rayhpc::ids::{ActorId, ObjectId};
use rayhpc_node::api::Failure;
use rayhpc_node::wire::{Key, WireOptions};
use rayhpc_transport::{Kind, NodeId, Peer};
use serde::{Deserialize, Serialize};

/// A message kind of the cluster (see the table in the module's docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Msg {
    /// Node → head: a control request ([`crate::control`]).
    Control,
    /// Head → node: stop now (the launch ended).
    Stop,
    /// Owner → executor: run this task.
    Task,
    /// Executor → owner: the task's outcome.
    TaskDone,
    /// A chunk of an exported object.
    Pull,
    /// Puller → exporter: let the object go.
    Unexport,
    /// A ticket for a bulk stream of an exported object ([`crate::bulk`]).
    BulkTicket,
    /// The object of a ref that travelled inside a value, asked of the node that made it.
    Fetch,
    /// Create an actor on the receiving node.
    ActorNew,
    /// Kill an actor of the receiving node.
    ActorKill,
    /// Where an exported object lies in the arena, pinned for the asker's fabric read.
    Locate,
    /// The asker read what `Locate` pinned.
    Unpin,
    /// Which node to pull an object from (the broadcast tree).
    Where,
    /// A pull from the source that `Where` named ended.
    Pulled,
    /// Cancel a task (`ray.cancel`).
    Cancel,
    /// Bench: accept a raw TCP stream ([`crate::bench`]).
    BenchRaw,
    /// Bench: pull an object the head exports.
    BenchPull,
}

impl Msg {
    /// Every kind.
    pub const ALL: [Msg; 17] = [
        Msg::Control,
        Msg::Stop,
        Msg::Task,
        Msg::TaskDone,
        Msg::Pull,
        Msg::Unexport,
        Msg::BulkTicket,
        Msg::Fetch,
        Msg::ActorNew,
        Msg::ActorKill,
        Msg::Locate,
        Msg::Unpin,
        Msg::Where,
        Msg::Pulled,
        Msg::Cancel,
        Msg::BenchRaw,
        Msg::BenchPull,
    ];

    /// Its transport frame kind.
    pub const fn kind(self) -> Kind {
        Kind(match self {
            Msg::Control => 0x100,
            Msg::Stop => 0x101,
            Msg::Task => 0x110,
            Msg::TaskDone => 0x111,
            Msg::Pull => 0x112,
            Msg::Unexport => 0x113,
            Msg::BulkTicket => 0x114,
            Msg::Fetch => 0x115,
            Msg::ActorNew => 0x116,
            Msg::ActorKill => 0x117,
            Msg::Locate => 0x118,
            Msg::Unpin => 0x119,
            Msg::Where => 0x11A,
            Msg::Pulled => 0x11B,
            Msg::Cancel => 0x11C,
            Msg::BenchRaw => 0x120,
            Msg::BenchPull => 0x121,
        })
    }

    /// The kind of a frame, if it is one of the cluster's.
    pub fn of(kind: Kind) -> Option<Msg> {
        Msg::ALL.into_iter().find(|m| m.kind() == kind)
    }
}

/// An argument of a forwarded task or actor creation.
#[derive(Serialize, Deserialize, Debug)]
pub enum Arg {
    /// The argument's bytes.
    Value(Vec<u8>),
    /// An object the sender exports, to pull.
    Object {
        /// Its id.
        id: ObjectId,
        /// Its length.
        len: u64,
    },
}

/// A forwarded task's function.
#[derive(Serialize, Deserialize, Debug)]
pub enum MsgFn {
    /// A Python function: its key and pickled body (empty when the sender sent it to this
    /// node before: only a node's first task of a function carries it).
    Python {
        /// The function's key.
        key: Key,
        /// Its pickled body, or nothing.
        blob: Vec<u8>,
    },
    /// A native `library:symbol` function.
    Native(String),
    /// A method of an actor of the receiving node.
    Method {
        /// The actor.
        actor: ActorId,
        /// The method's name.
        method: String,
    },
}

/// `Task`: run this.
#[derive(Serialize, Deserialize, Debug)]
pub struct TaskMsg {
    /// The owner's number for the task (its `TaskDone` names it).
    pub seq: u64,
    /// What runs.
    pub func: MsgFn,
    /// Its arguments (a Python task's key is not among them: the executor puts it back).
    pub args: Vec<Arg>,
    /// Its options.
    pub options: WireOptions,
}

/// How a task or a fetched object turned out.
#[derive(Serialize, Deserialize, Debug)]
pub enum Outcome {
    /// Its bytes.
    Inline(Vec<u8>),
    /// An object the sender lends until the receiver pulled it (`Unexport`).
    Stored {
        /// Its id.
        id: ObjectId,
        /// Its length.
        len: u64,
    },
    /// The failure.
    Failed(Failure),
}

/// `TaskDone`: the outcome of task `seq`.
#[derive(Serialize, Deserialize, Debug)]
pub struct DoneMsg {
    /// The owner's number for the task.
    pub seq: u64,
    /// How it turned out.
    pub outcome: Outcome,
}

/// `Cancel`: which task, and how (`force`: kill its worker).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelMsg {
    /// The task.
    pub target: CancelTarget,
    /// Kill the worker running it instead of interrupting it.
    pub force: bool,
}

/// The task a `Cancel` names.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelTarget {
    /// The task of result `id`, to the node that made the id (its owner).
    Result(ObjectId),
    /// Task `seq` of the sender, to the node it sent it to.
    Sent(u64),
}

/// `Pull`: bytes `[offset, offset + len)` of object `id`.
#[derive(Serialize, Deserialize, Debug)]
pub struct PullMsg {
    /// The object.
    pub id: ObjectId,
    /// The first byte.
    pub offset: u64,
    /// How many.
    pub len: u32,
}

/// `ActorNew`: create an actor of class `key` (its pickled class `blob`, named `class`).
#[derive(Serialize, Deserialize, Debug)]
pub struct ActorMsg {
    /// The class's key.
    pub key: Key,
    /// The pickled class.
    pub blob: Vec<u8>,
    /// The class's name.
    pub class: String,
    /// The actor's options.
    pub options: WireOptions,
    /// The constructor's arguments.
    pub args: Vec<Arg>,
}

/// The answer to `ActorNew`: the actor's id, or why it was not made.
pub type ActorMade = Result<ActorId, Failure>;

/// The answer to `Where`: pull from `node` that has the object, `round` pulls away from its
/// owner (0: the owner).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// The node.
    pub node: NodeId,
    /// Its distance from the owner, in pulls.
    pub round: u32,
}

/// `Pulled`: a pull of `id` from `source` ended, well or not.
#[derive(Serialize, Deserialize, Debug)]
pub struct PulledMsg {
    /// The object.
    pub id: ObjectId,
    /// The source `Where` named.
    pub source: NodeId,
    /// Whether the puller has a complete copy (it is then a source for others).
    pub ok: bool,
}

/// The answer to `BulkTicket`.
#[derive(Serialize, Deserialize, Debug)]
pub struct Ticket {
    /// What the stream must start with.
    pub ticket: [u8; 16],
    /// Where the exporter's bulk listener is.
    pub addr: std::net::SocketAddr,
    /// The object's length.
    pub len: u64,
}

/// `BenchRaw`, `BenchPull`: what to measure.
#[derive(Serialize, Deserialize, Debug)]
pub struct BenchAsk {
    /// The object (`BenchPull`).
    pub id: ObjectId,
    /// Bytes.
    pub len: u64,
    /// Pull over the fabric (else TCP).
    pub fabric: bool,
    /// Pull as a reader would, from the source the owner names (a broadcast tree).
    pub tree: bool,
}

/// The object id a request of `peer` names, or `None` after refusing the malformed request
/// (`what` it was) with a message.
pub(crate) fn object_id(peer: &Peer, id: u64, payload: &[u8], what: &str) -> Option<ObjectId> {
    let obj = postcard::from_bytes::<ObjectId>(payload).ok();
    if obj.is_none() {
        let _ = peer.refuse(id, &format!("a malformed {what}"));
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_number_and_is_found_by_it() {
        for m in Msg::ALL {
            assert_eq!(Msg::of(m.kind()), Some(m));
            assert!(m.kind().is_app());
        }
        let mut numbers: Vec<u16> = Msg::ALL.iter().map(|m| m.kind().0).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), Msg::ALL.len());
        assert_eq!(Msg::of(Kind(0x1FF)), None);
    }

    #[test]
    fn typed_ids_travel_as_the_integers_they_wrap() {
        let id = (7u128 << 96) | 42;
        assert_eq!(postcard::to_allocvec(&ObjectId(id)).unwrap(), postcard::to_allocvec(&id).unwrap());
        assert_eq!(postcard::to_allocvec(&ActorId(id)).unwrap(), postcard::to_allocvec(&id).unwrap());
        assert_eq!(postcard::to_allocvec(&NodeId(3)).unwrap(), postcard::to_allocvec(&3u64).unwrap());
        let m = PulledMsg { id: ObjectId(id), source: NodeId(3), ok: true };
        assert_eq!(postcard::to_allocvec(&m).unwrap(), postcard::to_allocvec(&(id, 3u64, true)).unwrap());
    }
}
