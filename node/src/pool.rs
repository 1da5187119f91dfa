//! The node runtime's Python worker processes: started on demand (as many as tasks run at
//! once, which the scheduler bounds by the CPUs), reused, each attached by a ring channel;
//! and one dedicated worker process per actor.
//!
//! A Python task is a raw function of the core runtime (`py.task`) whose body runs on an
//! executor thread: it takes an idle worker (or starts one), sends it the function once and
//! then the call, and waits for the answer. The executor holds the task's resources the whole
//! time, so the scheduler's admission bounds the Python workers too. A worker that dies
//! mid-call (os._exit, SIGKILL, a crash) is noticed while waiting, discarded, and the call
//! fails as `WorkerDied`, which the core retries under `max_retries`.
//!
//! A Python actor is a raw actor of the core runtime whose state ([`PyActor`]) owns a worker
//! process: the core runs its calls one at a time in submission order, each a round trip on
//! that worker's channel. A process that dies is restarted (class sent again, constructor run
//! again) while `max_restarts` allows, and the call it was running is retried while
//! `max_task_retries` allows; after that the actor is dead.
//!
//! While a call runs, its worker may send requests (nested tasks, actor calls, `get`…): the
//! executor waiting for the answer serves them ([`Pool::serve`]). Refs handed to a worker are
//! kept in that worker's table until it says it dropped them, or dies.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use rayhpc::ids::{ActorId, ObjectId};
use rayhpc::objstore::fdpass;
use rayhpc::objstore::ring::{Channel, Consumer, Producer, RingError};
use rayhpc::objstore::Object;
use rayhpc::raw::{
    current_task, raw_actor, raw_actor_by_id, stored_inputs, RawActor, RawActorHandle, RawArg, RawClass, RawFailure, RawFn, RawOutput,
    RawState,
};
use rayhpc::{Error, FailureKind, ObjectRef, ObjectView, Options, Runtime, Untyped};

use crate::kv::{KvAnswer, KvOp, LocalKv};
use crate::wire::{self, Call, Envelope, Key, Reply, Response, WireArg, WireFailure, WireOptions};

/// Bytes of each ring of a worker's channel (pages are faulted only as used).
const RING: usize = 32 << 20;

/// How long a waiting executor spins on the ring before it lets another thread take over its
/// other work (most calls answer well within this).
const SPIN: Duration = Duration::from_micros(200);

/// How workers are started.
pub struct WorkerConfig {
    /// The Python interpreter (the driver's own `sys.executable`).
    pub python: PathBuf,
    /// The driver's `sys.path`, so that a worker imports what the driver imports.
    pub sys_path: String,
}

/// The function of a task that may run on another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskFn {
    /// A Python function by key (its pickled body is in the pool); the task's first
    /// argument is the key's bytes, as `py.task` takes them.
    Python(Key),
    /// A native `library:symbol` function, which every node loads itself.
    Native(String),
    /// A method of an actor that lives on another node (the call goes to that node).
    Method {
        /// The actor's id.
        actor: u128,
        /// The method's name.
        method: String,
    },
}

/// Decides whether a task runs on this node or another (the cluster layer).
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
        here: &dyn Fn(Vec<RawArg>) -> Result<ObjectRef<Untyped>, Error>,
    ) -> Result<ObjectRef<Untyped>, Error>;

    /// Creates an actor of class `key` on the node that has what `options` ask for: its id;
    /// `here` creates it on this node.
    ///
    /// # Errors
    /// The actor cannot be created.
    fn create_actor(
        &self,
        key: Key,
        options: &WireOptions,
        args: Vec<RawArg>,
        here: &dyn Fn(Vec<RawArg>) -> Result<u128, Error>,
    ) -> Result<u128, Error>;

    /// Kills actor `actor` if it lives on another node; false when it would live here.
    fn kill_actor(&self, actor: u128) -> bool;

    /// Records `name` for actor `actor` (of class `key`) cluster-wide.
    ///
    /// # Errors
    /// The name is taken by a live actor elsewhere ([`Error::NameTaken`]).
    fn name_actor(&self, name: &str, actor: u128, key: Key) -> Result<(), Error>;

    /// The actor named `name` anywhere in the cluster: its id and class key.
    fn lookup_actor(&self, name: &str) -> Option<(u128, Key)>;

    /// Frees `name` cluster-wide (its actor `actor` was killed or died). Waits for the head
    /// (a round trip from a member): not for threads that must not block.
    fn forget_actor(&self, name: &str, actor: u128);

    /// The nodes of the cluster.
    fn nodes(&self) -> Vec<crate::wire::WireNode>;

    /// The object `id` if another node of the cluster made it (ids name their node): a ref
    /// completed when it is fetched from there, or failed with `ObjectLost` if that node is
    /// gone; `None` when it would be this node's.
    fn fetch(&self, id: u128) -> Option<ObjectRef<Untyped>>;

    /// Calls `method` on actor `actor` if it lives on another node of the cluster (its id
    /// names the node that made it); `None` when it would live here.
    fn actor_call(&self, actor: u128, method: &str, args: Vec<RawArg>) -> Option<Result<ObjectRef<Untyped>, Error>>;

    /// Runs `op` on the cluster's KV store (the head's); `None` to use this node's own.
    fn kv(&self, op: KvOp) -> Option<Result<KvAnswer, Error>> {
        let _ = op;
        None
    }
}

/// What [`Pool::set_cluster_resources`] takes: the cluster's (name, total, available).
pub type ClusterResources = Box<dyn Fn() -> Vec<(String, f64, f64)> + Send + Sync>;

/// The runtime a pool serves its workers' requests with (set once, just after the pool).
pub struct Services {
    /// The runtime.
    pub rt: Runtime,
    /// `py.task`, the raw function every Python task runs as.
    pub task: RawFn,
    /// Splits a result of several returns (`py.item`, a native task: no Python involved).
    pub item: RawFn,
    /// The store's socket, which workers connect to for large values.
    pub store_socket: PathBuf,
}

/// The process at the other end of a channel.
enum Peer {
    /// A worker process this pool started.
    Child(Child),
    /// A driver process attached to this node runtime; its connection closes when it goes.
    Driver { conn: std::os::unix::net::UnixStream, pid: u32 },
}

impl Peer {
    fn id(&self) -> u32 {
        match self {
            Peer::Child(c) => c.id(),
            Peer::Driver { pid, .. } => *pid,
        }
    }

    fn alive(&mut self) -> bool {
        match self {
            Peer::Child(c) => matches!(c.try_wait(), Ok(None)),
            Peer::Driver { conn, .. } => {
                // Non-blocking, and the driver sends nothing more on it: a read of 0 bytes
                // is its end.
                use std::io::Read;
                let mut b = [0u8; 1];
                match conn.read(&mut b) {
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted,
                }
            }
        }
    }

    /// How it ended, if it did.
    fn status(&mut self) -> Option<String> {
        match self {
            Peer::Child(c) => c.try_wait().ok().flatten().map(|s| s.to_string()),
            Peer::Driver { .. } => (!self.alive()).then(|| "disconnected".to_string()),
        }
    }
}

struct Worker {
    child: Peer,
    ch: Arc<Channel>,
    tx: Producer,
    rx: Consumer,
    defined: HashSet<Key>,
    /// Refs this worker holds: (the object, whether an actor call made it).
    borrowed: HashMap<u128, (ObjectRef<Untyped>, bool)>,
    /// Objects the worker sealed into the store as its running call's result, by key.
    adopted: HashMap<u128, Object>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.ch.close();
        let Peer::Child(child) = &mut self.child else { return };
        if matches!(child.try_wait(), Ok(None)) {
            // Closing the channel ends an idle worker's loop; one still busy is killed.
            let deadline = Instant::now() + Duration::from_millis(200);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the pool knows of one actor, shared with its state.
struct ActorControl {
    /// The channel of its current process: closing it ends a running call at once.
    ch: Mutex<Option<Arc<Channel>>>,
    /// Set by `kill`: the process is not restarted.
    killed: AtomicBool,
    /// Its name and id, while the name is held cluster-wide (freed when it dies or is
    /// killed).
    named: Mutex<Option<(String, u128)>>,
}

impl Pool {
    /// Frees the cluster-wide name of the actor of `control`, if it holds one.
    fn release_name(&self, control: &ActorControl) {
        let named = lock(&control.named).take();
        if let (Some((name, id)), Some(r)) = (named, self.router.get()) {
            r.forget_actor(&name, id);
        }
    }
}

struct ActorEntry {
    class: Arc<RawClass>,
    key: Key,
    control: Arc<ActorControl>,
    /// A handle kept while the actor may be reached by id only (its handle travelled inside
    /// a value, or a worker created it): such an actor lives until killed or shutdown.
    pinned: Option<RawActorHandle>,
}

/// The worker pool of one runtime.
pub struct Pool {
    config: WorkerConfig,
    me: Weak<Pool>,
    services: OnceLock<Services>,
    idle: Mutex<Vec<Worker>>,
    /// Spawns one at a time: a descriptor made inheritable for one child reaches no other.
    spawn: Mutex<()>,
    functions: RwLock<HashMap<Key, Arc<[u8]>>>,
    /// Native functions loaded for drivers (`library:symbol`), by name.
    natives: Mutex<HashMap<String, RawFn>>,
    classes: Mutex<HashMap<Key, Arc<RawClass>>>,
    actors: Mutex<HashMap<u128, ActorEntry>>,
    /// Actors being constructed, by the token their constructor finds them with.
    pending: Mutex<HashMap<u64, Arc<ActorControl>>>,
    next_token: AtomicU64,
    /// Channels of every live worker, busy or idle, to close them all at shutdown.
    channels: Mutex<HashMap<u32, Arc<Channel>>>,
    closed: AtomicBool,
    started: AtomicUsize,
    /// Channels of attached drivers, closed at shutdown.
    drivers: Mutex<Vec<Arc<Channel>>>,
    /// Objects a ref to which travelled inside a value (pickled): kept until shutdown, and
    /// found by id by whoever unpickles the ref.
    escaped: Mutex<HashMap<u128, (ObjectRef<Untyped>, bool)>>,
    /// The cluster's resources (name, total, available), when this node is part of one:
    /// what a driver's `cluster_resources()` sees instead of this node's own.
    cluster_resources: OnceLock<ClusterResources>,
    /// Where tasks may go instead of this node (see [`Router`]).
    router: OnceLock<Arc<dyn Router>>,
    /// Tasks asked to be cancelled (by result id), until their call sees it.
    cancelled: Mutex<HashSet<u128>>,
    /// The worker process running each task now (by result id).
    running: Mutex<HashMap<u128, u32>>,
    /// The KV store of a node outside any cluster.
    kv: LocalKv,
}

fn cancelled() -> RawFailure {
    failure(FailureKind::Cancelled, "the task was cancelled (rayhpc.cancel)")
}

/// A failure of `kind` with `message` and no payload.
pub fn failure(kind: FailureKind, message: impl Into<String>) -> RawFailure {
    RawFailure { kind, message: message.into(), payload: None }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Options as the core takes them: a task's are named by its function, an actor's by its
/// registered name (anonymous without one).
pub fn to_options(w: &WireOptions, actor: bool) -> Options {
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

/// How a failed object reads, for Python: kinds "task", "worker_died", "actor_died",
/// "timeout", "shutdown", "store", "no_actor", "system".
pub fn failure_of(e: Error, from_actor: bool) -> WireFailure {
    let plain = |kind: &str, e: &Error| WireFailure {
        kind: kind.into(),
        function: String::new(),
        message: e.to_string(),
        payload: None,
        attempts: 0,
    };
    match e {
        Error::Task(t) => {
            let kind = match t.kind {
                FailureKind::WorkerDied if from_actor => "actor_died",
                FailureKind::WorkerDied => "worker_died",
                FailureKind::ActorDied => "actor_died",
                FailureKind::Cancelled => "cancelled",
                _ => "task",
            };
            WireFailure {
                kind: kind.into(),
                function: t.function.to_string(),
                message: t.message.clone(),
                payload: t.payload.as_deref().map(<[u8]>::to_vec),
                attempts: t.attempts,
            }
        }
        e @ Error::ActorDied { .. } => plain("actor_died", &e),
        e @ Error::Timeout(_) => plain("timeout", &e),
        e @ Error::Shutdown => plain("shutdown", &e),
        e @ (Error::ObjectTooLarge { .. } | Error::StoreFull { .. }) => plain("store", &e),
        e @ Error::NoSuchActor(_) => plain("no_actor", &e),
        e @ Error::ObjectLost(_) => plain("object_lost", &e),
        e @ (Error::NameTaken(_) | Error::Invalid(_) | Error::Resources(_)) => plain("value", &e),
        e => plain("system", &e),
    }
}

/// Reads `refs` in order, waiting at most `timeout` seconds in all (forever with `None`).
pub fn fetch(rt: &Runtime, refs: &[ObjectRef<Untyped>], timeout: Option<f64>) -> Vec<Result<ObjectView, Error>> {
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
    refs.iter()
        .map(|r| {
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                match rt.wait(std::slice::from_ref(r), 1, Some(left)) {
                    Ok((ready, _)) if ready.is_empty() => return Err(Error::Timeout(Duration::from_secs_f64(timeout.unwrap_or(0.0)))),
                    Err(e) => return Err(e),
                    Ok(_) => {}
                }
            }
            rt.get_bytes(r)
        })
        .collect()
}

/// The indices of the refs `wait` found ready, in order.
pub fn wait_indices(rt: &Runtime, refs: &[ObjectRef<Untyped>], n: usize, timeout: Option<f64>) -> Result<Vec<u32>, Error> {
    let (ready, _) = rt.wait(refs, n, timeout.map(|t| Duration::from_secs_f64(t.max(0.0))))?;
    let ready: HashSet<ObjectId> = ready.iter().map(|r| r.id()).collect();
    Ok(refs.iter().enumerate().filter(|(_, r)| ready.contains(&r.id())).map(|(i, _)| i as u32).collect())
}

/// One round of a worker's answer.
enum Answer {
    Done(Result<RawOutput, RawFailure>),
    Request(Vec<u8>),
    Released,
}

impl Pool {
    /// An empty pool; [`Pool::set_services`] must follow at once.
    pub fn new(config: WorkerConfig) -> Arc<Pool> {
        Arc::new_cyclic(|me| Pool {
            config,
            me: me.clone(),
            services: OnceLock::new(),
            idle: Mutex::new(Vec::new()),
            spawn: Mutex::new(()),
            functions: RwLock::new(HashMap::new()),
            natives: Mutex::new(HashMap::new()),
            classes: Mutex::new(HashMap::new()),
            actors: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            channels: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            started: Default::default(),
            escaped: Mutex::new(HashMap::new()),
            cluster_resources: OnceLock::new(),
            router: OnceLock::new(),
            drivers: Mutex::new(Vec::new()),
            cancelled: Mutex::new(HashSet::new()),
            running: Mutex::new(HashMap::new()),
            kv: LocalKv::default(),
        })
    }

    /// Sets the runtime the pool serves requests with (once).
    pub fn set_services(&self, s: Services) {
        let _ = self.services.set(s);
    }

    /// Makes drivers' `cluster_resources()` answer with `f` (the cluster's sum) instead of
    /// this node's resources (once).
    pub fn set_cluster_resources(&self, f: ClusterResources) {
        let _ = self.cluster_resources.set(f);
    }

    /// The runtime and functions set by [`Pool::set_services`].
    pub fn services(&self) -> &Services {
        self.services.get().expect("set right after the pool is made")
    }

    /// The raw function every Python task runs as.
    pub fn services_task(&self) -> &RawFn {
        &self.services().task
    }

    /// Registers a pickled function or class under its key (once per key).
    pub fn define(&self, key: Key, blob: &[u8]) {
        self.functions.write().unwrap_or_else(|e| e.into_inner()).entry(key).or_insert_with(|| Arc::from(blob));
    }

    /// The native function `library:symbol`, loaded on first use.
    ///
    /// # Errors
    /// The library or symbol cannot be loaded ([`Error::Invalid`] saying why).
    pub fn native(&self, name: &str) -> Result<RawFn, Error> {
        let mut natives = lock(&self.natives);
        if let Some(f) = natives.get(name) {
            return Ok(*f);
        }
        let f = crate::native::load(name).map_err(|e| Error::Invalid(format!("no native function {name:?}: {e}")))?;
        let owned = name.to_string();
        let raw = rayhpc::raw::raw_function(name, move |inputs: &[&[u8]]| crate::native::run(f, &owned, inputs).map(RawOutput::Bytes));
        natives.insert(name.to_string(), raw);
        Ok(raw)
    }

    /// Runs `op` on the KV store: the cluster's, else this node's own. A watch waits (up to
    /// its timeout) for a change.
    ///
    /// # Errors
    /// A bad key, value or timeout, or the head is out of reach ([`Error::Invalid`]).
    pub fn kv(&self, op: KvOp) -> Result<KvAnswer, Error> {
        if let Some(a) = self.router.get().and_then(|r| r.kv(op.clone())) {
            return a;
        }
        self.kv.call(op).map_err(Error::Invalid)
    }

    /// The nodes of the cluster (`ray.nodes()`): the launch's, else this one alone.
    pub fn nodes(&self) -> Vec<crate::wire::WireNode> {
        if let Some(r) = self.router.get() {
            return r.nodes();
        }
        vec![crate::wire::WireNode {
            rank: 0,
            alive: true,
            address: "127.0.0.1".into(),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string(),
            resources: self.services().rt.resources().into_iter().map(|v| (v.name.to_string(), v.total)).collect(),
        }]
    }

    /// The pickled function or class of `key`, if this pool knows it.
    pub fn function_blob(&self, key: &Key) -> Option<Arc<[u8]>> {
        self.blob(key)
    }

    /// Makes tasks submitted through this pool (by drivers and workers) go through `r`
    /// first, which may run them on another node (once).
    pub fn set_router(&self, r: Arc<dyn Router>) {
        let _ = self.router.set(r);
    }

    fn blob(&self, key: &Key) -> Option<Arc<[u8]>> {
        self.functions.read().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Workers started so far.
    pub fn started(&self) -> usize {
        self.started.load(Ordering::Relaxed)
    }

    /// Live worker processes (busy or idle, actors' included).
    pub fn live(&self) -> Vec<u32> {
        lock(&self.channels).keys().copied().collect()
    }

    fn spawn(&self) -> std::io::Result<Worker> {
        if self.closed.load(Ordering::Acquire) {
            return Err(std::io::Error::other("the runtime is shutting down"));
        }
        let ch = Channel::create(RING)?;
        let child = {
            let _one = lock(&self.spawn);
            let fd = fdpass::inheritable_dup(ch.fd(), 3)?;
            Command::new(&self.config.python)
                .args(["-c", "import rayhpc._worker as w; w.main()"])
                .env("RAYHPC_WORKER_FD", fd.as_raw_fd().to_string())
                .env("RAYHPC_SYS_PATH", &self.config.sys_path)
                .env("RAYHPC_STORE_SOCKET", &self.services().store_socket)
                .stdin(Stdio::null())
                .spawn()?
            // `fd` closes here: only the child holds the inherited copy.
        };
        self.started.fetch_add(1, Ordering::Relaxed);
        lock(&self.channels).insert(child.id(), ch.clone());
        let (tx, rx) = ch.creator_ends();
        Ok(Worker { child: Peer::Child(child), ch, tx, rx, defined: HashSet::new(), borrowed: HashMap::new(), adopted: HashMap::new() })
    }

    fn checkout(&self) -> Result<Worker, RawFailure> {
        if self.closed.load(Ordering::Acquire) {
            return Err(failure(FailureKind::Error, "the runtime is shutting down"));
        }
        if let Some(w) = lock(&self.idle).pop() {
            return Ok(w);
        }
        self.spawn()
            .map_err(|e| failure(FailureKind::WorkerDied, format!("cannot start a Python worker ({}): {e}", self.config.python.display())))
    }

    fn retire(&self, w: Worker) {
        lock(&self.channels).remove(&w.child.id());
        drop(w);
    }

    /// Why a worker was lost, for the failure's message.
    fn lost(&self, w: Worker, e: &RingError, what: &str) -> String {
        let mut w = w;
        let pid = w.child.id();
        let status = w.child.status();
        self.retire(w);
        let how = match status {
            Some(s) => format!("exited with {s}"),
            None => format!("stopped answering ({e})"),
        };
        format!("the worker process (pid {pid}) running {what} died: it {how}")
    }

    /// Runs one task call: `inputs[0]` is the function key, the rest the call's arguments
    /// (the layout first).
    pub fn call(&self, inputs: &[&[u8]]) -> Result<RawOutput, RawFailure> {
        let Some((key, args)) = inputs.split_first() else {
            return Err(failure(FailureKind::BadArguments, "a Python call without its function"));
        };
        let markers = by_key(&stored_inputs(), inputs);
        let args: Vec<&[u8]> = args.iter().enumerate().map(|(i, a)| markers.get(&(i + 1)).map_or(*a, |m| m.as_slice())).collect();
        let header = wire::call_header(key, &args).map_err(|m| failure(FailureKind::BadArguments, m))?;
        let key: Key = (*key).try_into().expect("checked by call_header");
        let Some(blob) = self.blob(&key) else {
            return Err(failure(FailureKind::BadArguments, "unknown function (not registered in this runtime)"));
        };
        let me = current_task().map(|id| id.0);
        if me.is_some_and(|id| lock(&self.cancelled).remove(&id)) {
            return Err(cancelled());
        }
        let mut w = self.checkout()?;
        if let Some(id) = me {
            lock(&self.running).insert(id, w.child.id());
        }
        let out = self.define_in(&mut w, &key, &blob).and_then(|d| match d {
            Some(f) => Ok(Err(f)),
            None => self.exchange(&mut w, &header, &args, "the pickled arguments"),
        });
        // Off the running list before the worker can be reaped (its pid then reused).
        let was_cancelled = me.is_some_and(|id| {
            let mut running = lock(&self.running);
            running.remove(&id);
            lock(&self.cancelled).remove(&id)
        });
        match out {
            Ok(r) => {
                if !self.closed.load(Ordering::Acquire) {
                    lock(&self.idle).push(w);
                } else {
                    self.retire(w);
                }
                if was_cancelled {
                    return Err(cancelled());
                }
                r
            }
            Err(_) if was_cancelled => {
                self.retire(w);
                Err(cancelled())
            }
            Err(e) => {
                let msg = self.lost(w, &e, "this task");
                if self.closed.load(Ordering::Acquire) {
                    return Err(failure(FailureKind::Error, "the runtime shut down while the task ran"));
                }
                Err(failure(FailureKind::WorkerDied, msg))
            }
        }
    }

    /// A ref the worker holds: lent to it, or unpickled from a value (escaped).
    fn borrowed_or_escaped(&self, w: &Worker, id: u128) -> Result<(ObjectRef<Untyped>, bool), Error> {
        match w.borrowed.get(&id) {
            Some(r) => Ok(r.clone()),
            None => self.escaped(id).ok_or_else(|| unknown_ref(id)),
        }
    }

    fn args_of(&self, w: &Worker, args: Vec<WireArg>) -> Result<Vec<RawArg>, Error> {
        args.into_iter()
            .map(|a| match a {
                WireArg::Value(b) => Ok(RawArg::Bytes(b)),
                WireArg::Ref(id) => self.borrowed_or_escaped(w, id).map(|(r, _)| RawArg::Ref(r)),
            })
            .collect()
    }

    fn refs_of(&self, w: &Worker, ids: &[u128]) -> Result<Vec<(ObjectRef<Untyped>, bool)>, Error> {
        ids.iter().map(|id| self.borrowed_or_escaped(w, *id)).collect()
    }

    /// Keeps `r` alive while a ref to it travels inside a value (until shutdown).
    pub fn escape(&self, r: &ObjectRef<Untyped>, actor: bool) {
        lock(&self.escaped).entry(r.id().0).or_insert_with(|| (r.clone(), actor));
    }

    /// The object of an escaped ref of this node only (what another node may fetch).
    pub fn escaped_here(&self, id: u128) -> Option<ObjectRef<Untyped>> {
        lock(&self.escaped).get(&id).map(|(r, _)| r.clone())
    }

    /// The object of an escaped ref, by id: one of this node's, or (in a cluster) one made
    /// on another node, fetched from there once and then shared by this node's readers.
    pub fn escaped(&self, id: u128) -> Option<(ObjectRef<Untyped>, bool)> {
        if let Some(e) = lock(&self.escaped).get(&id).cloned() {
            return Some(e);
        }
        let mut escaped = lock(&self.escaped);
        if let Some(e) = escaped.get(&id) {
            return Some(e.clone()); // another reader started the fetch meanwhile
        }
        let r = self.router.get()?.fetch(id)?;
        escaped.insert(id, (r.clone(), false));
        drop(escaped);
        // A failed fetch is not kept: the next reader tries again.
        let (me, held) = (self.me.clone(), r.clone());
        r.on_ready(move || {
            if matches!(held.try_view(), Some(Err(_))) {
                if let Some(p) = me.upgrade() {
                    lock(&p.escaped).remove(&id);
                }
            }
        });
        Some((r, false))
    }

    /// Cancels the task whose result is `id`: one not started yet fails when it would start;
    /// a running one is interrupted (SIGINT: KeyboardInterrupt in its Python code) or, with
    /// `force`, its worker is killed. Either way its result is a `Cancelled` failure. A task
    /// already done is left as it is.
    pub fn cancel(&self, id: u128, force: bool) {
        let running = lock(&self.running);
        lock(&self.cancelled).insert(id);
        if let Some(&pid) = running.get(&id) {
            // Under the running list's lock: the worker is not reaped meanwhile.
            let _ = crate::signal::send(pid, if force { crate::signal::KILL } else { crate::signal::INTERRUPT });
        }
    }

    /// Sends a function or class to a worker that has not seen it. `Ok(Some)` is the call's
    /// own failure (the pickle is over the ring's limit); `Err` is a lost worker.
    fn define_in(&self, w: &mut Worker, key: &Key, blob: &[u8]) -> Result<Option<RawFailure>, RingError> {
        if w.defined.contains(key) {
            return Ok(None);
        }
        if let Some(f) = send(w, &[&wire::define_header(key), blob], &|size, limit| {
            format!("the pickled function or class is {size} bytes, over the limit of {limit}")
        })? {
            return Ok(Some(f));
        }
        w.defined.insert(*key);
        Ok(None)
    }

    /// Sends a call-shaped message (its header, then `args`) and serves the worker's requests
    /// until it answers. The outer `Err` is a lost worker; the inner result is the call's own
    /// outcome.
    fn exchange(&self, w: &mut Worker, header: &[u8], args: &[&[u8]], what: &str) -> Result<Result<RawOutput, RawFailure>, RingError> {
        let mut parts: Vec<&[u8]> = Vec::with_capacity(args.len() + 1);
        parts.push(header);
        parts.extend_from_slice(args);
        if let Some(f) =
            send(w, &parts, &|size, limit| format!("{what} are {size} bytes, over the current limit of {limit} bytes per call"))?
        {
            return Ok(Err(f));
        }
        loop {
            match self.answer(w)? {
                Answer::Done(r) => return Ok(r),
                Answer::Released => {}
                Answer::Request(body) => self.reply(w, &body)?,
            }
        }
    }

    /// Serves one request and sends its reply.
    fn reply(&self, w: &mut Worker, body: &[u8]) -> Result<(), RingError> {
        let reply = self.serve(w, body);
        let encoded = wire::encode(&reply);
        let sent = w.tx.send(&[&wire::reply_header(), &encoded], None, &mut alive_fn(&mut w.child));
        match sent {
            Err(RingError::TooLarge { size, limit }) => {
                let r = Reply::Failed("value".into(), format!("the reply is {size} bytes, over the limit of {limit} bytes per message"));
                w.tx.send(&[&wire::reply_header(), &wire::encode(&r)], None, &mut alive_fn(&mut w.child))
            }
            other => other,
        }
    }

    /// Serves a driver process that connected to this node runtime (`init(address=...)`):
    /// reads its hello (magic and pid), hands it a channel (the descriptor over the
    /// connection) and answers its requests, on a thread of its own, until it goes. Its refs
    /// are let go when it does.
    pub fn attach_driver(self: &Arc<Self>, conn: std::os::unix::net::UnixStream) -> std::io::Result<()> {
        use std::io::Read;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut hello = [0u8; 12];
        (&conn).read_exact(&mut hello)?;
        if &hello[..8] != wire::DRIVER_MAGIC {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a rayhpc driver"));
        }
        let pid = u32::from_le_bytes(hello[8..].try_into().expect("4 bytes"));
        let ch = Channel::create(RING)?;
        fdpass::send(&conn, wire::NODE_MAGIC, &[ch.fd()])?;
        conn.set_nonblocking(true)?;
        let (tx, rx) = ch.creator_ends();
        lock(&self.drivers).push(ch.clone());
        let mut w = Worker {
            child: Peer::Driver { conn, pid },
            ch,
            tx,
            rx,
            defined: HashSet::new(),
            borrowed: HashMap::new(),
            adopted: HashMap::new(),
        };
        let pool = Arc::downgrade(self);
        std::thread::Builder::new().name(format!("rayhpc-driver-{pid}")).spawn(move || loop {
            let Some(p) = pool.upgrade() else { break };
            match p.answer(&mut w) {
                Ok(Answer::Request(body)) => {
                    if p.reply(&mut w, &body).is_err() {
                        break;
                    }
                }
                Ok(Answer::Released | Answer::Done(_)) => {}
                Err(_) => break, // gone, or the runtime shut down
            }
        })?;
        Ok(())
    }

    /// The worker's next message: spins a moment, then waits holding the job's resources
    /// while another thread runs the executor's other work.
    fn answer(&self, w: &mut Worker) -> Result<Answer, RingError> {
        let Worker { child, rx, adopted, borrowed, .. } = w;
        let mut alive = alive_fn(child);
        let m = match rx.recv(Some(Instant::now() + SPIN), &mut alive).map(|m| m.to_vec()) {
            Err(RingError::Timeout) => match self.services.get() {
                Some(s) => s.rt.block_holding(|| rx.recv(None, &mut alive).map(|m| m.to_vec()))?,
                None => rx.recv(None, &mut alive).map(|m| m.to_vec())?,
            },
            other => other?,
        };
        Ok(match wire::parse_response(&m) {
            Ok(Response::Ok(bytes)) => match wire::parse_key_marker(bytes) {
                // A result the worker sealed into the store (adopted just before).
                Some((key, _)) => match adopted.remove(&key) {
                    Some(o) => Answer::Done(Ok(RawOutput::Stored(o))),
                    None => Answer::Done(Err(failure(
                        FailureKind::Error,
                        format!("the worker's result names object {key:032x}, which it never handed over"),
                    ))),
                },
                None => Answer::Done(Ok(RawOutput::Bytes(bytes.to_vec()))),
            },
            Ok(Response::Err { message, payload }) => Answer::Done(Err(RawFailure {
                kind: FailureKind::Error,
                message: message.to_string(),
                payload: (!payload.is_empty()).then(|| Arc::from(payload)),
            })),
            Ok(Response::Request(body)) => Answer::Request(body.to_vec()),
            Ok(Response::Release(body)) => {
                // Refs the worker dropped: let go of them now (not at its next request, which
                // an idle worker may never make).
                if let Ok(ids) = wire::decode::<Vec<u128>>(body) {
                    for id in ids {
                        borrowed.remove(&id);
                    }
                }
                Answer::Released
            }
            Err(e) => Answer::Done(Err(failure(FailureKind::Error, format!("malformed answer from the worker: {e}")))),
        })
    }

    /// Serves one request of a worker, on the executor running its call.
    fn serve(&self, w: &mut Worker, body: &[u8]) -> Reply {
        let env: Envelope = match wire::decode(body) {
            Ok(e) => e,
            Err(m) => return Reply::Failed("system".into(), m),
        };
        for id in env.release {
            w.borrowed.remove(&id);
        }
        match self.serve_call(w, env.call) {
            Ok(r) => r,
            Err(e) => {
                let f = failure_of(e, false);
                Reply::Failed(f.kind, f.message)
            }
        }
    }

    fn serve_call(&self, w: &mut Worker, call: Call) -> Result<Reply, Error> {
        let s = self.services();
        let lend = |w: &mut Worker, r: ObjectRef<Untyped>, actor: bool| {
            let id = r.id().0;
            w.borrowed.insert(id, (r, actor));
            Reply::Ref(id)
        };
        Ok(match call {
            Call::Define { key, blob, class_name } => {
                self.define(key, &blob);
                if let Some(n) = class_name {
                    self.class(key, &n);
                }
                Reply::Done
            }
            Call::Submit { key, options, args } => {
                if self.blob(&key).is_none() {
                    return Err(Error::Invalid("unknown function (not registered in this runtime)".into()));
                }
                let mut raw = vec![RawArg::Bytes(key.to_vec())];
                raw.extend(self.args_of(w, args)?);
                let here = |raw: Vec<RawArg>| s.task.remote(&s.rt, raw, &to_options(&options, false));
                let r = match self.router.get() {
                    Some(router) => router.route(TaskFn::Python(key), raw, &options, &here)?,
                    None => here(raw)?,
                };
                lend(w, r, false)
            }
            Call::SubmitNative { name, options, args } => {
                let f = self.native(&name)?;
                let raw = self.args_of(w, args)?;
                let here = |raw: Vec<RawArg>| f.remote(&s.rt, raw, &to_options(&options, false));
                let r = match self.router.get() {
                    Some(router) => router.route(TaskFn::Native(name), raw, &options, &here)?,
                    None => here(raw)?,
                };
                lend(w, r, false)
            }
            Call::CreateActor { key, options, args } => {
                let args = self.args_of(w, args)?;
                let id = match self.router.get() {
                    Some(r) => {
                        let id = r.create_actor(key, &options, args, &|args| self.create_pinned(key, &options, args))?;
                        if let Some(name) = &options.actor_name {
                            if let Err(e) = r.name_actor(name, id, key) {
                                // Taken on another node: this one goes.
                                if !r.kill_actor(id) {
                                    self.kill_id(id);
                                }
                                return Err(e);
                            }
                        }
                        id
                    }
                    None => self.create_pinned(key, &options, args)?,
                };
                Reply::Actor(id, key)
            }
            Call::Method { actor, method, args } => {
                let args = self.args_of(w, args)?;
                let r = self.call_actor_id(actor, &method, args)?;
                lend(w, r, true)
            }
            Call::Put { bytes } => {
                let r = s.rt.put_bytes(&bytes)?;
                lend(w, r, false)
            }
            Call::Get { ids, timeout } => {
                let refs = self.refs_of(w, &ids)?;
                let plain: Vec<_> = refs.iter().map(|(r, _)| r.clone()).collect();
                // Wait in slices, so that a kill of this worker's actor or a shutdown (both
                // close its channel) ends the wait instead of hanging the executor.
                if let Some(stop) = self.wait_or_stop(w, &plain, plain.len(), timeout)? {
                    return Ok(stop);
                }
                let views = fetch(&s.rt, &plain, Some(0.0));
                // A stored object goes by key: the worker reads it in place, pinned by the ref
                // it holds until it has its own pin.
                let value = |v: ObjectView| match v.stored_key() {
                    Some(key) => wire::key_marker(key, v.len() as u64).to_vec(),
                    None => v.to_vec(),
                };
                Reply::Values(views.into_iter().zip(&refs).map(|(v, (_, actor))| v.map(value).map_err(|e| failure_of(e, *actor))).collect())
            }
            Call::Adopt { key, as_ref } => {
                let o = s.rt.object_store().adopt(key).map_err(|e| Error::Invalid(format!("object {key:032x} to adopt: {e}")))?;
                if as_ref {
                    let r = s.rt.put_object(o)?;
                    lend(w, r, false)
                } else {
                    w.adopted.insert(key, o);
                    Reply::Done
                }
            }
            Call::Wait { ids, num_returns, timeout } => {
                let refs: Vec<_> = self.refs_of(w, &ids)?.into_iter().map(|(r, _)| r).collect();
                if let Some(stop) = self.wait_or_stop(w, &refs, num_returns.min(refs.len()), timeout)? {
                    return Ok(stop);
                }
                Reply::Ready(wait_indices(&s.rt, &refs, num_returns, Some(0.0))?)
            }
            Call::Kill { actor } => {
                if !self.router.get().is_some_and(|r| r.kill_actor(actor)) {
                    self.kill_id(actor);
                }
                Reply::Done
            }
            Call::GetActor { name } => {
                let h = match s.rt.get_actor::<RawState>(&name) {
                    Ok(h) => h,
                    Err(e) => match self.router.get().and_then(|r| r.lookup_actor(&name)) {
                        Some((id, key)) => return Ok(Reply::Actor(id, key)),
                        None => return Err(e),
                    },
                };
                let key = lock(&self.actors).get(&h.id().0).map(|e| e.key).ok_or_else(|| Error::NoSuchActor(name.clone()))?;
                self.pin_actor(&h);
                Reply::Actor(h.id().0, key)
            }
            Call::PinActor { actor } => {
                if let Some(h) = raw_actor_by_id(ActorId(actor)) {
                    self.pin_actor(&h);
                }
                Reply::Done
            }
            Call::PinRef { id } => {
                // A ref this worker holds is kept while its id travels; one it only passes on
                // (escaped already, here or on the node that made it) needs nothing, and
                // above all no fetch.
                if let Some((r, actor)) = w.borrowed.get(&id).cloned() {
                    self.escape(&r, actor);
                }
                Reply::Done
            }
            Call::Cancel { id, force } => {
                let (r, _) = self.borrowed_or_escaped(w, id)?;
                if !r.is_ready() {
                    self.cancel(id, force);
                }
                Reply::Done
            }
            Call::Items { id, n } => {
                let (r, actor) = self.borrowed_or_escaped(w, id)?;
                let refs = items(s, &r, n)?;
                Reply::Refs(refs.into_iter().map(|r| lend_id(w, r, actor)).collect())
            }
            Call::Nodes => Reply::Nodes(self.nodes()),
            Call::Kv(op) => Reply::Kv(self.kv(op)?),
            Call::Resources => Reply::Resources(match self.cluster_resources.get() {
                Some(f) => f(),
                None => s.rt.resources().into_iter().map(|v| (v.name.to_string(), v.total, v.available)).collect(),
            }),
        })
    }

    /// Waits until `n` of `refs` are ready or `timeout` seconds pass, in slices of 50 ms;
    /// `Some(reply)` when the worker's channel was closed meanwhile (its actor killed, the
    /// runtime shut down), with the failure to answer.
    fn wait_or_stop(&self, w: &Worker, refs: &[ObjectRef<Untyped>], n: usize, timeout: Option<f64>) -> Result<Option<Reply>, Error> {
        let rt = &self.services().rt;
        let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)),
                None => Duration::from_millis(50),
            };
            let (ready, _) = rt.wait(refs, n, Some(slice))?;
            if ready.len() >= n || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            if w.ch.closed() || self.closed.load(Ordering::Acquire) {
                return Ok(Some(Reply::Failed(
                    "system".into(),
                    "the worker's actor was killed or the runtime shut down while it waited".into(),
                )));
            }
        }
    }

    /// The raw class of Python class `key` (made on first use).
    pub fn class(&self, key: Key, name: &str) -> Arc<RawClass> {
        let mut classes = lock(&self.classes);
        if let Some(c) = classes.get(&key) {
            return c.clone();
        }
        let pool = self.me.clone();
        let class = Arc::new(raw_actor(name, move |inputs: &[&[u8]]| {
            let pool = pool.upgrade().ok_or_else(|| failure(FailureKind::ActorDied, "the runtime is shut down"))?;
            PyActor::start(&pool, key, inputs).map(|a| Box::new(a) as Box<dyn RawActor>)
        }));
        classes.insert(key, class.clone());
        class
    }

    /// Creates an actor of class `key` (registered with `define` and `class`).
    pub fn create_actor(&self, key: Key, options: &WireOptions, args: Vec<RawArg>) -> Result<RawActorHandle, Error> {
        let class = lock(&self.classes)
            .get(&key)
            .cloned()
            .ok_or_else(|| Error::Invalid("unknown actor class (not registered in this runtime)".into()))?;
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let control = Arc::new(ActorControl { ch: Mutex::new(None), killed: AtomicBool::new(false), named: Mutex::new(None) });
        lock(&self.pending).insert(token, control.clone());
        let mut config = Vec::with_capacity(16);
        config.extend_from_slice(&token.to_le_bytes());
        config.extend_from_slice(&options.max_restarts.unwrap_or(0).to_le_bytes());
        config.extend_from_slice(&options.max_task_retries.unwrap_or(0).to_le_bytes());
        let mut raw = vec![RawArg::Bytes(config)];
        raw.extend(args);
        let h = match class.remote(&self.services().rt, raw, &to_options(options, true)) {
            Ok(h) => h,
            Err(e) => {
                lock(&self.pending).remove(&token);
                return Err(e);
            }
        };
        if let Some(name) = &options.actor_name {
            *lock(&control.named) = Some((name.clone(), h.id().0));
        }
        lock(&self.actors).insert(h.id().0, ActorEntry { class, key, control, pinned: None });
        Ok(h)
    }

    /// Creates an actor reached by id (pinned until killed): its id.
    ///
    /// # Errors
    /// As [`Pool::create_actor`].
    pub fn create_pinned(&self, key: Key, options: &WireOptions, args: Vec<RawArg>) -> Result<u128, Error> {
        let h = self.create_actor(key, options, args)?;
        self.pin_actor(&h);
        Ok(h.id().0)
    }

    /// The name of actor class `key`, if this pool knows it.
    pub fn class_name(&self, key: &Key) -> Option<String> {
        lock(&self.classes).get(key).map(|c| c.name().to_string())
    }

    /// Calls `method` on the actor with id `actor`.
    pub fn call_actor_id(&self, actor: u128, method: &str, args: Vec<RawArg>) -> Result<ObjectRef<Untyped>, Error> {
        let class = lock(&self.actors).get(&actor).map(|e| e.class.clone());
        let h = raw_actor_by_id(ActorId(actor));
        let gone = || Error::ActorDied { class: "?".into(), actor: format!("{actor:032x}"), reason: "no live actor has this id".into() };
        match (class, h) {
            (Some(c), Some(h)) => c.call(&h, method, args),
            // Not here: on another node, if it was made there.
            _ => match self.router.get() {
                Some(r) => r.actor_call(actor, method, args).unwrap_or_else(|| Err(gone())),
                None => Err(gone()),
            },
        }
    }

    /// Calls `method` on the actor of handle `h`.
    pub fn call_actor(&self, h: &RawActorHandle, method: &str, args: Vec<RawArg>) -> Result<ObjectRef<Untyped>, Error> {
        let class = lock(&self.actors).get(&h.id().0).map(|e| e.class.clone());
        match class {
            Some(c) => c.call(h, method, args),
            None => Err(Error::Invalid("not an actor of this runtime".into())),
        }
    }

    /// The class key of actor `actor`.
    pub fn actor_key(&self, actor: u128) -> Option<Key> {
        lock(&self.actors).get(&actor).map(|e| e.key)
    }

    /// Keeps the actor alive while it may be reached by id only.
    pub fn pin_actor(&self, h: &RawActorHandle) {
        if let Some(e) = lock(&self.actors).get_mut(&h.id().0) {
            if e.pinned.is_none() && !h.is_dead() {
                e.pinned = Some(h.clone());
            }
        }
    }

    /// Kills the actor with id `actor`: later calls fail with `ActorDied`; a call running
    /// now ends at once (its process is stopped); it is not restarted.
    pub fn kill_id(&self, actor: u128) {
        // The entry stays (calls through other handles still find the class, and then the
        // core's ActorDied); only its pin goes.
        let (control, pinned) = match lock(&self.actors).get_mut(&actor) {
            Some(e) => (Some(e.control.clone()), e.pinned.take()),
            None => (None, None),
        };
        if let Some(c) = &control {
            self.release_name(c);
        }
        self.kill_now(actor, control, pinned);
    }

    /// [`Pool::kill_id`], its name freed cluster-wide on another thread (for a thread that
    /// must not wait for the head).
    pub fn kill_id_then_free_name(&self, actor: u128) {
        let (control, pinned) = match lock(&self.actors).get_mut(&actor) {
            Some(e) => (Some(e.control.clone()), e.pinned.take()),
            None => (None, None),
        };
        if let Some(c) = control.clone() {
            let pool = self.me.clone();
            let _ = std::thread::Builder::new().name("rayhpc-forget".into()).spawn(move || {
                if let Some(pool) = pool.upgrade() {
                    pool.release_name(&c);
                }
            });
        }
        self.kill_now(actor, control, pinned);
    }

    /// Kills actor `actor` (its control and pinned handle taken out of its entry).
    fn kill_now(&self, actor: u128, control: Option<Arc<ActorControl>>, pinned: Option<RawActorHandle>) {
        let h = pinned.or_else(|| raw_actor_by_id(ActorId(actor)));
        if let Some(c) = &control {
            c.killed.store(true, Ordering::SeqCst);
        }
        if let Some(h) = h {
            self.services().rt.kill(&h);
        }
        if let Some(c) = control {
            if let Some(ch) = lock(&c.ch).as_ref() {
                ch.close();
            }
        }
    }

    /// Stops every worker: idle ones end, busy ones have their channel closed (their caller
    /// gets an error) and are killed. Pinned actors are let go.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        for ch in lock(&self.channels).values() {
            ch.close();
        }
        for ch in lock(&self.drivers).drain(..) {
            ch.close();
        }
        let idle: Vec<Worker> = std::mem::take(&mut *lock(&self.idle));
        for w in idle {
            self.retire(w);
        }
        let actors = std::mem::take(&mut *lock(&self.actors));
        drop(actors);
        let escaped = std::mem::take(&mut *lock(&self.escaped));
        drop(escaped);
    }
}

fn alive_fn(child: &mut Peer) -> impl FnMut() -> bool + '_ {
    move || child.alive()
}

/// Sends a message; a message over the ring's limit is the call's own failure (`Ok(Some)`),
/// not a lost worker.
fn send(w: &mut Worker, parts: &[&[u8]], too_large: &dyn Fn(usize, usize) -> String) -> Result<Option<RawFailure>, RingError> {
    match w.tx.send(parts, None, &mut alive_fn(&mut w.child)) {
        Ok(()) => Ok(None),
        Err(RingError::TooLarge { size, limit }) => Ok(Some(failure(FailureKind::BadArguments, too_large(size, limit)))),
        Err(e) => Err(e),
    }
}

/// The `n` objects of a result of several returns: one `py.item` task each, needing no
/// resources, depending on the call's result (whose failure they share).
pub fn items(s: &Services, r: &ObjectRef<Untyped>, n: u32) -> Result<Vec<ObjectRef<Untyped>>, Error> {
    let o = Options::new().num_cpus(0.0).max_retries(0).name("py.item");
    (0..n).map(|i| s.item.remote(&s.rt, vec![RawArg::Ref(r.clone()), RawArg::Bytes(i.to_le_bytes().to_vec())], &o)).collect()
}

/// The body of `py.item`: item `inputs[1]` (u32) of the result `inputs[0]`.
pub fn item(inputs: &[&[u8]]) -> Result<RawOutput, RawFailure> {
    let bad = |m: String| failure(FailureKind::BadArguments, m);
    let [result, index] = inputs else { return Err(bad(format!("py.item takes 2 inputs, got {}", inputs.len()))) };
    let i = u32::from_le_bytes((*index).try_into().map_err(|_| bad("py.item's index is 4 bytes".into()))?);
    wire::item_of(result, i as usize).map(|b| RawOutput::Bytes(b.to_vec())).map_err(bad)
}

fn lend_id(w: &mut Worker, r: ObjectRef<Untyped>, actor: bool) -> u128 {
    let id = r.id().0;
    w.borrowed.insert(id, (r, actor));
    id
}

/// Markers for the call's inputs that live in the store, by input index: a worker reads them
/// in place by key instead of receiving their bytes.
fn by_key(keys: &[Option<u128>], inputs: &[&[u8]]) -> HashMap<usize, [u8; 32]> {
    keys.iter().zip(inputs).enumerate().filter_map(|(i, (k, b))| k.map(|k| (i, wire::key_marker(k, b.len() as u64)))).collect()
}

fn unknown_ref(id: u128) -> Error {
    Error::Invalid(format!("ObjectRef({id:032x}) is not held by this worker"))
}

/// A Python actor's state: its own worker process, and what it takes to restart it.
struct PyActor {
    /// Weak: the actor's state lives in the runtime, which the pool's services hold.
    pool: Weak<Pool>,
    control: Arc<ActorControl>,
    worker: Option<Worker>,
    key: Key,
    /// The constructor's arguments (the layout first), kept for restarts.
    ctor_args: Vec<Vec<u8>>,
    /// The store objects of arguments passed by key, kept for restarts.
    #[allow(dead_code)] // held, never read: its reference keeps the objects in the store
    ctor_objects: Vec<Object>,
    /// Restarts left (negative: unlimited).
    restarts_left: i32,
    max_task_retries: i32,
}

impl PyActor {
    fn pool(&self) -> Result<Arc<Pool>, RawFailure> {
        self.pool.upgrade().ok_or_else(|| failure(FailureKind::ActorDied, "the runtime is shut down"))
    }

    /// The constructor: `inputs[0]` is (token, max_restarts, max_task_retries), the rest the
    /// arguments (the layout first).
    fn start(pool: &Arc<Pool>, key: Key, inputs: &[&[u8]]) -> Result<PyActor, RawFailure> {
        let bad = || failure(FailureKind::BadArguments, "malformed actor construction");
        let (config, args) = inputs.split_first().ok_or_else(bad)?;
        let config: &[u8; 16] = (*config).try_into().map_err(|_| bad())?;
        let token = u64::from_le_bytes(config[..8].try_into().expect("8 bytes"));
        let restarts = i32::from_le_bytes(config[8..12].try_into().expect("4 bytes"));
        let retries = i32::from_le_bytes(config[12..].try_into().expect("4 bytes"));
        let control = lock(&pool.pending).remove(&token).ok_or_else(bad)?;
        // Arguments that live in the store go by key (read in place by the worker), and the
        // actor keeps its own reference to them for restarts; the others are copied.
        let keys = stored_inputs();
        let mut ctor_args = Vec::with_capacity(args.len());
        let mut ctor_objects = Vec::new();
        for (i, a) in args.iter().enumerate() {
            match keys.get(i + 1).copied().flatten() {
                Some(k) => {
                    let o = pool
                        .services()
                        .rt
                        .object_store()
                        .adopt(k)
                        .map_err(|e| failure(FailureKind::Error, format!("constructor argument {i}: {e}")))?;
                    ctor_args.push(wire::key_marker(k, a.len() as u64).to_vec());
                    ctor_objects.push(o);
                }
                None => ctor_args.push(a.to_vec()),
            }
        }
        let mut a = PyActor {
            pool: Arc::downgrade(pool),
            control,
            worker: None,
            key,
            ctor_args,
            ctor_objects,
            restarts_left: restarts,
            max_task_retries: retries,
        };
        a.construct()?;
        Ok(a)
    }

    /// Starts a process and runs the constructor in it. A constructor that raises fails
    /// with its error; a process lost on the way fails as `ActorDied`.
    fn construct(&mut self) -> Result<(), RawFailure> {
        let pool = self.pool()?;
        let Some(blob) = pool.blob(&self.key) else {
            return Err(failure(FailureKind::BadArguments, "unknown actor class (not registered in this runtime)"));
        };
        let mut w = pool.spawn().map_err(|e| failure(FailureKind::ActorDied, format!("cannot start the actor's process: {e}")))?;
        *lock(&self.control.ch) = Some(w.ch.clone());
        if self.control.killed.load(Ordering::SeqCst) {
            w.ch.close();
        }
        let args: Vec<&[u8]> = self.ctor_args.iter().map(Vec::as_slice).collect();
        let header = wire::op_header(wire::NEW, &self.key, &args).map_err(|m| failure(FailureKind::BadArguments, m))?;
        let out = pool.define_in(&mut w, &self.key, &blob).and_then(|d| match d {
            Some(f) => Ok(Err(f)),
            None => pool.exchange(&mut w, &header, &args, "the constructor's pickled arguments"),
        });
        match out {
            Ok(Ok(_)) => {
                self.worker = Some(w);
                Ok(())
            }
            Ok(Err(f)) => {
                pool.retire(w);
                Err(f)
            }
            Err(e) => Err(failure(FailureKind::ActorDied, pool.lost(w, &e, "the actor's constructor"))),
        }
    }
}

impl RawActor for PyActor {
    fn call(&mut self, method: &str, inputs: &[&[u8]]) -> Result<RawOutput, RawFailure> {
        let r = self.call_once(method, inputs);
        // Gone for good: its name is free again, cluster-wide (from another thread: this is
        // an executor, and freeing it may be a round trip to the head).
        if matches!(&r, Err(f) if f.kind == FailureKind::ActorDied) {
            let (pool, control) = (self.pool.clone(), self.control.clone());
            let _ = std::thread::Builder::new().name("rayhpc-forget".into()).spawn(move || {
                if let Some(pool) = pool.upgrade() {
                    pool.release_name(&control);
                }
            });
        }
        r
    }
}

impl PyActor {
    fn call_once(&mut self, method: &str, inputs: &[&[u8]]) -> Result<RawOutput, RawFailure> {
        let markers = by_key(&stored_inputs(), inputs);
        let mut parts: Vec<&[u8]> = Vec::with_capacity(inputs.len() + 1);
        parts.push(method.as_bytes());
        parts.extend(inputs.iter().enumerate().map(|(i, a)| markers.get(&i).map_or(*a, |m| m.as_slice())));
        let header = wire::op_header(wire::METHOD, &[0; 16], &parts).map_err(|m| failure(FailureKind::BadArguments, m))?;
        let mut retries_left = self.max_task_retries;
        let pool = self.pool()?;
        loop {
            let Some(w) = self.worker.as_mut() else {
                return Err(failure(FailureKind::ActorDied, "its process is gone"));
            };
            let e = match pool.exchange(w, &header, &parts, "the call's pickled arguments") {
                Ok(r) => return r,
                Err(e) => e,
            };
            let w = self.worker.take().expect("taken above");
            let msg = pool.lost(w, &e, "this actor");
            if self.control.killed.load(Ordering::SeqCst) {
                return Err(failure(FailureKind::ActorDied, "it was killed by kill()"));
            }
            if pool.closed.load(Ordering::Acquire) {
                return Err(failure(FailureKind::ActorDied, "the runtime shut down"));
            }
            if self.restarts_left == 0 {
                return Err(failure(FailureKind::ActorDied, msg));
            }
            if self.restarts_left > 0 {
                self.restarts_left -= 1;
            }
            if let Err(f) = self.construct() {
                return Err(failure(FailureKind::ActorDied, format!("{msg}; its restart failed: {}", f.message)));
            }
            if retries_left == 0 {
                return Err(failure(FailureKind::WorkerDied, format!("{msg} (the actor was restarted)")));
            }
            if retries_left > 0 {
                retries_left -= 1;
            }
        }
    }
}

impl Drop for PyActor {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            match self.pool.upgrade() {
                Some(p) => p.retire(w),
                None => drop(w), // closes the channel, ends or kills the process
            }
        }
    }
}
