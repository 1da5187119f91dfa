//! Task specs, dependency resolution and execution.
//!
//! A task travels: `RemoteFn::remote` → [`crate::Runtime`] builds a [`TaskSpec`] (function
//! id and entry, argument bytes or refs, resource class, retry policy, result slot) → if
//! some argument refs are not ready, a [`Pending`] counts them down → the spec goes to the
//! pool as a [`CoreJob`] → an executor runs it ([`execute`]): reads its arguments, calls the
//! function (panics caught), and completes the result slot, inline or through the store, or
//! requeues itself when a retry is due.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rayhpc_sched::{ClassId, Job};

use crate::actor::{ActorCell, CreateSpec};
use crate::error::{Error, FailureKind, TaskError};
use crate::function::{ArgSpec, Failure, FnEntry};
use crate::ids::{ObjectId, TaskId};
use crate::object::{Notify, Slot, Waiter};
use crate::runtime::{with_current, RuntimeInner, ThreadState, THREAD};
use crate::store::Bytes;

/// Everything needed to run one task, here or elsewhere.
pub(crate) struct TaskSpec {
    /// The stable id: what a spec sent to another node is known by (unused on one node).
    #[allow(dead_code)]
    pub id: TaskId,
    pub func: &'static FnEntry,
    pub args: Vec<ArgSpec>,
    pub class: ClassId,
    /// Retries left for application errors (-1: forever), used only with `retry_exceptions`.
    pub retries_left: i32,
    pub retry_exceptions: bool,
    pub attempts: u32,
    /// A per-call name shown in errors instead of the function's.
    pub name: Option<Arc<str>>,
    pub ret: Arc<Slot>,
}

/// What the pool runs.
pub(crate) enum CoreJob {
    /// A task, parked in its result slot (see [`Slot::take_job`]): the pool's queue entry
    /// may find it already taken by a thread that ran it inline.
    Task(Arc<Slot>),
    ActorTurn(Arc<ActorCell>),
    ActorCreate(Box<CreateSpec>),
}

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

/// Work that waits for its argument refs before it can be queued.
pub(crate) enum Work {
    Task(Box<TaskSpec>),
    ActorCreate(Box<CreateSpec>),
}

impl Work {
    fn args(&self) -> &[ArgSpec] {
        match self {
            Work::Task(t) => &t.args,
            Work::ActorCreate(c) => &c.args,
        }
    }
}

/// Queues ready work on the pool.
pub(crate) fn launch(rt: &RuntimeInner, work: Work, class: ClassId) {
    match work {
        Work::Task(t) => {
            let slot = t.ret.clone();
            slot.set_job(t);
            rt.pool().submit(CoreJob::Task(slot), class);
        }
        Work::ActorCreate(c) => rt.pool().submit(CoreJob::ActorCreate(c), class),
    }
}

/// Work waiting for some of its argument refs.
pub(crate) struct Pending {
    remaining: AtomicUsize,
    job: Mutex<Option<(Work, ClassId)>>,
    rt: Arc<RuntimeInner>,
}

impl Notify for Pending {
    fn notify(self: Arc<Self>) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let job = self.job.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some((job, class)) = job {
                launch(&self.rt, job, class);
            }
        }
    }
}

/// Queues `job` now if its argument refs are ready, else once they are.
pub(crate) fn submit_when_ready(rt: &Arc<RuntimeInner>, job: Work, class: ClassId) {
    let unready = job.args().iter().filter(|a| matches!(a, ArgSpec::Ref(s) if !s.is_ready())).count();
    if unready == 0 {
        launch(rt, job, class);
        return;
    }
    let slots: Vec<Arc<Slot>> = job
        .args()
        .iter()
        .filter_map(|a| match a {
            ArgSpec::Ref(s) if !s.is_ready() => Some(s.clone()),
            _ => None,
        })
        .collect();
    // One extra count, dropped after every registration, so that the job cannot start
    // while its waits are still being registered.
    let p = Arc::new(Pending { remaining: AtomicUsize::new(slots.len() + 1), job: Mutex::new(Some((job, class))), rt: rt.clone() });
    for s in slots {
        s.on_ready(Waiter::Callback(p.clone()));
    }
    p.notify();
}

/// The store keys of the running call's inputs, as `with_inputs` saw them.
pub(crate) fn stored_inputs() -> Vec<Option<u128>> {
    THREAD.try_with(|st| st.stored_inputs.borrow().clone()).unwrap_or_default()
}

/// Resolves argument bytes and runs `f` over them (stored arguments stay pinned meanwhile).
/// `Err` carries the error of the first failed argument, which becomes the task's own result
/// (Ray's propagation).
pub(crate) fn with_inputs<R>(args: &[ArgSpec], f: impl FnOnce(&[&[u8]]) -> R) -> Result<R, Error> {
    THREAD.with(|st| with_inputs_in(st, args, f))
}

/// [`with_inputs`] on this thread's state, already reached.
pub(crate) fn with_inputs_in<R>(st: &ThreadState, args: &[ArgSpec], f: impl FnOnce(&[&[u8]]) -> R) -> Result<R, Error> {
    let held = args
        .iter()
        .map(|a| match a {
            ArgSpec::Value(b) => Ok(Bytes::Inline(b.as_slice())),
            ArgSpec::Ref(s) => match s.get() {
                Some(Ok(blob)) => blob.read(),
                Some(Err(e)) => Err(e.clone()),
                None => Err(Error::Invalid(format!("argument object {} was not ready when the task started", s.id))),
            },
        })
        .collect::<Result<Vec<Bytes<'_>>, Error>>()?;
    let slices: Vec<&[u8]> = held.iter().map(|b| &**b).collect();
    let keys: Vec<Option<u128>> = held
        .iter()
        .map(|b| match b {
            Bytes::Stored(v) => Some(v.key()),
            Bytes::Inline(_) => None,
        })
        .collect();
    // Nested calls (a blocked call lending its thread) save and restore the outer call's.
    let outer = std::mem::replace(&mut *st.stored_inputs.borrow_mut(), keys);
    let out = f(&slices);
    *st.stored_inputs.borrow_mut() = outer;
    Ok(out)
}

/// Runs `f`, turning a panic into a [`Failure`].
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(Failure::new(FailureKind::Panic, panic_message(&*p))),
    }
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

pub(crate) fn task_error(function: &Arc<str>, f: Failure, attempts: u32) -> Error {
    Error::Task(Box::new(TaskError { function: function.clone(), kind: f.kind, message: f.message, attempts, payload: f.payload }))
}

/// The result object of the task running on this thread.
pub(crate) fn current_task() -> Option<ObjectId> {
    THREAD.try_with(|st| st.task.get()).ok().flatten()
}

/// Runs a task on this thread (whose state is `st`) and completes its result, or launches
/// it again when it failed and may be retried.
pub(crate) fn execute(mut t: Box<TaskSpec>, rt: &RuntimeInner, st: &ThreadState) {
    t.attempts += 1;
    // Inline runs nest on one thread: the outer task's id comes back after.
    let outer = st.task.replace(Some(t.ret.id));
    let outcome = with_inputs_in(st, &t.args, |inp| guarded(|| (t.func.invoke)(inp)));
    st.task.set(outer);
    let outcome = match outcome {
        Err(e) => {
            t.ret.complete(Err(e));
            return;
        }
        Ok(out) => out,
    };
    match outcome {
        Ok(out) => {
            t.ret.complete(rt.seal_output(t.ret.id, out));
        }
        Err(f) => {
            // A lost worker is a system failure: retried up to `max_retries` whatever
            // `retry_exceptions` says (Ray's rule); application errors only with it.
            let retryable = match f.kind {
                FailureKind::WorkerDied => true,
                FailureKind::BadArguments | FailureKind::Cancelled => false,
                _ => t.retry_exceptions,
            };
            let retry = retryable && t.retries_left != 0;
            if retry && !rt.is_shutdown() {
                if t.retries_left > 0 {
                    t.retries_left -= 1;
                }
                let class = t.class;
                launch(rt, Work::Task(t), class);
            } else {
                let e = task_error(t.name.as_ref().unwrap_or(&t.func.name), f, t.attempts);
                t.ret.complete(Err(e));
            }
        }
    }
}
