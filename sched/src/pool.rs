//! The executor pool: one thread per CPU of the topology (bound to its NUMA node's CPUs, or
//! to its own, see [`Pin`]), work-stealing deques with NUMA-ordered victims, a global
//! injector for submissions from outside, resource admission through the [`Ledger`], and
//! compensation threads for executors that block.
//!
//! # How a job travels
//! 1. [`Pool::submit`] wraps the job with its resource class in a `Runnable` and pushes it on
//!    the submitting executor's own deque, or on the injector when the caller is not an
//!    executor of this pool; then [`Sleep::notify`] wakes a worker if nobody is searching.
//! 2. An executor finds it: own deque, then the injector (one job at a time), then the deques of
//!    the other executors in victim order (same NUMA node first), then the waiting list of
//!    the class it holds a lease for.
//! 3. Admission. A job that needs nothing runs. A job of the class the executor already holds
//!    a *lease* for runs at no cost: the lease (the resources of one request of that class)
//!    stays with the executor across jobs of the same class, so a stream of `{CPU: 1}` tasks
//!    never touches the ledger. Otherwise the executor returns its old lease and asks the
//!    ledger for the new class; when the resources are not free the job waits in the ledger
//!    (FIFO per class) and is admitted, with its resources, by whoever releases them.
//! 4. The job runs. An admitted job's resources are released when it returns. A lease is
//!    returned when its executor goes to sleep or changes class.
//!
//! # Blocking
//! A job that is about to block (a `get` of an object another task computes) calls
//! [`Pool::block_in_place`]: its resources go back to the ledger, and when fewer than one
//! awake thread per CPU remain, a sleeping worker is woken or a compensation thread is
//! started, so nested tasks never deadlock the pool. When the job resumes it takes its
//! resources back even if that oversubscribes them for a while (as Ray does). Compensation
//! threads go back to sleep as soon as there are more awake threads than CPUs.
//!
//! # Shutdown
//! 1. The flag is set and every sleeper woken.
//! 2. Each executor finishes the job it runs, cancels what is left in its deque and exits.
//! 3. [`Pool::shutdown`] cancels what is left in the injector and the ledger, and joins every
//!    thread. No thread outlives it (unless it was called from an executor of the pool).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_deque::{Injector, Steal, Stealer, Worker};
use crossbeam_utils::Backoff;

use crate::resources::{ClassId, Ledger, ResourceError, ResourceView};
use crate::sleep::{Cancelled, Sleep};
use crate::topology::Topology;

/// A unit of work the pool runs. The pool is generic over it, so the runtime above decides
/// what a job is (a task, an actor's turn) and the pool knows nothing of it.
pub trait Job: Send + 'static {
    /// Runs the job on an executor thread. A panic here is a bug of the job type: the
    /// runtime above must catch task panics itself (the executor aborts on one).
    fn run(self);
    /// Called instead of `run` for a job still queued when the pool shuts down.
    fn cancel(self);
}

/// How executors are bound to CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pin {
    /// Not bound: the OS places them anywhere in the process's affinity mask.
    Off,
    /// Each bound to the CPUs of its NUMA node (the default): its memory stays local, while
    /// the OS still balances it against the node's other threads, a driver's among them.
    /// Measured on 2 cores, an embedded runtime's driver submitting empty tasks: with each
    /// executor bound to one CPU, a woken executor preempted the driver on its CPU and could
    /// not move away; throughput was 25-35 % lower and runs were bimodal.
    #[default]
    Numa,
    /// Each bound to one CPU: for executors that have the node's cores to themselves.
    Cpu,
}

/// The CPUs the executor on topology slot `slot` is bound to under `pin`.
fn binding(pin: Pin, topology: &Topology, slot: usize) -> Option<Vec<usize>> {
    let home = topology.cpus[slot];
    match pin {
        Pin::Off => None,
        Pin::Numa => Some(topology.cpus.iter().filter(|c| c.numa == home.numa).map(|c| c.id).collect()),
        Pin::Cpu => Some(vec![home.id]),
    }
}

/// How to build a [`Pool`].
#[derive(Clone)]
pub struct PoolConfig {
    /// Logical resource totals. `CPU` defaults to the number of executors when absent.
    pub resources: Vec<(String, f64)>,
    /// Number of executor threads; defaults to one per CPU of the topology. When larger than
    /// the topology, executors are placed on its CPUs round-robin.
    pub threads: Option<usize>,
    /// How executors are bound to CPUs (default: to their NUMA node's).
    pub pin: Pin,
    /// Upper bound on all threads, executors plus compensation threads (default 4096).
    pub max_threads: usize,
    /// How long an idle executor spins looking for work before it parks (default 50 µs).
    pub spin: Duration,
    /// Prefix of thread names.
    pub thread_name: String,
    /// Runs first on every thread the pool starts (executors and compensation threads), for
    /// the runtime above to install its thread-local context.
    pub on_thread_start: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolConfig")
            .field("resources", &self.resources)
            .field("threads", &self.threads)
            .field("pin", &self.pin)
            .field("max_threads", &self.max_threads)
            .field("spin", &self.spin)
            .finish_non_exhaustive()
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            resources: Vec::new(),
            threads: None,
            pin: Pin::default(),
            max_threads: 4096,
            spin: Duration::from_micros(50),
            thread_name: "rayhpc-exec".into(),
            on_thread_start: None,
        }
    }
}

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A resource total is invalid.
    #[error(transparent)]
    Resource(#[from] ResourceError),
    /// The topology has no CPU (an empty affinity mask).
    #[error("no CPU available to this process")]
    NoCpu,
    /// The OS refused a thread.
    #[error("cannot start executor thread: {0}")]
    Spawn(#[source] std::io::Error),
}

struct Runnable<J> {
    job: J,
    class: ClassId,
    /// True when the resources of `class` were acquired for this very job (it came out of the
    /// ledger's waiting list); it then runs whatever lease the executor holds.
    admitted: bool,
}

/// What the running job holds, so that `block_in_place` can give it back.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Held {
    /// Nothing (a free job, or resources already detached).
    Nothing,
    /// The executor's lease of this class.
    Lease(ClassId),
    /// Resources acquired for this job alone.
    Own(ClassId),
}

struct Shared<J> {
    id: usize,
    injector: Injector<Runnable<J>>,
    stealers: Box<[OnceLock<Stealer<Runnable<J>>>]>,
    registered: AtomicUsize,
    victims: Vec<Vec<usize>>,
    cpus: Vec<usize>,
    ledger: Ledger<Runnable<J>>,
    sleep: Sleep,
    primaries: usize,
    max_threads: usize,
    total_threads: AtomicUsize,
    blocked: AtomicUsize,
    handles: Mutex<Vec<JoinHandle<()>>>,
    spawn_lock: Mutex<()>,
    /// The CPUs each executor is bound to (`None`: not bound).
    binding: Vec<Option<Vec<usize>>>,
    spin: Duration,
    thread_name: String,
    on_start: Option<Arc<dyn Fn() + Send + Sync>>,
    shutdown: AtomicBool,
}

struct Local<J> {
    shared: Arc<Shared<J>>,
    idx: usize,
    deque: Worker<Runnable<J>>,
    lease: Option<ClassId>,
    held: Held,
}

/// What a thread knows of the pools, in one thread-local: in a shared library (the C API's
/// `librayhpc.so`) every access to a thread-local is a call to `__tls_get_addr`, so the hot
/// paths (an executor's loop, a getter running a task inline) reach it once and pass it on.
struct ThreadState {
    /// The executor state of this thread (`Local<J>` of the pool it belongs to), if any.
    local: RefCell<Option<Box<dyn Any>>>,
    /// On a thread that is not an executor: the resources it holds for a job it runs inline
    /// (`(pool id, class)`), see [`Pool::run_inline`].
    inline: Cell<Option<(usize, ClassId)>>,
    /// How deep `run_inline` calls are nested on this thread.
    depth: Cell<usize>,
}

thread_local! {
    static STATE: ThreadState =
        const { ThreadState { local: RefCell::new(None), inline: Cell::new(None), depth: Cell::new(0) } };
}

/// Deepest nesting of [`Pool::run_inline`] on one thread: every level is a job body on the
/// stack, so beyond this the waiter blocks (and is compensated) instead of recursing.
pub const MAX_INLINE_DEPTH: usize = 64;

static NEXT_POOL_ID: AtomicUsize = AtomicUsize::new(1);

/// Runs `f` on this thread's executor state when it is an executor of pool `id`.
fn with_local<J: Job, R>(id: usize, f: impl FnOnce(&mut Local<J>) -> R) -> Option<R> {
    // A thread whose thread-locals are gone (a call from a thread-local destructor) is no
    // executor.
    STATE.try_with(|st| with_local_in(st, id, f)).ok().flatten()
}

/// [`with_local`] on a thread state already reached.
fn with_local_in<J: Job, R>(st: &ThreadState, id: usize, f: impl FnOnce(&mut Local<J>) -> R) -> Option<R> {
    let mut l = st.local.try_borrow_mut().ok()?;
    let local = l.as_mut()?.downcast_mut::<Local<J>>()?;
    (local.shared.id == id).then(|| f(local))
}

/// A pool of executor threads. Cloning gives another handle to the same pool.
pub struct Pool<J: Job> {
    shared: Arc<Shared<J>>,
}

impl<J: Job> Clone for Pool<J> {
    fn clone(&self) -> Self {
        Pool { shared: self.shared.clone() }
    }
}

impl<J: Job> std::fmt::Debug for Pool<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("executors", &self.shared.primaries).finish()
    }
}

impl<J: Job> Pool<J> {
    /// Starts the executors of a pool over `topology`.
    ///
    /// # Errors
    /// Invalid resource totals, an empty topology, or a thread the OS refused.
    pub fn new(config: PoolConfig, topology: &Topology) -> Result<Self, PoolError> {
        if topology.is_empty() {
            return Err(PoolError::NoCpu);
        }
        let n = config.threads.unwrap_or(topology.len()).max(1);
        let mut resources = config.resources.clone();
        if !resources.iter().any(|(k, _)| k == "CPU") {
            resources.push(("CPU".into(), n as f64));
        }
        let ledger = Ledger::new(&resources)?;
        let max_threads = config.max_threads.max(n);
        let slot_victims = |i: usize| -> Vec<usize> {
            // Executor i sits on topology slot i % len; order other executors by their slot's
            // place in the victim order of i's slot, executors sharing a slot first.
            let t = topology.len();
            let order = topology.victim_order(i % t);
            let mut v: Vec<usize> = (0..n).filter(|&j| j != i && j % t == i % t).collect();
            for s in order {
                v.extend((0..n).filter(|&j| j % t == s));
            }
            v
        };
        let shared = Arc::new(Shared {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            injector: Injector::new(),
            stealers: (0..max_threads).map(|_| OnceLock::new()).collect(),
            registered: AtomicUsize::new(0),
            victims: (0..n).map(slot_victims).collect(),
            cpus: (0..n).map(|i| topology.cpus[i % topology.len()].id).collect(),
            ledger,
            sleep: Sleep::new((n / 2).max(1)),
            primaries: n,
            max_threads,
            total_threads: AtomicUsize::new(0),
            blocked: AtomicUsize::new(0),
            handles: Mutex::new(Vec::new()),
            spawn_lock: Mutex::new(()),
            binding: (0..n).map(|i| binding(config.pin, topology, i % topology.len())).collect(),
            spin: config.spin,
            thread_name: config.thread_name,
            on_start: config.on_thread_start,
            shutdown: AtomicBool::new(false),
        });
        let pool = Pool { shared };
        for i in 0..n {
            if let Err(e) = pool.spawn(i) {
                pool.shutdown();
                return Err(PoolError::Spawn(e));
            }
        }
        Ok(pool)
    }

    fn spawn(&self, idx: usize) -> std::io::Result<()> {
        let shared = self.shared.clone();
        let cpus = shared.binding.get(idx).cloned().flatten();
        let name = format!("{}-{idx}", shared.thread_name);
        shared.total_threads.fetch_add(1, Ordering::SeqCst);
        let deque = Worker::new_fifo();
        let _ = shared.stealers[idx].set(deque.stealer());
        shared.registered.fetch_max(idx + 1, Ordering::SeqCst);
        let s2 = shared.clone();
        let h = std::thread::Builder::new().name(name).spawn(move || executor_main(s2, idx, cpus, deque));
        match h {
            Ok(h) => {
                shared.handles.lock().unwrap_or_else(|e| e.into_inner()).push(h);
                Ok(())
            }
            Err(e) => {
                shared.total_threads.fetch_sub(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Interns a resource request into a class (cache the result: this takes a lock).
    ///
    /// # Errors
    /// Invalid amounts, and requests this pool could never satisfy.
    pub fn class(&self, request: &[(&str, f64)]) -> Result<ClassId, ResourceError> {
        self.shared.ledger.class(request)
    }

    /// Queues `job`, to run once the resources of `class` are free.
    /// A job submitted after shutdown is cancelled at once.
    pub fn submit(&self, job: J, class: ClassId) {
        let sh = &*self.shared;
        if sh.shutdown.load(Ordering::Acquire) {
            job.cancel();
            return;
        }
        let mut r = Some(Runnable { job, class, admitted: false });
        let pushed = with_local::<J, _>(sh.id, |l| l.deque.push(r.take().expect("set above")));
        if pushed.is_none() {
            sh.injector.push(r.take().expect("not pushed locally"));
        }
        sh.sleep.notify();
    }

    /// Number of executor threads (one per CPU unless configured otherwise).
    pub fn executors(&self) -> usize {
        self.shared.primaries
    }

    /// Each executor's home CPU: its place in the victim order, and the CPU it is bound to
    /// under [`Pin::Cpu`] (under [`Pin::Numa`] it may run on any CPU of that CPU's node).
    pub fn executor_cpus(&self) -> &[usize] {
        &self.shared.cpus
    }

    /// All threads started so far, executors and compensation threads.
    pub fn threads(&self) -> usize {
        self.shared.total_threads.load(Ordering::SeqCst)
    }

    /// Totals and availability of every resource.
    pub fn resources(&self) -> Vec<ResourceView> {
        self.shared.ledger.snapshot()
    }

    /// Adds a resource the pool did not have (see [`crate::resources::Ledger::add`]).
    ///
    /// # Errors
    /// An invalid amount, or a resource the pool already has.
    pub fn add_resource(&self, name: &str, amount: f64) -> Result<(), ResourceError> {
        self.shared.ledger.add(name, amount)
    }

    /// What a class asks for, by resource name.
    pub fn class_request(&self, class: ClassId) -> Vec<(String, f64)> {
        self.shared.ledger.named_request(class)
    }

    /// Jobs waiting for resources.
    pub fn waiting_for_resources(&self) -> usize {
        self.shared.ledger.waiting_len()
    }

    /// True when the calling thread is an executor of this pool.
    pub fn on_executor(&self) -> bool {
        with_local::<J, _>(self.shared.id, |_| ()).is_some()
    }

    /// Takes the resources of `class` for a holder outside any job (an actor for its
    /// lifetime). Returns false when they are not free now.
    pub fn try_acquire(&self, class: ClassId) -> bool {
        self.shared.ledger.try_acquire(class)
    }

    /// Gives back resources taken by [`Pool::try_acquire`] or [`Pool::detach_resources`].
    pub fn release(&self, class: ClassId) {
        release(&self.shared, class);
    }

    /// Called from inside a running job: the resources it runs with stop being the job's and
    /// become the caller's (for example an actor constructor keeps them for the actor's
    /// life). Returns their class, to hand to [`Pool::release`] later; `None` outside a job
    /// of this pool or when it holds nothing.
    pub fn detach_resources(&self) -> Option<ClassId> {
        with_local::<J, _>(self.shared.id, |l| match std::mem::replace(&mut l.held, Held::Nothing) {
            Held::Nothing => None,
            Held::Lease(c) => {
                l.lease = None;
                Some(c)
            }
            Held::Own(c) => Some(c),
        })
        .flatten()
    }

    /// Runs `f`, which blocks, from inside a job: the job's resources are given back while it
    /// blocks and another thread keeps the CPU busy. On another thread it gives back what
    /// that thread holds for a job it runs inline ([`Pool::run_inline`]), if anything.
    pub fn block_in_place<R>(&self, f: impl FnOnce() -> R) -> R {
        let sh = &self.shared;
        // An executor running a job that is not under its lease (a free job, an admitted
        // one) may still hold an idle lease from earlier jobs: give that back too, or it
        // could hold the very CPU the awaited work needs.
        let state = with_local::<J, _>(sh.id, |l| {
            let h = l.held;
            if let Held::Lease(_) = h {
                l.lease = None;
            }
            (h, l.take_idle_lease())
        });
        let held = state.map(|(h, idle)| {
            if let Some(c) = idle {
                release(sh, c);
            }
            h
        });
        let Some(held) = held else {
            return match STATE.try_with(|st| st.inline.get()).ok().flatten() {
                Some((pool, c)) if pool == sh.id => {
                    release(sh, c);
                    let out = f();
                    sh.ledger.force_acquire(c);
                    out
                }
                _ => f(),
            };
        };
        match held {
            Held::Lease(c) | Held::Own(c) => release(sh, c),
            Held::Nothing => {}
        }
        sh.blocked.fetch_add(1, Ordering::SeqCst);
        self.compensate();
        let out = f();
        sh.blocked.fetch_sub(1, Ordering::SeqCst);
        match held {
            Held::Lease(c) => {
                sh.ledger.force_acquire(c);
                with_local::<J, _>(sh.id, |l| {
                    if let Some(old) = l.lease.replace(c) {
                        release(sh, old);
                    }
                });
            }
            Held::Own(c) => sh.ledger.force_acquire(c),
            Held::Nothing => {}
        }
        out
    }

    /// Runs `f`, which waits for work done outside the pool's threads on behalf of the running
    /// job (a worker process running the job's code): unlike [`Pool::block_in_place`] the
    /// job keeps its resources (that work uses them), but another thread is woken or started
    /// so that jobs which fit in what is left (free jobs such as actor turns) still run.
    pub fn block_holding<R>(&self, f: impl FnOnce() -> R) -> R {
        let sh = &self.shared;
        if with_local::<J, _>(sh.id, |_| ()).is_none() {
            return f();
        }
        sh.blocked.fetch_add(1, Ordering::SeqCst);
        self.compensate();
        let out = f();
        sh.blocked.fetch_sub(1, Ordering::SeqCst);
        out
    }

    /// Runs a job's body `f` on the calling thread, now, with the resources of `class`: for a
    /// thread about to wait for that very job's result (Ray would block the caller; running
    /// the job here avoids both the wait and a compensation thread per level of nesting).
    ///
    /// The resources: those the caller already holds when they are of `class` (a blocked
    /// parent lends its CPU to its child), else taken from the ledger if free. When they are
    /// not free, or inline calls are nested [`MAX_INLINE_DEPTH`] deep, `f` is not called and
    /// `None` is returned: the job then runs on an executor as usual. `f` returns `None` when
    /// it found the job already taken.
    pub fn run_inline<R>(&self, class: ClassId, f: impl FnOnce() -> Option<R>) -> Option<R> {
        // A thread whose thread-locals are gone does not run the job: the executors do.
        STATE.try_with(|st| self.run_inline_in(st, class, f)).ok().flatten()
    }

    fn run_inline_in<R>(&self, st: &ThreadState, class: ClassId, f: impl FnOnce() -> Option<R>) -> Option<R> {
        let sh = &self.shared;
        let depth = st.depth.get();
        if depth >= MAX_INLINE_DEPTH || sh.shutdown.load(Ordering::Acquire) {
            return None;
        }
        // An idle lease (the running job is not under it) is given back first, so that it
        // does not hold the resources asked for below.
        let on_executor = with_local_in::<J, _>(st, sh.id, |l| (l.held, l.take_idle_lease())).map(|(h, idle)| {
            if let Some(c) = idle {
                release(sh, c);
            }
            h
        });
        let holding = match on_executor {
            Some(Held::Lease(c) | Held::Own(c)) => Some(c),
            Some(Held::Nothing) => None,
            None => st.inline.get().filter(|(p, _)| *p == sh.id).map(|(_, c)| c),
        };
        let acquired = if class == ClassId::FREE || holding == Some(class) {
            false
        } else if sh.ledger.try_acquire(class) {
            true
        } else {
            return None;
        };
        // While `f` runs, this thread holds `class` for it (so that a block inside gives the
        // right resources back).
        let saved_exec =
            if acquired { with_local_in::<J, _>(st, sh.id, |l| std::mem::replace(&mut l.held, Held::Own(class))) } else { None };
        let saved_inline = (acquired && on_executor.is_none()).then(|| st.inline.replace(Some((sh.id, class))));
        st.depth.set(depth + 1);
        let out = f();
        st.depth.set(depth);
        if let Some(prev) = saved_inline {
            st.inline.set(prev);
        }
        if let Some(prev) = saved_exec {
            with_local_in::<J, _>(st, sh.id, |l| l.held = prev);
        }
        if acquired {
            release(sh, class);
        }
        out
    }

    /// Keeps one awake thread per executor while some are blocked.
    fn compensate(&self) {
        let sh = &self.shared;
        if awake(sh) >= sh.primaries as isize || sh.sleep.wake_one() {
            return;
        }
        let _g = sh.spawn_lock.lock().unwrap_or_else(|e| e.into_inner());
        let idx = sh.registered.load(Ordering::SeqCst);
        if idx < sh.max_threads && !sh.shutdown.load(Ordering::SeqCst) {
            // A refused thread leaves the pool one executor short while this job blocks; the
            // other executors still make progress.
            let _ = self.spawn(idx);
        }
    }

    /// Stops the pool: cancels queued jobs, lets running ones finish and joins every thread.
    /// Idempotent. Called from one of the pool's own executors, it stops the pool without
    /// joining (a thread cannot join itself); the threads then exit on their own.
    pub fn shutdown(&self) {
        let sh = &*self.shared;
        sh.shutdown.store(true, Ordering::SeqCst);
        // A compensation spawn checks the flag under this lock: once we have held it, every
        // spawn that saw the flag clear has registered its handle, and no later one starts.
        drop(sh.spawn_lock.lock().unwrap_or_else(|e| e.into_inner()));
        sh.sleep.shutdown();
        if self.on_executor() {
            // A thread cannot join itself: cancel what is queued and let the executors exit
            // on their own; a later call from another thread joins them.
            drain_cancel(sh);
            return;
        }
        loop {
            drain_cancel(sh);
            let hs: Vec<JoinHandle<()>> = std::mem::take(&mut *sh.handles.lock().unwrap_or_else(|e| e.into_inner()));
            if hs.is_empty() {
                break;
            }
            for h in hs {
                // A panicking executor already aborted the process (see `executor_main`).
                let _ = h.join();
            }
        }
        drain_cancel(sh);
    }

    /// True once [`Pool::shutdown`] was called.
    pub fn is_shutdown(&self) -> bool {
        self.shared.shutdown.load(Ordering::Acquire)
    }
}

fn drain_cancel<J: Job>(sh: &Shared<J>) {
    loop {
        match sh.injector.steal() {
            Steal::Success(r) => r.job.cancel(),
            Steal::Retry => continue,
            Steal::Empty => break,
        }
    }
    // Jobs in the deque of an executor that is blocked on one of them: nobody steals after
    // the flag is set, so cancel them here (the blocked job then sees its result fail).
    for s in sh.stealers[..sh.registered.load(Ordering::SeqCst)].iter().filter_map(OnceLock::get) {
        loop {
            match s.steal() {
                Steal::Success(r) => r.job.cancel(),
                Steal::Retry => continue,
                Steal::Empty => break,
            }
        }
    }
    for r in sh.ledger.drain_waiting() {
        r.job.cancel();
    }
}

/// Gives `class` back to the ledger and schedules what that admits.
fn release<J: Job>(sh: &Shared<J>, class: ClassId) {
    if class == ClassId::FREE {
        return;
    }
    let mut admitted = Vec::new();
    sh.ledger.release(class, &mut admitted);
    if admitted.is_empty() {
        return;
    }
    for (class, r) in admitted {
        sh.injector.push(Runnable { job: r.job, class, admitted: true });
    }
    sh.sleep.notify();
}

/// Aborts the process if an executor unwinds: a job type must catch its own panics, and an
/// executor that vanished would strand every job queued on it.
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("rayhpc: fatal: a job panicked through the executor loop; aborting");
            std::process::abort();
        }
    }
}

fn executor_main<J: Job>(shared: Arc<Shared<J>>, idx: usize, cpus: Option<Vec<usize>>, deque: Worker<Runnable<J>>) {
    let _guard = AbortOnUnwind;
    if let Some(cpus) = cpus {
        // CPUs outside the mask (the mask changed since start-up) leave this executor
        // unbound, which is still correct.
        let _ = crate::sys::pin_current_thread(&cpus);
    }
    if let Some(f) = &shared.on_start {
        f();
    }
    let local = Local { shared: shared.clone(), idx, deque, lease: None, held: Held::Nothing };
    STATE.with(|st| {
        *st.local.borrow_mut() = Some(Box::new(local));
        executor_loop(st, &shared, idx);
        st.local.borrow_mut().take();
    });
}

/// An executor's life, from its start to the pool's shutdown.
fn executor_loop<J: Job>(st: &ThreadState, sh: &Shared<J>, idx: usize) {
    let me = || with_local_in::<J, _>(st, sh.id, |l| l.find()).flatten();
    let mut searching = false;
    let mut spin_start = Instant::now();
    let backoff = Backoff::new();
    loop {
        if sh.shutdown.load(Ordering::Acquire) {
            if searching {
                sh.sleep.stop_searching();
            }
            break;
        }
        if let Some(r) = me() {
            if searching {
                sh.sleep.found_work(|| more_work(st, sh));
                searching = false;
            }
            backoff.reset();
            run(st, sh, r);
            if idx >= sh.primaries && retire_if_surplus(st, sh, idx) {
                searching = true;
                spin_start = Instant::now();
            }
            continue;
        }
        if !searching && sh.sleep.start_searching() {
            searching = true;
            spin_start = Instant::now();
            backoff.reset();
        }
        if searching && spin_start.elapsed() < sh.spin {
            if backoff.is_completed() {
                std::thread::yield_now();
            } else {
                backoff.snooze();
            }
            continue;
        }
        if searching {
            sh.sleep.stop_searching();
        }
        searching = go_to_sleep(st, sh, idx);
        spin_start = Instant::now();
        backoff.reset();
    }
    // Exit: cancel what is left in this executor's deque; return the lease.
    let (rest, lease) = with_local_in::<J, _>(st, sh.id, |l| (l.drain_deque(), l.lease.take())).unwrap_or_default();
    if let Some(c) = lease {
        // Through `release`: what that admits goes to the injector, which shutdown drains.
        release(sh, c);
    }
    for r in rest {
        r.job.cancel();
    }
}

/// Threads neither parked nor blocked in [`Pool::block_in_place`] (a racy estimate: the
/// counters are read one after the other).
fn awake<J: Job>(sh: &Shared<J>) -> isize {
    sh.total_threads.load(Ordering::SeqCst) as isize - sh.sleep.sleeping() as isize - sh.blocked.load(Ordering::SeqCst) as isize
}

/// Whether work is visibly queued beyond what this executor just took: its own deque or
/// the injector.
fn more_work<J: Job>(st: &ThreadState, sh: &Shared<J>) -> bool {
    !sh.injector.is_empty() || with_local_in::<J, _>(st, sh.id, |l| !l.deque.is_empty()).unwrap_or(false)
}

/// Steps 2–3 of the idle protocol (see `sleep.rs`): return the lease, register as a sleeper,
/// look once more, park. Returns true when a waker woke it: the worker then counts as a
/// searcher. False when the last look found work (which it ran) or the pool stopped it.
fn go_to_sleep<J: Job>(st: &ThreadState, sh: &Shared<J>, idx: usize) -> bool {
    if let Some(Some(c)) = with_local_in::<J, _>(st, sh.id, |l| l.lease.take()) {
        release(sh, c);
    }
    sh.sleep.prepare_sleep(idx);
    let found = with_local_in::<J, _>(st, sh.id, |l| l.find()).flatten();
    if found.is_some() || sh.shutdown.load(Ordering::Acquire) {
        if sh.sleep.cancel_sleep(idx) == Cancelled::WasWoken {
            // The waker counted this worker as a searcher; it found work at once.
            sh.sleep.found_work(|| more_work(st, sh));
        }
        if let Some(r) = found {
            run(st, sh, r);
        }
        return false;
    }
    // Woken by a waker: it counted this worker as a searcher; the caller searches (or, at
    // shutdown, stops searching).
    sh.sleep.park(idx)
}

/// A compensation thread whose blocked executor resumed goes back to sleep. Returns true when
/// it slept and was woken as a searcher (see [`go_to_sleep`]).
fn retire_if_surplus<J: Job>(st: &ThreadState, sh: &Shared<J>, idx: usize) -> bool {
    if awake(sh) <= sh.primaries as isize {
        return false;
    }
    // Hand this thread's queued jobs to the others before sleeping.
    let rest = with_local_in::<J, _>(st, sh.id, Local::drain_deque).unwrap_or_default();
    let any = !rest.is_empty();
    for r in rest {
        sh.injector.push(r);
    }
    if any {
        sh.sleep.notify();
    }
    go_to_sleep(st, sh, idx)
}

impl<J: Job> Local<J> {
    /// Everything queued on this executor's own deque.
    fn drain_deque(&mut self) -> Vec<Runnable<J>> {
        std::iter::from_fn(|| self.deque.pop()).collect()
    }

    /// The lease when the running job does not run under it (a free or admitted job, or
    /// none): idle resources, to give back before blocking or asking the ledger.
    fn take_idle_lease(&mut self) -> Option<ClassId> {
        if matches!(self.held, Held::Lease(_)) {
            None
        } else {
            self.lease.take()
        }
    }

    fn find(&mut self) -> Option<Runnable<J>> {
        if let Some(r) = self.deque.pop() {
            return Some(r);
        }
        let sh = &*self.shared;
        // One job at a time from the injector, not a batch: the driver's submissions then
        // start in submission order across executors (as Ray users expect), and a job is
        // never hoarded behind a long one in a busy executor's deque. Measured on 2 cores:
        // batch submission throughput is within noise of taking batches.
        loop {
            match sh.injector.steal() {
                Steal::Success(r) => return Some(r),
                Steal::Retry => continue,
                Steal::Empty => break,
            }
        }
        let registered = sh.registered.load(Ordering::Acquire);
        let steal_from = |v: usize, me: &Worker<Runnable<J>>| -> Option<Runnable<J>> {
            let s = sh.stealers[v].get()?;
            loop {
                match s.steal_batch_and_pop(me) {
                    Steal::Success(r) => return Some(r),
                    Steal::Retry => continue,
                    Steal::Empty => return None,
                }
            }
        };
        if self.idx < sh.primaries {
            for &v in &sh.victims[self.idx] {
                if let Some(r) = steal_from(v, &self.deque) {
                    return Some(r);
                }
            }
            for v in sh.primaries..registered {
                if let Some(r) = steal_from(v, &self.deque) {
                    return Some(r);
                }
            }
        } else {
            for k in 1..registered {
                let v = (self.idx + k) % registered;
                if let Some(r) = steal_from(v, &self.deque) {
                    return Some(r);
                }
            }
        }
        let class = self.lease?;
        // Jobs of the leased class that could not get resources: hand the lease over.
        sh.ledger.handoff(class).map(|r| Runnable { job: r.job, class, admitted: false })
    }
}

/// Admission (step 3 of the module doc) and execution of one job.
fn run<J: Job>(st: &ThreadState, sh: &Shared<J>, r: Runnable<J>) {
    if sh.shutdown.load(Ordering::Acquire) {
        r.job.cancel();
        return;
    }
    let class = r.class;
    let held = if r.admitted {
        Held::Own(class)
    } else if class == ClassId::FREE {
        Held::Nothing
    } else {
        let lease = with_local_in::<J, _>(st, sh.id, |l| l.lease).flatten();
        if lease != Some(class) {
            if let Some(old) = lease {
                with_local_in::<J, _>(st, sh.id, |l| l.lease = None);
                release(sh, old);
            }
            match sh.ledger.acquire_or_wait(class, r) {
                Some(r2) => {
                    with_local_in::<J, _>(st, sh.id, |l| l.lease = Some(class));
                    return run_held(st, sh, r2.job, Held::Lease(class));
                }
                None => return, // queued in the ledger; admitted on a later release
            }
        }
        Held::Lease(class)
    };
    run_held(st, sh, r.job, held);
}

fn run_held<J: Job>(st: &ThreadState, sh: &Shared<J>, job: J, held: Held) {
    with_local_in::<J, _>(st, sh.id, |l| l.held = held);
    job.run();
    let still = with_local_in::<J, _>(st, sh.id, |l| std::mem::replace(&mut l.held, Held::Nothing));
    if let Some(Held::Own(c)) = still {
        release(sh, c);
    }
}
