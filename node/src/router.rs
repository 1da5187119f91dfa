//! The hook through which a node in a cluster sends work to other nodes: the node's
//! [`crate::service::Service`] asks its [`Router`] (the cluster layer) before it runs a task or
//! creates an actor here, and for what only the cluster knows (names, nodes, the KV store,
//! objects and actors of other nodes). Outside a cluster there is none.

use rayhpc::ids::{ActorId, ObjectId};
use rayhpc::raw::RawArg;
use rayhpc::{Error, ObjectRef, Untyped};

use crate::api::{NodeInfo, ResourceInfo, WireOptions};
use crate::kv::{KvAnswer, KvOp};
use crate::wire::Key;

/// The function of a task that may run on another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskFn {
    /// A Python function by key (its pickled body is defined at the node); the task's first
    /// argument is the key's bytes, as `py.task` takes them.
    Python(Key),
    /// A native `library:symbol` function, which every node loads itself.
    Native(String),
    /// A method of an actor that lives on another node (the call goes to that node).
    Method {
        /// The actor's id.
        actor: ActorId,
        /// The method's name.
        method: String,
    },
}

/// Runs a task on this node (what a router falls back to).
pub type Here<'a, T> = &'a dyn Fn(Vec<RawArg>) -> Result<T, Error>;

/// Decides whether work runs on this node or another (the cluster layer).
pub trait Router: Send + Sync {
    /// Runs a task of `func` on some node and returns its ref; `here` runs it on this one.
    ///
    /// # Errors
    /// The task cannot be submitted at all.
    fn route(
        &self,
        func: TaskFn,
        args: Vec<RawArg>,
        options: &WireOptions,
        here: Here<'_, ObjectRef<Untyped>>,
    ) -> Result<ObjectRef<Untyped>, Error>;

    /// Creates an actor of class `key` on the node that has what `options` ask for: its id;
    /// `here` creates it on this node.
    ///
    /// # Errors
    /// The actor cannot be created.
    fn create_actor(&self, key: Key, options: &WireOptions, args: Vec<RawArg>, here: Here<'_, ActorId>) -> Result<ActorId, Error>;

    /// Kills actor `actor` if it lives on another node; false when it would live here.
    fn kill_actor(&self, actor: ActorId) -> bool;

    /// Records `name` for actor `actor` (of class `key`) cluster-wide.
    ///
    /// # Errors
    /// The name is taken by a live actor elsewhere ([`Error::NameTaken`]).
    fn name_actor(&self, name: &str, actor: ActorId, key: Key) -> Result<(), Error>;

    /// The actor named `name` anywhere in the cluster: its id and class key.
    fn lookup_actor(&self, name: &str) -> Option<(ActorId, Key)>;

    /// The names of the live named actors of the cluster, sorted.
    fn actor_names(&self) -> Vec<String>;

    /// Frees `name` cluster-wide (its actor `actor` was killed or died). Waits for the head
    /// (a round trip from a member): not for threads that must not block.
    fn forget_actor(&self, name: &str, actor: ActorId);

    /// The nodes of the cluster.
    fn nodes(&self) -> Vec<NodeInfo>;

    /// The cluster's resources (summed over its nodes).
    fn resources(&self) -> Vec<ResourceInfo>;

    /// The object `id` if another node of the cluster made it (ids name their node): a ref
    /// completed when it is fetched from there, or failed with `ObjectLost` if that node is
    /// gone; `None` when it would be this node's.
    fn fetch(&self, id: ObjectId) -> Option<ObjectRef<Untyped>>;

    /// Calls `method` on actor `actor` if it lives on another node of the cluster (its id
    /// names the node that made it); `None` when it would live here.
    fn actor_call(&self, actor: ActorId, method: &str, args: Vec<RawArg>) -> Option<Result<ObjectRef<Untyped>, Error>>;

    /// Cancels the task of result `id` if this node sent it to another node (or holds it
    /// until its arguments are ready to send), or if another node made `id` (the cancel
    /// goes there); false when the task is this node's to cancel.
    fn cancel(&self, id: ObjectId, force: bool) -> bool;

    /// Runs `op` on the cluster's KV store (the head's).
    ///
    /// # Errors
    /// The head is out of reach or refuses.
    fn kv(&self, op: KvOp) -> Result<KvAnswer, Error>;
}
