//! Tasks: dependency resolution (an actor's creation waits for its argument refs here too)
//! and execution.
//!
//! A task travels: `RemoteFn::remote` → [`crate::Runtime`] builds a [`TaskSpec`] (function
//! id and entry, argument bytes or refs, resource class, retry policy, result slot) → if
//! some argument refs are not ready, a [`Pending`] counts them down → the spec goes to the
//! pool as a [`CoreJob`] → an executor runs it ([`execute`]): reads its arguments, calls the
//! function (panics caught), and completes the result slot, inline or through the store, or
//! requeues itself when a retry is due.
//!
//! From its submission to its end, whenever nobody runs it, the spec waits in its result
//! slot, where a cancel can take it (see the `object` module doc, Cancellation). The checks
//! of the cancel level live here: [`launch`] looks after parking a task to queue it (a
//! first launch, the launch after its arguments, a retry); [`execute`] looks before the call
//! (a hint) and after a failed one (a failure while cancelled is the cancel's, and never
//! retried).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rayhpc_sched::ClassId;

use crate::error::FailureKind;
use crate::ids::ObjectId;
use crate::invoke::{guarded, task_error, Failure};
use crate::object::{ArgSpec, Notify, Slot, TaskSpec, Waiter};
use crate::state::{with_inputs_in, CoreJob, CreateSpec, RuntimeInner, ThreadState, THREAD};

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

/// Queues ready work on the pool. A task is parked in its result slot first; a cancel seen
/// then fails it here instead (whether this is its first launch or a retry).
pub(crate) fn launch(rt: &RuntimeInner, work: Work, class: ClassId) {
    match work {
        Work::Task(t) => {
            let slot = t.ret.clone();
            // SYNC POINT: `park_job` parks, fences and reads the cancel level (pairs with the
            // fence of `Slot::request_cancel`): a cancel that did not find the task parked
            // (it was running its last attempt, or waited in `Pending::notify`) is seen here.
            if let Some(t) = slot.park_job(t) {
                fail_cancelled(&t);
                return;
            }
            rt.pool().submit(CoreJob::Task(slot), class);
        }
        Work::ActorCreate(c) => rt.pool().submit(CoreJob::ActorCreate(c), class),
    }
}

/// What a [`Pending`] launches once its argument refs are ready.
enum Waiting {
    /// A task, parked meanwhile in its result slot ([`Slot::park_waiting`]): a cancel takes
    /// it from there and fails it at once, without waiting for the arguments.
    Task(Arc<Slot>),
    ActorCreate(Box<CreateSpec>),
}

/// Work waiting for some of its argument refs.
pub(crate) struct Pending {
    remaining: AtomicUsize,
    job: Mutex<Option<(Waiting, ClassId)>>,
    rt: Arc<RuntimeInner>,
}

impl Notify for Pending {
    fn notify(self: Arc<Self>) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let job = self.job.lock().unwrap_or_else(|e| e.into_inner()).take();
            match job {
                // Taken from its slot and parked again by `launch`, which looks for a cancel
                // that came meanwhile. Not there: a cancel took it, and failed it.
                Some((Waiting::Task(slot), class)) => {
                    if let Some(t) = slot.take_job() {
                        launch(&self.rt, Work::Task(t), class);
                    }
                }
                Some((Waiting::ActorCreate(c), class)) => launch(&self.rt, Work::ActorCreate(c), class),
                None => {}
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
    let job = match job {
        Work::Task(t) => {
            let slot = t.ret.clone();
            slot.park_waiting(t);
            Waiting::Task(slot)
        }
        Work::ActorCreate(c) => Waiting::ActorCreate(c),
    };
    // One extra count, dropped after every registration, so that the job cannot start
    // while its waits are still being registered.
    let p = Arc::new(Pending { remaining: AtomicUsize::new(slots.len() + 1), job: Mutex::new(Some((job, class))), rt: rt.clone() });
    for s in slots {
        s.on_ready(Waiter::Callback(p.clone()));
    }
    p.notify();
}

/// `f` of the result slot of the task running on this thread (`None` outside a task, in an
/// actor method, and on a thread whose thread-locals are gone).
fn with_running<R: Default>(f: impl FnOnce(Option<&Slot>) -> R) -> R {
    THREAD
        .try_with(|st| {
            let s = st.task.take();
            let r = f(s.as_deref());
            st.task.set(s);
            r
        })
        .unwrap_or_default()
}

/// The result object of the task running on this thread.
pub(crate) fn current_task() -> Option<ObjectId> {
    with_running(|s| s.map(|s| s.id))
}

/// The cancel level of the task running on this thread (0 outside a task).
pub(crate) fn current_cancel() -> u8 {
    with_running(|s| s.map_or(0, Slot::cancel_level))
}

/// The message of a cancelled task's error.
pub(crate) const CANCELLED: &str = "the task was cancelled (rayhpc.cancel)";

/// Fails a task that a cancel stopped: it did not run (again), or its run failed while it
/// was cancelled. Cold: kept out of the paths that launch and run tasks.
#[cold]
pub(crate) fn fail_cancelled(t: &TaskSpec) {
    let e = task_error(t.name.as_ref().unwrap_or(&t.func.name), Failure::new(FailureKind::Cancelled, CANCELLED), t.attempts);
    t.ret.complete(Err(e));
}

/// Runs a task on this thread (whose state is `st`) and completes its result, or launches
/// it again when it failed and may be retried. The caller took `t` from its slot.
pub(crate) fn execute(mut t: Box<TaskSpec>, rt: &RuntimeInner, st: &ThreadState) {
    // A cancel seen before the call: it does not start. A hint, read without a fence: a
    // cancel that raced with the taking of the task (and was told `Running`) may be missed
    // here; the call then runs, and the level decides at its end (or, for a binding, under
    // the binding's own lock before it starts a worker: see `raw::current_cancel`).
    if t.ret.cancel_level() != 0 {
        fail_cancelled(&t);
        return;
    }
    t.attempts += 1;
    // Inline runs nest on one thread: the outer task's slot comes back after.
    let outer = st.task.replace(Some(t.ret.clone()));
    let outer_class = st.class.replace(Some(t.class));
    let outcome = with_inputs_in(st, &t.args, |inp| guarded(|| (t.func.invoke)(inp)));
    st.class.set(outer_class);
    drop(st.task.replace(outer));
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
        // A failure (of any kind: a SIGINT's exception, a SIGKILL's lost worker) while the
        // task is cancelled is the cancel's: never retried. A cancel raised after this read
        // is seen by `launch` if a retry is due.
        Err(_) if t.ret.cancel_level() != 0 => fail_cancelled(&t),
        Err(f) => {
            // A lost worker is a system failure: retried up to `max_retries` whatever
            // `retry_exceptions` says (Ray's rule); application errors only with it.
            let retryable = match f.kind {
                FailureKind::WorkerDied => true,
                FailureKind::BadArguments | FailureKind::Cancelled | FailureKind::Final => false,
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

#[cfg(test)]
mod tests {
    //! The two checks no timing from outside can reach: a cancel that found the task in
    //! nobody's cell (between two attempts, or between its arguments and its queueing) is
    //! seen by `launch`; one seen before the call stops `execute`.

    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::error::Error;
    use crate::invoke::{register, Output};
    use crate::{Config, Runtime};

    fn spec(rt: &Runtime, name: &str, runs: &Arc<AtomicU32>, attempts: u32) -> Box<TaskSpec> {
        let r = runs.clone();
        let func = register(
            name,
            Box::new(move |_: &[&[u8]]| {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(Output::Bytes(vec![1]))
            }),
        );
        let id = rt.next_task_id();
        Box::new(TaskSpec {
            id,
            func,
            args: Vec::new(),
            class: rt.inner.pool().class(&[("CPU", 1.0)]).unwrap(),
            retries_left: 3,
            retry_exceptions: false,
            attempts,
            name: None,
            ret: Slot::new(id.object(0)),
        })
    }

    fn cancelled_after(slot: &Slot) -> Option<u32> {
        match slot.get() {
            Some(Err(Error::Task(t))) if t.kind == FailureKind::Cancelled => Some(t.attempts),
            _ => None,
        }
    }

    #[test]
    fn launch_fails_a_task_whose_cancel_found_it_in_nobodys_cell() {
        let rt = Runtime::init(Config { executors: Some(1), ..Config::default() }).unwrap();
        let runs = Arc::new(AtomicU32::new(0));
        let t = spec(&rt, "task.test.launch", &runs, 1);
        let slot = t.ret.clone();
        // The cancel comes while the spec is held by a runner (its last attempt just failed).
        assert!(slot.request_cancel(false).is_none());
        launch(&rt.inner, Work::Task(t), ClassId::FREE);
        assert_eq!(cancelled_after(&slot), Some(1), "the relaunch queued a cancelled task");
        assert!(slot.take_job().is_none(), "nothing is left parked");
        rt.shutdown();
        assert_eq!(runs.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn execute_does_not_start_a_task_cancelled_before_its_call() {
        let rt = Runtime::init(Config { executors: Some(1), ..Config::default() }).unwrap();
        let runs = Arc::new(AtomicU32::new(0));
        let t = spec(&rt, "task.test.execute", &runs, 2);
        let slot = t.ret.clone();
        assert!(slot.request_cancel(true).is_none());
        THREAD.with(|st| execute(t, &rt.inner, st));
        assert_eq!(cancelled_after(&slot), Some(2), "a third attempt started");
        rt.shutdown();
        assert_eq!(runs.load(Ordering::SeqCst), 0);
    }
}
