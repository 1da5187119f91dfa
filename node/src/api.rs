//! The one API every binding calls: tasks, actors, objects, cancel, names, resources, nodes
//! and the KV store, as the trait [`Api`].
//!
//! Its semantics are written once, in [`crate::service::Service`] (the node runtime's implementation, over
//! the core runtime, the worker pool, the actor registry and, in a cluster, the router).
//! Two carriers reach it:
//! - **in process**: a driver that embeds its node runtime (`ray.init()` with no cluster, C's
//!   `rayhpc_init` with no address) holds the [`crate::service::Service`] itself;
//! - **over a ring**: a worker process, or a driver attached to a node runtime, holds a
//!   [`crate::ring_client::RingClient`], which sends each call as a [`crate::wire::Call`] to the node's
//!   [`crate::server`], which makes the same call on the node's [`crate::service::Service`]. The client adds
//!   nothing but encoding: it has no semantics of its own.
//!
//! A binding holds an `Arc<dyn Api>` and never asks which carrier it has. Handles ([`Ref`],
//! [`ActorRef`]) name their object or actor the same way on both carriers; a handle of one
//! carrier given to another is refused ([`ErrorKind::Value`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rayhpc::ids::{ActorId, ObjectId};
use rayhpc::objstore::ClientView;
use rayhpc::raw::{RawActorHandle, RawClass, RawFn};

use crate::native::{ClassError, Misfit, NativeClass, Signature};

/// What names a Python function or class at the nodes (from its pickle).
pub type Key = [u8; 16];

/// The class key of native actors (they have no Python class).
pub const NATIVE_KEY: Key = [0; 16];
use rayhpc::{Error, ObjectRef, ObjectView, Options, Untyped};
use serde::{Deserialize, Serialize};

use crate::kv::{KvAnswer, KvOp};

/// What an API call returns.
pub type Result<T> = std::result::Result<T, Failure>;

/// How a call or an object failed, as every binding tells it apart (Python raises its
/// exception classes from it, C returns its status codes).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The task (or method) raised or returned an error.
    Task,
    /// The worker process running it died (after its retries).
    WorkerDied,
    /// The actor is dead (killed, its process lost for good, its constructor failed).
    ActorDied,
    /// The task was cancelled.
    Cancelled,
    /// `get` or `wait` ran out of time.
    Timeout,
    /// The runtime shut down (or the node went away).
    Shutdown,
    /// The object store refused (too large, full).
    Store,
    /// No such actor.
    NoActor,
    /// The object was lost with the node that held it.
    ObjectLost,
    /// A bad argument to the call (a bad option, a handle of another carrier...).
    Value,
    /// No such function, class or method (a `library:symbol` not there, a method its class
    /// does not have).
    Unknown,
    /// A call with another number of arguments than its method takes.
    ArgCount,
    /// Anything else (a protocol error, a failure of the system).
    System,
    /// A resource request the runtime can never satisfy (or a malformed one): the call
    /// was refused.
    Resources,
    /// An actor call lost its actor's process, which was restarted: the actor lives on,
    /// the call failed (Ray's `ActorUnavailableError`).
    ActorUnavailable,
    /// The actor name is held by a live actor (a bad argument, told apart: Ray raises
    /// `ActorAlreadyExistsError`, a `ValueError`).
    NameTaken,
}

impl ErrorKind {
    /// The kind's name as the Python package reads it (`rayhpc/exceptions.py`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Task => "task",
            ErrorKind::WorkerDied => "worker_died",
            ErrorKind::ActorDied => "actor_died",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Shutdown => "shutdown",
            ErrorKind::Store => "store",
            ErrorKind::NoActor => "no_actor",
            ErrorKind::ObjectLost => "object_lost",
            ErrorKind::Value => "value",
            ErrorKind::Unknown => "unknown",
            ErrorKind::ArgCount => "arg_count",
            ErrorKind::System => "system",
            ErrorKind::Resources => "resources",
            ErrorKind::NameTaken => "name_taken",
            ErrorKind::ActorUnavailable => "actor_unavailable",
        }
    }
}

/// A failed call or object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The function that failed (empty when the failure is not a task's).
    pub function: String,
    /// What happened.
    pub message: String,
    /// The binding's own form of the error (Python: the pickled exception), if any.
    pub payload: Option<Vec<u8>>,
    /// Attempts made.
    pub attempts: u32,
}

impl Failure {
    /// A failure of `kind` that is not a task's.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Failure {
        Failure { kind, function: String::new(), message: message.into(), payload: None, attempts: 0 }
    }

    /// The failure of `e`, the error of an object made by a task (`from_actor`: by an actor
    /// call, whose lost process reads as the actor's death).
    pub fn of(e: Error, from_actor: bool) -> Failure {
        use rayhpc::FailureKind as F;
        let plain = |kind, e: &Error| Failure::new(kind, e.to_string());
        match e {
            Error::Task(t) => Failure {
                kind: match t.kind {
                    // A lost process of an actor that lives on (the call was not retried).
                    F::WorkerDied if from_actor => ErrorKind::ActorUnavailable,
                    F::WorkerDied => ErrorKind::WorkerDied,
                    F::ActorDied => ErrorKind::ActorDied,
                    F::Cancelled => ErrorKind::Cancelled,
                    _ => ErrorKind::Task,
                },
                function: t.function.to_string(),
                message: t.message.clone(),
                payload: t.payload.as_deref().map(<[u8]>::to_vec),
                attempts: t.attempts,
            },
            e @ Error::ActorDied { .. } => plain(ErrorKind::ActorDied, &e),
            e @ Error::Timeout(_) => plain(ErrorKind::Timeout, &e),
            e @ Error::Shutdown => plain(ErrorKind::Shutdown, &e),
            e @ (Error::ObjectTooLarge { .. } | Error::StoreFull { .. }) => plain(ErrorKind::Store, &e),
            e @ Error::NoSuchActor(_) => plain(ErrorKind::NoActor, &e),
            e @ Error::ObjectLost(_) => plain(ErrorKind::ObjectLost, &e),
            e @ Error::Resources(_) => plain(ErrorKind::Resources, &e),
            e @ Error::NameTaken(_) => plain(ErrorKind::NameTaken, &e),
            e @ Error::Invalid(_) => plain(ErrorKind::Value, &e),
            e => plain(ErrorKind::System, &e),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::of(e, false)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.function.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "task '{}' failed: {}", self.function, self.message)
        }
    }
}

impl std::error::Error for Failure {}

/// A task's or actor's options as a binding gives them (and as they travel).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct WireOptions {
    /// The function's name (tasks; shown in errors).
    pub name: String,
    /// CPUs (default 1 for tasks, 0 for actors).
    pub num_cpus: Option<f64>,
    /// GPUs.
    pub num_gpus: Option<f64>,
    /// Custom resources, sorted by name.
    pub resources: Vec<(String, f64)>,
    /// Retries after a system failure (Ray's `max_retries`).
    pub max_retries: Option<i32>,
    /// Retry application errors too.
    pub retry_exceptions: Option<bool>,
    /// Restarts of an actor's process (Ray's `max_restarts`).
    pub max_restarts: Option<i32>,
    /// Retries of an actor call whose process died (Ray's `max_task_retries`).
    pub max_task_retries: Option<i32>,
    /// An actor's name (None: anonymous).
    pub actor_name: Option<String>,
}

/// [`WireOptions`] with the core's options made from them once (a binding builds one per
/// function or `.options()` call and reuses it for every submit).
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// As given.
    pub wire: WireOptions,
    /// The core's options of a task.
    pub task: Options,
    /// The core's options of an actor.
    pub actor: Options,
}

impl CallOptions {
    /// Options `w`.
    pub fn new(w: WireOptions) -> CallOptions {
        CallOptions { task: core_options(&w, false), actor: core_options(&w, true), wire: w }
    }
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions::new(WireOptions::default())
    }
}

/// Options as the core takes them: a task's are named by its function, an actor's by its
/// registered name (anonymous without one).
pub(crate) fn core_options(w: &WireOptions, actor: bool) -> Options {
    let mut o = Options::new();
    if !actor && !w.name.is_empty() {
        o = o.name(&w.name);
    }
    if let Some(n) = w.num_cpus {
        o = o.num_cpus(n);
    }
    if let Some(n) = w.num_gpus {
        o = o.num_gpus(n);
    }
    for (k, v) in &w.resources {
        o = o.resource(k, *v);
    }
    if let Some(n) = w.max_retries {
        o = o.max_retries(n);
    }
    if let Some(b) = w.retry_exceptions {
        o = o.retry_exceptions(b);
    }
    match &w.actor_name {
        Some(n) if actor => o.name(n),
        _ => o,
    }
}

/// The function a task runs.
#[derive(Clone)]
pub enum Func {
    /// A Python function, by the key it was defined under ([`Api::define`]).
    Python(Key),
    /// A native C-ABI function `library:symbol`, which the node that runs it loads.
    Native(String),
    /// A function registered in this very process (in-process carrier only: another
    /// process cannot run it).
    Raw(RawFn),
}

/// The class of an actor.
#[derive(Clone, Debug)]
pub enum Class {
    /// A Python class, by the key it was defined under ([`Api::define`] with a class name).
    Python(Key),
    /// A native C-ABI class `library:symbol` (a `rayhpc_class_def`), which the node that
    /// runs the actor loads.
    Native(String),
    /// A native class registered in this very process (in-process carrier only: another
    /// process cannot run it).
    Registered(Arc<NativeClass>),
}

impl From<ClassError> for Failure {
    fn from(e: ClassError) -> Failure {
        let kind = if matches!(e, ClassError::Missing(_)) { ErrorKind::Unknown } else { ErrorKind::Value };
        Failure::new(kind, e.to_string())
    }
}

impl From<Misfit> for Failure {
    fn from(m: Misfit) -> Failure {
        let kind = if matches!(m, Misfit::NoMethod(_)) { ErrorKind::Unknown } else { ErrorKind::ArgCount };
        Failure::new(kind, m.message())
    }
}

/// An object handle. Cloning it is cheap; the object lives while a handle (or a task that
/// needs it) does. Two words: a binding keeps many in its tables.
#[derive(Clone)]
pub struct Ref {
    pub(crate) inner: RefInner,
}

/// The handle, and whether an actor call made it (a lost process then reads as the actor's
/// death). A full word of tag (`repr(u64)`): the handle is written and read as two words,
/// which a submit's path does a few times.
#[derive(Clone)]
#[repr(u64)]
pub(crate) enum RefInner {
    /// The runtime's own handle (in-process carrier).
    Local(ObjectRef<Untyped>),
    /// The same, made by an actor call.
    LocalOfActor(ObjectRef<Untyped>),
    /// An object held for this process by the node at the other end of a ring.
    Remote(Arc<RemoteRef>),
    /// The same, made by an actor call.
    RemoteOfActor(Arc<RemoteRef>),
}

const _: () = assert!(std::mem::size_of::<Ref>() == 2 * std::mem::size_of::<usize>());

/// A ref held at the node for this process: let go (told with the next request) on drop.
pub(crate) struct RemoteRef {
    pub(crate) id: ObjectId,
    pub(crate) released: Arc<Released>,
}

impl Drop for RemoteRef {
    fn drop(&mut self) {
        lock(&self.released.objects).push(self.id);
    }
}

/// What a ring client's handles let go of since its last request.
#[derive(Default)]
pub(crate) struct Released {
    pub(crate) objects: Mutex<Vec<ObjectId>>,
    pub(crate) actors: Mutex<Vec<ActorId>>,
}

impl Released {
    pub(crate) fn take(&self) -> (Vec<ObjectId>, Vec<ActorId>) {
        (std::mem::take(&mut *lock(&self.objects)), std::mem::take(&mut *lock(&self.actors)))
    }
}

impl Ref {
    /// A handle of the in-process carrier.
    pub fn local(r: ObjectRef<Untyped>, actor: bool) -> Ref {
        Ref { inner: if actor { RefInner::LocalOfActor(r) } else { RefInner::Local(r) } }
    }

    pub(crate) fn remote(id: ObjectId, actor: bool, released: &Arc<Released>) -> Ref {
        let r = Arc::new(RemoteRef { id, released: released.clone() });
        Ref { inner: if actor { RefInner::RemoteOfActor(r) } else { RefInner::Remote(r) } }
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        match &self.inner {
            RefInner::Local(r) | RefInner::LocalOfActor(r) => r.id(),
            RefInner::Remote(r) | RefInner::RemoteOfActor(r) => r.id,
        }
    }

    /// Whether an actor call made it.
    pub fn from_actor(&self) -> bool {
        matches!(self.inner, RefInner::LocalOfActor(_) | RefInner::RemoteOfActor(_))
    }

    /// The same handle, made by an actor call when `actor` (or when it was already).
    pub(crate) fn or_from_actor(self, actor: bool) -> Ref {
        let inner = match self.inner {
            RefInner::Local(r) if actor => RefInner::LocalOfActor(r),
            RefInner::Remote(r) if actor => RefInner::RemoteOfActor(r),
            inner => inner,
        };
        Ref { inner }
    }

    /// Whether the object is known to be ready without asking the API: a handle of the
    /// in-process carrier whose object is computed (or failed). False means "ask"
    /// ([`Api::wait`]), not "not ready".
    #[inline]
    pub fn is_ready_here(&self) -> bool {
        match &self.inner {
            RefInner::Local(r) | RefInner::LocalOfActor(r) => r.is_ready(),
            RefInner::Remote(_) | RefInner::RemoteOfActor(_) => false,
        }
    }

    /// Calls `f` with the object's bytes when this handle has them at hand: an in-process
    /// handle whose object is computed and small enough to be kept out of the store. `None`
    /// otherwise (then [`Api::get`] is the way); `Some(Err)` when the object failed. A
    /// binding's fast path for small results: no value made, no reference count taken,
    /// nothing waited for.
    #[inline]
    pub fn with_ready_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Option<Result<R>> {
        match &self.inner {
            RefInner::Local(r) | RefInner::LocalOfActor(r) => {
                r.with_inline_bytes(f).map(|v| v.map_err(|e| Failure::of(e, self.from_actor())))
            }
            RefInner::Remote(_) | RefInner::RemoteOfActor(_) => None,
        }
    }

    /// The runtime's handle (in-process carrier), taken out of this one.
    ///
    /// # Errors
    /// A handle of a ring client.
    pub fn into_local(self) -> Result<ObjectRef<Untyped>> {
        match self.inner {
            RefInner::Local(r) | RefInner::LocalOfActor(r) => Ok(r),
            RefInner::Remote(_) | RefInner::RemoteOfActor(_) => Err(foreign("ObjectRef")),
        }
    }

    /// The runtime's handle (in-process carrier).
    ///
    /// # Errors
    /// A handle of a ring client.
    pub fn as_local(&self) -> Result<&ObjectRef<Untyped>> {
        match &self.inner {
            RefInner::Local(r) | RefInner::LocalOfActor(r) => Ok(r),
            RefInner::Remote(_) | RefInner::RemoteOfActor(_) => Err(foreign("ObjectRef")),
        }
    }
}

impl std::fmt::Debug for Ref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ref({:032x})", self.id().0)
    }
}

pub(crate) fn foreign(what: &str) -> Failure {
    Failure::new(ErrorKind::Value, format!("an {what} of another runtime or attachment"))
}

/// An actor handle. While a handle lives, so does an actor that no name or value holds.
#[derive(Clone)]
pub struct ActorRef {
    pub(crate) id: ActorId,
    /// The key of its class (Python: what the handle's methods come from).
    pub(crate) key: Key,
    /// A native class's methods (unknown for a Python class): calls are checked against
    /// them before they are made.
    pub(crate) methods: Option<Arc<Signature>>,
    pub(crate) inner: ActorInner,
}

#[derive(Clone)]
pub(crate) enum ActorInner {
    /// The runtime's own handle (an actor of this node), and its class when the handle was
    /// made with it (a native class's: calls need not look it up).
    Local(RawActorHandle, Option<Arc<RawClass>>),
    /// Reached by id: an actor of another node, or one this handle does not keep alive.
    ById,
    /// Held for this process by the node at the other end of a ring (kept for its `Drop`,
    /// which tells the node).
    #[allow(dead_code)]
    Remote(Arc<RemoteActor>),
}

pub(crate) struct RemoteActor {
    pub(crate) id: ActorId,
    pub(crate) released: Arc<Released>,
}

impl Drop for RemoteActor {
    fn drop(&mut self) {
        lock(&self.released.actors).push(self.id);
    }
}

impl ActorRef {
    /// A handle of the in-process carrier.
    pub fn local(h: RawActorHandle, key: Key) -> ActorRef {
        ActorRef { id: h.id(), key, methods: None, inner: ActorInner::Local(h, None) }
    }

    /// A handle of the in-process carrier to an actor of native class `class`.
    pub fn native(h: RawActorHandle, class: &NativeClass) -> ActorRef {
        ActorRef {
            id: h.id(),
            key: NATIVE_KEY,
            methods: Some(class.signature().clone()),
            inner: ActorInner::Local(h, Some(class.raw().clone())),
        }
    }

    /// A handle that reaches its actor by id only.
    pub fn by_id(id: ActorId, key: Key) -> ActorRef {
        ActorRef { id, key, methods: None, inner: ActorInner::ById }
    }

    pub(crate) fn remote(id: ActorId, key: Key, released: &Arc<Released>) -> ActorRef {
        ActorRef { id, key, methods: None, inner: ActorInner::Remote(Arc::new(RemoteActor { id, released: released.clone() })) }
    }

    /// The same handle, knowing its class's methods (a native class's).
    pub fn with_methods(mut self, methods: Option<Arc<Signature>>) -> ActorRef {
        self.methods = methods;
        self
    }

    /// Its class's methods, when known (a native class's).
    pub fn methods(&self) -> Option<&Arc<Signature>> {
        self.methods.as_ref()
    }

    /// Whether a call of `method` with `nargs` arguments fits the actor's class, as far as
    /// the handle knows it (a Python class's methods are not known: any call goes).
    ///
    /// # Errors
    /// No such method ([`ErrorKind::Unknown`]) or another number of arguments
    /// ([`ErrorKind::ArgCount`]).
    pub fn check_call(&self, method: &str, nargs: usize) -> Result<()> {
        match &self.methods {
            Some(m) => m.check(method, nargs).map_err(Failure::from),
            None => Ok(()),
        }
    }

    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.id
    }

    /// Its class's key.
    pub fn class_key(&self) -> Key {
        self.key
    }

    /// The runtime's handle, when it is an actor of this node held by this handle.
    pub fn local_handle(&self) -> Option<&RawActorHandle> {
        match &self.inner {
            ActorInner::Local(h, _) => Some(h),
            _ => None,
        }
    }

    /// The runtime's handle and the actor's class, when the handle was made with it.
    pub(crate) fn local_class(&self) -> Option<(&RawActorHandle, &Arc<RawClass>)> {
        match &self.inner {
            ActorInner::Local(h, Some(c)) => Some((h, c)),
            _ => None,
        }
    }
}

/// An argument of a call.
#[derive(Debug)]
pub enum Arg {
    /// A value's bytes (Python: pickled).
    Bytes(Vec<u8>),
    /// An object, resolved before the call runs (its bytes are the argument).
    Ref(Ref),
}

/// An object's bytes as `get` hands them out: read in place when the object lives in the
/// node's store (zero-copy, pinned while the value lives), else owned.
pub enum Value {
    /// The runtime's view (in-process carrier).
    View(ObjectView),
    /// Bytes of the node's store, mapped by this process (ring carrier).
    Mapped(ClientView<'static>),
    /// Bytes that came in a message.
    Bytes(Vec<u8>),
}

impl Value {
    /// Whether the bytes are read in place from the store.
    pub fn is_stored(&self) -> bool {
        match self {
            Value::View(v) => v.is_stored(),
            Value::Mapped(_) => true,
            Value::Bytes(_) => false,
        }
    }
}

impl std::ops::Deref for Value {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Value::View(v) => v,
            Value::Mapped(v) => v,
            Value::Bytes(b) => b,
        }
    }
}

/// What a call is, as the code it runs sees it (Ray's runtime context).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct CallContext {
    /// The task: its result object, whose id names it (`None` in an actor method and
    /// outside a task).
    pub task: Option<ObjectId>,
    /// The actor whose method runs.
    pub actor: Option<ActorId>,
    /// That actor's name, when it has one.
    pub actor_name: Option<String>,
    /// Whether that actor's process was restarted.
    pub actor_restarted: bool,
    /// The resources the call holds, by name: a task's request, an actor's for its life.
    pub resources: Vec<(String, f64)>,
}

/// A resource of the node (or, in a cluster, summed over the cluster).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ResourceInfo {
    /// Its name (`CPU`, `GPU`, custom).
    pub name: String,
    /// How much there is.
    pub total: f64,
    /// How much is free now.
    pub available: f64,
}

/// A node as `ray.nodes()` shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct NodeInfo {
    /// Its rank in the launch.
    pub rank: u32,
    /// Whether it is up.
    pub alive: bool,
    /// Its transport address's IP.
    pub address: String,
    /// Its host name.
    pub host: String,
    /// (name, total) of each resource.
    pub resources: Vec<(String, f64)>,
}

/// Fills a new object's buffer (exactly its length); an `Err` aborts the `put`.
pub type Fill<'a> = &'a mut dyn FnMut(&mut [u8]) -> std::result::Result<(), String>;

/// Ray Core's API, implemented once ([`crate::service::Service`]) and carried in process or over a ring
/// ([`crate::ring_client::RingClient`]). Every call may block (a `get`, a round trip to the node); none holds a
/// lock of the caller's while it does.
pub trait Api: Send + Sync {
    /// Registers a pickled function (or, with `class_name`, class) under `key`, once.
    fn define(&self, key: Key, blob: &[u8], class_name: Option<&str>) -> Result<()>;

    /// Submits a task of `f`: its ref at once. (Python: `args` are the call's layout, then
    /// one pickled value or ref per argument.)
    fn submit(&self, f: &Func, args: Vec<Arg>, options: &CallOptions) -> Result<Ref>;

    /// Checks a submit of `f` (with `options`, when given) as far as it can be checked
    /// without making it: a function this carrier cannot run (one registered in this
    /// process, over a ring; a `library:symbol` that does not load, in process), options the
    /// runtime can never satisfy (in process, where the task would run). What passes may
    /// still fail at the submit (the node decides). A binding checks a function it hands
    /// out a handle of, and each call of a batch before it submits any.
    fn check_submit(&self, f: &Func, options: Option<&CallOptions>) -> Result<()> {
        let _ = (f, options);
        Ok(())
    }

    /// Creates an actor of class `class` (a Python class defined with a class name, a native
    /// `library:symbol` class, or one registered in this process).
    fn create_actor(&self, class: &Class, args: Vec<Arg>, options: &CallOptions) -> Result<ActorRef>;

    /// Calls `method` of `actor`; calls of one actor run in submission order. A call that
    /// does not fit the methods the handle knows (a native class's) is refused at once
    /// ([`ActorRef::check_call`]).
    fn call_actor(&self, actor: &ActorRef, method: &str, args: Vec<Arg>) -> Result<Ref>;

    /// Kills `actor`: a call running now ends, later ones fail with [`ErrorKind::ActorDied`].
    /// With `no_restart` false (Ray's `kill(no_restart=False)`), only its process ends: the
    /// actor restarts while its `max_restarts` allows (a native actor, which has no process
    /// of its own, is killed).
    fn kill(&self, actor: &ActorRef, no_restart: bool) -> Result<()>;

    /// The names of the live named actors, anywhere in the cluster, sorted.
    fn actor_names(&self) -> Result<Vec<String>>;

    /// The live actor named `name`, anywhere in the cluster.
    fn get_actor(&self, name: &str) -> Result<ActorRef>;

    /// Stores a new object of `len` bytes, written by `fill` (straight into the store when
    /// large).
    fn put(&self, len: usize, fill: Fill<'_>) -> Result<Ref>;

    /// Reads objects, in order, waiting at most `timeout` in all (forever with `None`): one
    /// value or failure per ref. The call itself fails only when it cannot be made at all
    /// (the node is gone).
    fn get(&self, refs: &[Ref], timeout: Option<Duration>) -> Result<Vec<Result<Value>>>;

    /// Reads one object as [`Api::get`] does and calls `f` with its bytes, in place; nothing
    /// is kept once `f` returns (a binding copying a value out makes no value to hold).
    fn read(&self, r: &Ref, timeout: Option<Duration>, f: &mut dyn FnMut(&[u8])) -> Result<()> {
        let v = self.get(std::slice::from_ref(r), timeout)?.pop();
        f(&v.ok_or_else(|| Failure::new(ErrorKind::System, "no value for the object"))??);
        Ok(())
    }

    /// Waits until `num_returns` of `refs` are ready or `timeout` passes; the indices of the
    /// ready ones, in order.
    fn wait(&self, refs: &[Ref], num_returns: usize, timeout: Option<Duration>) -> Result<Vec<u32>>;

    /// Cancels the task of `r`: not started, it fails as cancelled when it would start;
    /// running, it is interrupted (`force`: its worker is killed). Done: nothing happens.
    fn cancel(&self, r: &Ref, force: bool) -> Result<()>;

    /// The `n` objects of a result of several returns.
    fn items(&self, r: &Ref, n: u32) -> Result<Vec<Ref>>;

    /// Keeps the object of `r` alive while its id travels inside a value (until shutdown).
    fn escape(&self, r: &Ref) -> Result<()>;

    /// The handle of object `id`, whose ref travelled inside a value.
    fn ref_from_id(&self, id: ObjectId, from_actor: bool) -> Result<Ref>;

    /// Keeps `actor` alive while its handle travels inside a value (until kill or shutdown).
    fn escape_actor(&self, actor: &ActorRef) -> Result<()>;

    /// The handle of actor `id` (class `key`), whose handle travelled inside a value.
    fn actor_from_id(&self, id: ActorId, key: Key) -> Result<ActorRef>;

    /// The resources of the node, or of the cluster when it is part of one.
    fn resources(&self) -> Result<Vec<ResourceInfo>>;

    /// The nodes of the cluster (this node alone outside one).
    fn nodes(&self) -> Result<Vec<NodeInfo>>;

    /// An operation on the KV store (the cluster's). A watch waits for a change.
    fn kv(&self, op: KvOp) -> Result<KvAnswer>;

    /// What the call the caller runs in is: a worker's task or actor method (over a ring,
    /// the node answers on the thread that runs the call); nothing for a driver.
    fn context(&self) -> Result<CallContext>;
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A timeout in seconds as a binding gives it (`None`: forever; negative: zero).
///
/// # Errors
/// NaN or infinite-but-negative nonsense.
pub fn timeout_secs(t: Option<f64>) -> Result<Option<Duration>> {
    match t {
        None => Ok(None),
        Some(t) if t.is_nan() => Err(Failure::new(ErrorKind::Value, "a timeout is a number of seconds, not NaN")),
        Some(t) if t.is_infinite() && t > 0.0 => Ok(None),
        Some(t) => Ok(Some(Duration::from_secs_f64(t.max(0.0)))),
    }
}

impl Failure {
    /// The runtime's error this failure stands for (a failure reported by another node,
    /// made the result of a local promise).
    pub fn into_error(self) -> Error {
        use rayhpc::FailureKind as F;
        let task = |kind| {
            Error::Task(Box::new(rayhpc::TaskError {
                function: self.function.clone().into(),
                kind,
                message: self.message.clone(),
                attempts: self.attempts,
                payload: self.payload.clone().map(Into::into),
            }))
        };
        match self.kind {
            ErrorKind::Task => task(F::Error),
            ErrorKind::WorkerDied | ErrorKind::ActorUnavailable => task(F::WorkerDied),
            ErrorKind::ActorDied => task(F::ActorDied),
            ErrorKind::Cancelled => task(F::Cancelled),
            ErrorKind::ObjectLost => Error::ObjectLost(self.message),
            ErrorKind::Shutdown => Error::Shutdown,
            ErrorKind::NoActor => Error::NoSuchActor(self.message),
            _ => Error::Invalid(self.message),
        }
    }
}
