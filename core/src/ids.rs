//! Identifiers. Everything that crosses a thread, a process or a node is named by a stable id,
//! never by a pointer: functions and actor classes by a hash of their registered name, tasks
//! and objects by who created them and a sequence number.
//!
//! Layout of a [`TaskId`] (128 bits): `node: u32 | worker: u32 | seq: u64`, with `seq` below
//! 2^48 (at ten million tasks a second per creator that lasts 325 days). An [`ObjectId`] is
//! `node: u32 | worker: u32 | seq: 48 | index: 16`: the producing task and a return index
//! (0 is its first return). A `put` is a pseudo task of its own with one return.

use std::fmt;

macro_rules! define_id {
    ($(#[$m:meta])* $name:ident($inner:ty)) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub struct $name(pub $inner);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:x})"), self.0)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:x}", self.0)
            }
        }
    };
}

define_id!(
    /// A registered function, by the FNV-1a hash of its name.
    FunctionId(u64)
);
define_id!(
    /// A task: `node | worker | seq`.
    TaskId(u128)
);
define_id!(
    /// An object: the producing task and a return index.
    ObjectId(u128)
);
define_id!(
    /// An actor, named by the id of its creation task.
    ActorId(u128)
);

/// FNV-1a, 64 bits: stable across processes, builds and platforms (unlike `std`'s hasher).
pub const fn stable_hash(s: &str) -> u64 {
    let b = s.as_bytes();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < b.len() {
        h ^= b[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

impl FunctionId {
    /// The id of the function registered as `name`.
    pub const fn of(name: &str) -> Self {
        FunctionId(stable_hash(name))
    }
}

impl TaskId {
    /// Builds an id from its parts.
    pub const fn new(node: u32, worker: u32, seq: u64) -> Self {
        TaskId(((node as u128) << 96) | ((worker as u128) << 64) | seq as u128)
    }
    /// The node that created the task.
    pub const fn node(self) -> u32 {
        (self.0 >> 96) as u32
    }
    /// The worker (or driver) of that node that created it.
    pub const fn worker(self) -> u32 {
        (self.0 >> 64) as u32
    }
    /// Sequence number within the creator.
    pub const fn seq(self) -> u64 {
        self.0 as u64
    }
    /// The object of return `index` of this task.
    pub const fn object(self, index: u16) -> ObjectId {
        let high = self.0 & (!0u128 << 64);
        ObjectId(high | ((self.seq() as u128 & SEQ_MASK) << 16) | index as u128)
    }
}

/// Sequence numbers are below 2^48.
pub const SEQ_MASK: u128 = (1 << 48) - 1;

impl ObjectId {
    /// The return index of this object within its task.
    pub const fn index(self) -> u16 {
        self.0 as u16
    }
    /// The task that produces this object.
    pub const fn task(self) -> TaskId {
        TaskId((self.0 & (!0u128 << 64)) | ((self.0 >> 16) & SEQ_MASK))
    }
    /// The node whose worker created the task that produces this object.
    pub const fn node(self) -> u32 {
        (self.0 >> 96) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_ids_are_stable_hashes() {
        // FNV-1a test vectors.
        assert_eq!(stable_hash(""), 0xcbf29ce484222325);
        assert_eq!(stable_hash("a"), 0xaf63dc4c8601ec8c);
        assert_eq!(FunctionId::of("add"), FunctionId::of("add"));
        assert_ne!(FunctionId::of("add"), FunctionId::of("sub"));
    }

    #[test]
    fn task_id_parts_round_trip_and_objects_differ_by_index() {
        let t = TaskId::new(7, 3, 42);
        assert_eq!((t.node(), t.worker(), t.seq()), (7, 3, 42));
        assert_ne!(t.object(0), t.object(1));
        assert_eq!(t.object(5).index(), 5);
        assert_eq!(t.object(0).node(), 7);
        assert_eq!(t.object(9).task(), t);
        assert_ne!(TaskId::new(7, 3, 43).object(0), t.object(0));
        assert_ne!(TaskId::new(7, 4, 42).object(0), t.object(0));
    }
}
