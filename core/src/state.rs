//! The runtime's state, below its API: what one runtime shares between its threads
//! ([`RuntimeInner`]: the executor pool, the object store, the actors by name, the shutdown
//! flag, id generation), what each thread carries for it ([`ThreadState`], in one
//! thread-local), and what the executor pool runs ([`CoreJob`]).
//!
//! The pool's jobs hold actors, and an actor holds its runtime: these types refer to each
//! other, so the actor's cell ([`ActorCell`]) and its creation job ([`CreateSpec`]) are
//! defined here too, as data. What they do lives above: a task's run in the task layer,
//! an actor's turn and construction in the actor layer, and the dispatch of each job
//! (`CoreJob`'s `Job` impl) in the runtime's module, above both.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crossbeam_queue::SegQueue;
use rayhpc_objstore::Store;
use rayhpc_sched::signal::RunFlag;
use rayhpc_sched::{ClassId, Pool};

use crate::error::Error;
use crate::ids::{ActorId, ObjectId, TaskId};
use crate::invoke::{ClassEntry, MethodEntry, Output};
use crate::object::{ArgSpec, Outcome, Slot};
use crate::store::{Blob, Bytes};

/// What one runtime shares between its threads. The public [`crate::Runtime`] is a handle
/// to it.
pub(crate) struct RuntimeInner {
    pub(crate) pool: OnceLock<Pool<CoreJob>>,
    /// The class of a default task (`{CPU: 1}`), `None` when the runtime has less than one
    /// CPU: default tasks are then refused as infeasible at submit.
    pub(crate) cpu1: OnceLock<Option<ClassId>>,
    pub(crate) store: Arc<Store>,
    pub(crate) inline_threshold: usize,
    /// The live actors created with a name.
    pub(crate) actors: Mutex<HashMap<String, Arc<ActorCell>>>,
    pub(crate) shutdown: AtomicBool,
    pub(crate) node: u32,
}

impl RuntimeInner {
    #[inline]
    pub(crate) fn pool(&self) -> &Pool<CoreJob> {
        self.pool.get().expect("the pool is set before the runtime is handed out")
    }

    #[inline]
    pub(crate) fn is_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// A fresh task id: (node, this thread's worker number, its next sequence number). No
    /// shared counter is touched after a thread's first id.
    #[inline]
    pub(crate) fn next_task_id(&self) -> TaskId {
        THREAD
            .try_with(|st| {
                if let Some(id) = st.next_id.take() {
                    return id;
                }
                let (mut w, s) = st.idgen.get();
                if w == 0 {
                    w = NEXT_WORKER.fetch_add(1, Ordering::Relaxed);
                }
                st.idgen.set((w, s + 1));
                TaskId::new(self.node, w, s)
            })
            // A thread whose thread-locals are gone (a put from a thread-local destructor):
            // the worker number kept for such ids, with a shared sequence.
            .unwrap_or_else(|_| TaskId::new(self.node, LATE_WORKER, LATE_SEQ.fetch_add(1, Ordering::Relaxed)))
    }

    /// Seals what an invocation produced as object `id`.
    #[inline]
    pub(crate) fn seal_output(&self, id: ObjectId, out: Output) -> Outcome {
        match out {
            Output::Bytes(b) => self.seal(id, b),
            Output::Stored(o) => Ok(Blob::Stored(o)),
        }
    }

    /// Seals result bytes of object `id`: inline when small, else into the store.
    #[inline]
    pub(crate) fn seal(&self, id: ObjectId, bytes: Vec<u8>) -> Outcome {
        if bytes.len() <= self.inline_threshold {
            Ok(Blob::Inline(bytes))
        } else {
            crate::store::put(&self.store, id, &bytes)
        }
    }

    /// Frees the name of `cell`, if it has one and the name is still its own.
    pub(crate) fn forget_actor(&self, cell: &Arc<ActorCell>) {
        if let Some(n) = &cell.name {
            let mut m = self.actors.lock().unwrap_or_else(|e| e.into_inner());
            if m.get(n).is_some_and(|c| Arc::ptr_eq(c, cell)) {
                m.remove(n);
            }
        }
    }
}

/// What a thread carries for the runtime, in one thread-local: in a shared library (the C
/// API's `librayhpc.so`) every access to a thread-local is a call to `__tls_get_addr`, so a
/// task's path reaches it once and passes it on.
pub(crate) struct ThreadState {
    /// The runtime whose job runs on this thread: set for good on executor threads when the
    /// pool starts them, and for the duration of an inline run on any other thread.
    pub(crate) runtime: RefCell<Option<Arc<RuntimeInner>>>,
    /// This thread's id generator: (worker number, next sequence number).
    idgen: Cell<(u32, u64)>,
    /// The id the next task made on this thread takes instead (see
    /// [`crate::raw::with_task_id`]).
    next_id: Cell<Option<TaskId>>,
    /// The result slot of the task running on this thread: its id and its cancel level (see
    /// [`crate::raw::current_task`], [`crate::raw::current_cancel`]). Read by taking it out
    /// and putting it back (a `Cell`, no borrow flag).
    pub(crate) task: Cell<Option<Arc<Slot>>>,
    /// The store keys of the inputs of the call running on this thread (see
    /// [`crate::raw::stored_inputs`]).
    stored_inputs: RefCell<Vec<Option<u128>>>,
    /// The resource class of the task running on this thread, and the actor whose turn runs
    /// here (see [`crate::raw::current_resources`], [`crate::raw::current_actor`]).
    pub(crate) class: Cell<Option<ClassId>>,
    pub(crate) actor: Cell<Option<ActorId>>,
}

thread_local! {
    pub(crate) static THREAD: ThreadState = const {
        ThreadState {
            runtime: RefCell::new(None),
            idgen: Cell::new((0, 0)),
            next_id: Cell::new(None),
            task: Cell::new(None),
            stored_inputs: RefCell::new(Vec::new()),
            class: Cell::new(None),
            actor: Cell::new(None),
        }
    };
}

static NEXT_WORKER: AtomicU32 = AtomicU32::new(1);

/// The worker number of ids made on a thread whose thread-locals are gone, and their sequence.
const LATE_WORKER: u32 = u32::MAX;
static LATE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Runs `f` with `id` as the id of the next task (or put, or promise) made on this thread;
/// the override is gone when `f` returns, used or not.
pub(crate) fn with_task_id<R>(id: TaskId, f: impl FnOnce() -> R) -> R {
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            let _ = THREAD.try_with(|st| st.next_id.set(None));
        }
    }
    THREAD.with(|st| st.next_id.set(Some(id)));
    let _clear = Clear;
    f()
}

/// Runs `f` with the runtime of the current executor thread.
#[inline]
pub(crate) fn with_current<R>(f: impl FnOnce(&ThreadState, &Arc<RuntimeInner>) -> R) -> R {
    THREAD.with(|st| f(st, st.runtime.borrow().as_ref().expect("jobs run on executor threads, which carry their runtime")))
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
#[inline]
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

/// What the pool runs.
pub(crate) enum CoreJob {
    /// A task, parked in its result slot (see [`Slot::take_job`]): the pool's queue entry
    /// may find it already taken by a thread that ran it inline, or by a cancel (which
    /// failed it); then it skips it.
    Task(Arc<Slot>),
    ActorTurn(Arc<ActorCell>),
    ActorCreate(Box<CreateSpec>),
}

/// One call in an actor's mailbox.
pub(crate) struct ActorCall {
    pub method: &'static MethodEntry,
    pub args: Vec<ArgSpec>,
    pub ret: Arc<Slot>,
}

/// What only the actor's running turn touches: its state, and the call at the head of the
/// mailbox that waits for its argument refs.
pub(crate) struct Runner {
    pub state: Option<Box<dyn std::any::Any + Send>>,
    pub head: Option<ActorCall>,
}

/// One actor, as the runtime holds it (its scheduling protocol is described in the actor
/// layer).
pub(crate) struct ActorCell {
    pub(crate) id: ActorId,
    pub(crate) class: Arc<ClassEntry>,
    pub(crate) name: Option<String>,
    pub(crate) rt: Arc<RuntimeInner>,
    pub(crate) mailbox: SegQueue<ActorCall>,
    pub(crate) scheduled: RunFlag,
    pub(crate) runner: Mutex<Runner>,
    pub(crate) dead: OnceLock<Error>,
    /// Resources held for the actor's life, given back when it dies.
    pub(crate) held: Mutex<Option<ClassId>>,
}

/// The creation job of an actor.
pub(crate) struct CreateSpec {
    pub cell: Arc<ActorCell>,
    pub args: Vec<ArgSpec>,
    pub holds_resources: bool,
}
