//! The runtime embedded in the calling process: start-up and shutdown, and the calls of
//! Ray's core API (`get`, `put`, `wait`, `cancel`, `kill`, named actors). Submitting tasks
//! and actors is in `submit`, its configuration in `config`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use rayhpc_sched::{Job, Pool, PoolConfig, ResourceView, Topology};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::actor::ActorHandle;
use crate::codec;
use crate::config::{default_store_bytes, Config};
use crate::error::{Error, Result};
use crate::ids::TaskId;
use crate::object::{Notify, ObjectRef, ObjectView, Slot, Waiter};
use crate::promise::Promise;
use crate::state::{with_current, CoreJob, RuntimeInner, THREAD};
use crate::store::Blob;
use crate::task::{execute, fail_cancelled};
use rayhpc_objstore::{Store, StoreConfig};

/// What [`Runtime::cancel`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The object was already computed (or failed): nothing changed.
    Finished,
    /// The task had not started (queued, or waiting for its arguments): it never will. Its
    /// object failed at once with [`crate::FailureKind::Cancelled`], and so do the tasks that
    /// depend on it.
    Dequeued,
    /// The task had not finished: it was running (or between two attempts, or about to be
    /// queued), and the cancel is recorded in it; it may have ended since, either way. A run
    /// that has not started its call does not start it; a running call is the caller's to
    /// interrupt (a binding signals its worker; see [`crate::raw::current_cancel`]). If the
    /// run fails, whatever the failure, the task fails as [`crate::FailureKind::Cancelled`]
    /// and is not retried; if it succeeds, its value stands.
    Running,
}

/// A handle to a running runtime. Cheap to clone. Call [`Runtime::shutdown`] when done: the
/// executor threads run until then.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("executors", &self.executors()).field("shutdown", &self.is_shutdown()).finish()
    }
}

impl Runtime {
    /// Starts an embedded single-node runtime.
    ///
    /// # Errors
    /// Invalid resource amounts, an empty affinity mask, or threads the OS refused.
    pub fn init(config: Config) -> Result<Runtime> {
        let topology = Topology::detect().map_err(|e| Error::Invalid(format!("cannot read CPU affinity: {e}")))?;
        let executors = config.executors.unwrap_or(topology.len()).max(1);
        let mut resources = vec![("CPU".to_string(), config.num_cpus.unwrap_or(executors as f64)), ("GPU".to_string(), config.num_gpus)];
        resources.extend(config.resources.iter().cloned());
        let store = Store::new(&StoreConfig {
            hugepages: config.hugepages,
            spill_dir: config.spill_dir.clone(),
            full_wait: config.store_full_wait,
            ..StoreConfig::new(config.object_store_memory.unwrap_or_else(default_store_bytes))
        })
        .map_err(|e| Error::Invalid(format!("cannot create the object store: {e}")))?;
        let inner = Arc::new(RuntimeInner {
            pool: OnceLock::new(),
            cpu1: OnceLock::new(),
            store,
            inline_threshold: config.inline_threshold,
            actors: Mutex::new(HashMap::new()),
            shutdown: AtomicBool::new(false),
            node: config.node_id,
        });
        let weak = Arc::downgrade(&inner);
        let hook: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Some(inner) = weak.upgrade() {
                THREAD.with(|st| *st.runtime.borrow_mut() = Some(inner));
            }
        });
        let pc = PoolConfig {
            resources,
            threads: Some(executors),
            pin: config.pin,
            spin: config.spin,
            on_thread_start: Some(hook),
            ..PoolConfig::default()
        };
        let pool = Pool::new(pc, &topology).map_err(|e| match e {
            rayhpc_sched::PoolError::Resource(r) => Error::Resources(r),
            other => Error::Invalid(other.to_string()),
        })?;
        let cpu1 = pool.class(&[("CPU", 1.0)]).ok();
        let _ = inner.pool.set(pool);
        let _ = inner.cpu1.set(cpu1);
        Ok(Runtime { inner })
    }

    /// The runtime of the task or actor running on this thread (`None` outside one).
    pub fn current() -> Option<Runtime> {
        THREAD.try_with(|st| st.runtime.borrow().clone()).ok().flatten().map(|inner| Runtime { inner })
    }

    /// Stops the runtime: queued work is cancelled (its objects fail with
    /// [`Error::Shutdown`]), running work finishes, every thread is joined. Idempotent.
    ///
    /// Called from inside a task it stops everything but cannot join the thread it runs on;
    /// a later call from another thread joins what is left.
    pub fn shutdown(&self) {
        self.inner.shutdown.store(true, Ordering::SeqCst);
        self.inner.pool().shutdown();
        self.inner.actors.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// True once [`Runtime::shutdown`] was called.
    pub fn is_shutdown(&self) -> bool {
        self.inner.is_shutdown()
    }

    /// Number of executor threads.
    pub fn executors(&self) -> usize {
        self.inner.pool.get().map_or(0, |p| p.executors())
    }

    /// Every thread the pool started (executors plus compensation threads).
    pub fn threads(&self) -> usize {
        self.inner.pool().threads()
    }

    /// Each executor's home CPU (the one it is bound to under [`Pin::Cpu`](crate::Pin::Cpu); under the
    /// default [`Pin::Numa`](crate::Pin::Numa) it may run on any CPU of that CPU's NUMA node).
    pub fn executor_cpus(&self) -> Vec<usize> {
        self.inner.pool().executor_cpus().to_vec()
    }

    /// Totals and availability of the logical resources.
    pub fn resources(&self) -> Vec<ResourceView> {
        self.inner.pool().resources()
    }

    /// Adds a logical resource the runtime did not have, `amount` of it (what a node learns
    /// once started: its address, `node:<ip>`).
    ///
    /// # Errors
    /// [`Error::Resources`]: an invalid amount, or a resource the runtime already has.
    pub fn add_resource(&self, name: &str, amount: f64) -> Result<()> {
        self.inner.pool().add_resource(name, amount).map_err(Error::from)
    }

    /// Bytes and objects in the object store, and its capacity.
    pub fn store_usage(&self) -> (usize, usize, usize) {
        let s = &self.inner.store;
        (s.used(), s.objects(), s.capacity())
    }

    /// The node's object store (for tools and bindings that address it directly).
    pub fn object_store(&self) -> &std::sync::Arc<Store> {
        &self.inner.store
    }

    /// What backs the object store's arena (`hugetlb-2M (memfd)`, `thp (madvise)`, ...), and
    /// why a better backing was not used, if it was not.
    pub fn store_backing(&self) -> (String, Option<String>) {
        let s = &self.inner.store;
        (s.backing().to_string(), s.fallback_reason().map(str::to_string))
    }

    /// Stores raw bytes as an object, with one copy into the arena (or inline when small).
    /// Read it back with [`Runtime::get_bytes`], in place.
    ///
    /// # Errors
    /// A store that cannot hold it, or a runtime that is shut down.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<ObjectRef<crate::object::Untyped>> {
        if self.is_shutdown() {
            return Err(Error::Shutdown);
        }
        let id = self.next_task_id().object(0);
        let blob = if bytes.len() <= self.inner.inline_threshold {
            Blob::Inline(bytes.to_vec())
        } else {
            crate::store::put(&self.inner.store, id, bytes)?
        };
        Ok(ObjectRef::from_slot(Slot::ready(id, Ok(blob))))
    }

    /// Stores an object of `len` bytes that `fill` writes in place (inline when small, else
    /// straight into the arena): one copy from wherever `fill` reads.
    ///
    /// # Errors
    /// As [`Runtime::put_bytes`]; `fill`'s own error is returned as it is.
    pub fn put_with<E: From<Error>>(
        &self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<ObjectRef<crate::object::Untyped>, E> {
        if self.is_shutdown() {
            return Err(Error::Shutdown.into());
        }
        let id = self.next_task_id().object(0);
        let blob = if len <= self.inner.inline_threshold {
            let mut b = vec![0; len];
            fill(&mut b)?;
            Blob::Inline(b)
        } else {
            let mut a = self.inner.store.create(id.0, len).map_err(|e| E::from(crate::store::store_error(e)))?;
            fill(a.as_mut_slice())?;
            Blob::Stored(a.seal())
        };
        Ok(ObjectRef::from_slot(Slot::ready(id, Ok(blob))))
    }

    /// An object whose value something outside this runtime will provide (a task run on
    /// another node, an object pulled from one): the ref is handed out now, the
    /// [`Promise`] completes it later. Readers wait as for a task's result.
    ///
    /// # Errors
    /// The runtime is shut down.
    pub fn promise(&self) -> Result<(ObjectRef<crate::object::Untyped>, Promise)> {
        if self.is_shutdown() {
            return Err(Error::Shutdown);
        }
        let id = self.next_task_id().object(0);
        let slot = Slot::new(id);
        let p = Promise::new(slot.clone(), self.inner.store.clone(), self.inner.inline_threshold);
        Ok((ObjectRef::from_slot(slot), p))
    }

    /// An object of this runtime for `object`, sealed into the node's store by another
    /// process and adopted ([`rayhpc_objstore::Store::adopt`]).
    ///
    /// # Errors
    /// The runtime is shut down.
    pub fn put_object(&self, object: rayhpc_objstore::Object) -> Result<ObjectRef<crate::object::Untyped>> {
        if self.is_shutdown() {
            return Err(Error::Shutdown);
        }
        let id = self.next_task_id().object(0);
        Ok(ObjectRef::from_slot(Slot::ready(id, Ok(Blob::Stored(object)))))
    }

    pub(crate) fn next_task_id(&self) -> TaskId {
        self.inner.next_task_id()
    }

    /// Stores `value` as an object.
    ///
    /// # Errors
    /// An unencodable value, or a value the store cannot hold.
    pub fn put<T: Serialize>(&self, value: &T) -> Result<ObjectRef<T>> {
        if self.is_shutdown() {
            return Err(Error::Shutdown);
        }
        let bytes = codec::encode(value)?;
        let id = self.next_task_id().object(0);
        let blob = self.inner.seal(id, bytes)?;
        Ok(ObjectRef::from_slot(Slot::ready(id, Ok(blob))))
    }

    /// Waits for an object and decodes it. A failed task's error comes back as it was.
    ///
    /// # Errors
    /// The producing task's error (or the error of a task it depended on), [`Error::Shutdown`],
    /// or [`Error::Codec`] when the bytes are not a `T`.
    pub fn get<T: DeserializeOwned>(&self, r: &ObjectRef<T>) -> Result<T> {
        self.wait_slot(&r.slot, None);
        read(&r.slot)
    }

    /// As [`Runtime::get`], giving up after `timeout` with [`Error::Timeout`].
    ///
    /// # Errors
    /// As [`Runtime::get`], plus [`Error::Timeout`].
    pub fn get_timeout<T: DeserializeOwned>(&self, r: &ObjectRef<T>, timeout: Duration) -> Result<T> {
        if !self.wait_slot(&r.slot, Some(Instant::now() + timeout)) {
            return Err(Error::Timeout(timeout));
        }
        read(&r.slot)
    }

    /// Gets every object, in order. Fails with the first error in list order.
    ///
    /// # Errors
    /// As [`Runtime::get`].
    pub fn get_all<T: DeserializeOwned>(&self, refs: &[ObjectRef<T>]) -> Result<Vec<T>> {
        refs.iter().map(|r| self.get(r)).collect()
    }

    /// As [`Runtime::get_all`] with one deadline for all of them.
    ///
    /// # Errors
    /// As [`Runtime::get_timeout`].
    pub fn get_all_timeout<T: DeserializeOwned>(&self, refs: &[ObjectRef<T>], timeout: Duration) -> Result<Vec<T>> {
        let deadline = Instant::now() + timeout;
        refs.iter().map(|r| if self.wait_slot(&r.slot, Some(deadline)) { read(&r.slot) } else { Err(Error::Timeout(timeout)) }).collect()
    }

    /// Waits for an object and returns a zero-copy view of its encoded bytes.
    ///
    /// # Errors
    /// As [`Runtime::get`] (no decoding happens).
    pub fn get_bytes<T>(&self, r: &ObjectRef<T>) -> Result<ObjectView> {
        self.wait_slot(&r.slot, None);
        match r.slot.get() {
            Some(Ok(_)) => ObjectView::new(r.slot.clone()),
            Some(Err(e)) => Err(e.clone()),
            None => Err(Error::Shutdown),
        }
    }

    /// Waits until the object is ready (computed, or failed) as [`Runtime::get`] does, running
    /// its task on this thread when it can, without reading it. With a `timeout` the task is
    /// not run here (it could outlast the timeout); false when the timeout passed first.
    pub fn wait_ready<T>(&self, r: &ObjectRef<T>, timeout: Option<Duration>) -> bool {
        self.wait_slot(&r.slot, timeout.map(|t| Instant::now() + t))
    }

    /// Ray's `wait`: returns once `num_returns` of `refs` are ready or `timeout` passes, as
    /// `(ready, not_ready)`. `ready` holds the first `num_returns` ready refs in list order;
    /// `not_ready` the others, in order. A timeout is not an error.
    ///
    /// # Errors
    /// `num_returns` larger than the list ([`Error::Invalid`]).
    #[allow(clippy::type_complexity)]
    pub fn wait<T>(
        &self,
        refs: &[ObjectRef<T>],
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> Result<(Vec<ObjectRef<T>>, Vec<ObjectRef<T>>)> {
        self.wait_for(refs, num_returns, timeout)?;
        let (mut ready, mut rest) = (Vec::with_capacity(num_returns), Vec::new());
        for r in refs {
            if ready.len() < num_returns && r.is_ready() {
                ready.push(r.clone());
            } else {
                rest.push(r.clone());
            }
        }
        Ok((ready, rest))
    }

    /// [`Runtime::wait`] without the two lists: returns once `num_returns` of `refs` are
    /// ready or `timeout` passes (then [`ObjectRef::is_ready`] tells which are). A timeout is
    /// not an error.
    ///
    /// # Errors
    /// `num_returns` larger than the list ([`Error::Invalid`]).
    pub fn wait_for<T>(&self, refs: &[ObjectRef<T>], num_returns: usize, timeout: Option<Duration>) -> Result<()> {
        if num_returns > refs.len() {
            return Err(Error::Invalid(format!("wait: num_returns {num_returns} is larger than the {} refs given", refs.len())));
        }
        // One scan decides both the count and the registrations: a ref that turns ready
        // between two scans would otherwise be neither counted nor waited for.
        let unready: Vec<&ObjectRef<T>> = refs.iter().filter(|r| !r.is_ready()).collect();
        let ready_now = refs.len() - unready.len();
        // A zero timeout is a poll: nothing registered, nothing given back, nobody woken.
        if ready_now < num_returns && timeout != Some(Duration::ZERO) {
            let deadline = timeout.map(|t| Instant::now() + t);
            let group = Arc::new(WaitGroup { remaining: AtomicIsize::new((num_returns - ready_now) as isize), thread: thread::current() });
            for r in &unready {
                r.slot.on_ready(Waiter::Callback(group.clone()));
            }
            self.block(|| loop {
                if group.remaining.load(Ordering::Acquire) <= 0 {
                    break;
                }
                match deadline {
                    None => thread::park(),
                    Some(d) => {
                        let now = Instant::now();
                        if now >= d {
                            break;
                        }
                        thread::park_timeout(d - now);
                    }
                }
            });
            // Leave nothing behind on the objects still pending (a polling loop of short
            // waits would otherwise grow their waiter lists).
            let me: Arc<dyn Notify> = group;
            for r in unready.iter().filter(|r| !r.is_ready()) {
                r.slot.forget_callback(&me);
            }
        }
        Ok(())
    }

    /// Cancels the task that produces `r` (Ray's `cancel`; `force`: the caller will stop a
    /// running call by force). Not started, the task never runs and fails as
    /// [`crate::FailureKind::Cancelled`] at once ([`CancelOutcome::Dequeued`]); running, the
    /// cancel is recorded in the task and decides how it ends ([`CancelOutcome::Running`]);
    /// done, nothing changes ([`CancelOutcome::Finished`]). A second cancel with `force`
    /// upgrades the first. Never blocks; a dequeued task's object is failed on this thread
    /// (its `on_ready` callbacks run here, and its dependents are launched from here).
    ///
    /// An actor call that has not started yet fails as cancelled when its turn comes, and
    /// never runs; one that started runs to its end (the answer is `Running` for both). For a
    /// [`Runtime::promise`]'s object that is not ready the answer is `Running` and nothing
    /// reads the cancel.
    pub fn cancel<T>(&self, r: &ObjectRef<T>, force: bool) -> CancelOutcome {
        let slot = &r.slot;
        if slot.is_ready() {
            return CancelOutcome::Finished;
        }
        // SYNC POINT: raises the level, fences, swaps the job cell (see `Slot::request_cancel`,
        // and `launch` for the other side).
        if let Some(t) = slot.request_cancel(force) {
            fail_cancelled(&t);
            return CancelOutcome::Dequeued;
        }
        // Not `Finished` even if it is done by now: it may be this cancel that ended it (a run
        // that saw the level before its call, or failed after it).
        CancelOutcome::Running
    }

    /// Kills an actor: calls not yet run fail with [`Error::ActorDied`], later calls too; the
    /// call running now (if any) finishes. Its resources are given back and its name freed.
    pub fn kill<A>(&self, actor: &ActorHandle<A>) {
        let c = &actor.cell;
        c.kill(Error::ActorDied { class: c.class.name.clone(), actor: c.id.to_string(), reason: "killed by kill()".into() });
        self.inner.forget_actor(c);
    }

    /// The names of this runtime's live named actors, sorted.
    pub fn actor_names(&self) -> Vec<String> {
        let actors = self.inner.actors.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = actors.iter().filter(|(_, c)| c.dead.get().is_none()).map(|(n, _)| n.clone()).collect();
        names.sort_unstable();
        names
    }

    /// The live actor registered under `name`, if it has state type `A`.
    ///
    /// # Errors
    /// [`Error::NoSuchActor`] when no live actor of that name and type exists.
    pub fn get_actor<A: 'static>(&self, name: &str) -> Result<ActorHandle<A>> {
        let cell = self.inner.actors.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned();
        cell.and_then(ActorHandle::from_cell).ok_or_else(|| Error::NoSuchActor(name.into()))
    }

    /// Runs `f`, which waits for work done outside the runtime's threads on behalf of the
    /// running task or actor call (a language binding's worker process): the job keeps its
    /// resources, and on an executor another thread takes over the executor's other work
    /// meanwhile (actor turns, tasks that fit in the resources left). Elsewhere it just runs
    /// `f`.
    pub fn block_holding<R>(&self, f: impl FnOnce() -> R) -> R {
        self.inner.pool().block_holding(f)
    }

    /// Blocks the calling thread in `f`; on an executor, its CPU goes to other work meanwhile.
    fn block<R>(&self, f: impl FnOnce() -> R) -> R {
        self.inner.pool().block_in_place(f)
    }

    /// Runs the task that produces `slot` on this thread if nobody started it and its
    /// resources can be had now (see `Pool::run_inline`). Returns whether it ran.
    fn help(&self, slot: &Slot) -> bool {
        let Some(class) = slot.queued_class() else { return false };
        let ran = self.inner.pool().run_inline(class, || {
            // A thread whose thread-locals are gone (a wait from a thread-local destructor)
            // does not help: the executors run the task.
            THREAD
                .try_with(|st| {
                    let t = slot.take_job()?;
                    // Inside the task, `Runtime::current()` must be this runtime on any
                    // thread. (An executor's own runtime is set for good, and borrowed while
                    // its job runs: only a thread without one installs it here.)
                    let absent = st.runtime.borrow().is_none();
                    if absent {
                        *st.runtime.borrow_mut() = Some(self.inner.clone());
                    }
                    execute(t, &self.inner, st);
                    if absent {
                        // Dropped after the borrow ends.
                        let mine = st.runtime.borrow_mut().take();
                        drop(mine);
                    }
                    Some(())
                })
                .ok()
                .flatten()
        });
        ran.is_some()
    }

    /// Waits until `slot` is set or the deadline passes. Without a deadline it first runs the
    /// producer here when that is possible (with one, it does not: the task could outlast it).
    fn wait_slot(&self, slot: &Slot, deadline: Option<Instant>) -> bool {
        while deadline.is_none() && !slot.is_ready() {
            if !self.help(slot) {
                break;
            }
        }
        if slot.is_ready() {
            return true;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false; // a poll: nothing given back, nobody woken
        }
        let pool = self.inner.pool();
        if pool.on_executor() {
            // Spin briefly before giving the CPU away: most nested results are moments away.
            if slot.spin(crate::object::spin_until(deadline, Duration::from_micros(20))) {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return slot.is_ready();
            }
            return pool.block_in_place(|| slot.wait(deadline));
        }
        slot.wait(deadline)
    }
}

fn read<T: DeserializeOwned>(slot: &Slot) -> Result<T> {
    match slot.get() {
        Some(Ok(b)) => codec::decode(&b.read()?),
        Some(Err(e)) => Err(e.clone()),
        None => Err(Error::Shutdown),
    }
}

struct WaitGroup {
    remaining: AtomicIsize,
    thread: Thread,
}

impl Notify for WaitGroup {
    fn notify(self: Arc<Self>) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.thread.unpark();
        }
    }
}

/// How the pool runs each job: a task by the task layer, an actor's turn and its creation by
/// the actor layer.
impl Job for CoreJob {
    fn run(self) {
        match self {
            CoreJob::Task(slot) => {
                if let Some(t) = slot.take_job() {
                    with_current(|st, rt| execute(t, rt, st))
                }
            }
            CoreJob::ActorTurn(a) => a.turn(),
            CoreJob::ActorCreate(c) => (*c).run(),
        }
    }

    fn cancel(self) {
        match self {
            CoreJob::Task(slot) => {
                if let Some(t) = slot.take_job() {
                    t.ret.complete(Err(Error::Shutdown));
                }
            }
            CoreJob::ActorTurn(a) => a.cancel(),
            CoreJob::ActorCreate(c) => (*c).cancel(),
        }
    }
}
