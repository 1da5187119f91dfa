//! Objects as their owner sees them: a [`Slot`] per object (the future's state), the typed
//! handle [`ObjectRef`], and the zero-copy [`ObjectView`].
//!
//! The slot of a task's result is also where the task waits whenever nobody runs it, so the
//! task's spec ([`TaskSpec`]) and its arguments ([`ArgSpec`]: bytes, or objects to read) are
//! defined here, as data; the task layer above resolves and runs them.
//!
//! # The slot protocol
//! A slot is written once (`complete`) and read many times. Readers that must wait register
//! a [`Waiter`]: a parked thread, or anything that implements [`Notify`] (a task waiting for
//! its arguments, an actor waiting for the head of its mailbox, a `wait` call).
//!
//! `complete` sets the value (`OnceLock`), then the slot's [`WaitList`] event; waiters are
//! registered on that list. The list (in `rayhpc-sched`, model-checked with loom) hands every
//! registered waiter out exactly once, and completing a slot nobody waits on takes no lock.
//!
//! # Cancellation
//! A task's cancel is a state of its result slot: a level (0 none, 1 interrupt, 2 force)
//! that only grows, next to the cell where the task waits while nobody runs it (from its
//! submission, through the wait for its arguments, while it is queued, and again between two
//! attempts). A cancel raises the level and tries to take the task out of the cell: taken,
//! it never runs and fails as cancelled at once; not there, it is running (or being parked
//! again), and the level decides later: whoever parks a task (again) looks at the level after
//! parking it and takes it back if it is raised; a run that ends in an error while the level
//! is raised is a cancelled one. The handshake is [`rayhpc_sched::signal::CancelFlag`],
//! model-checked with loom there.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_utils::atomic::AtomicCell;

use rayhpc_sched::signal::{CancelFlag, WaitList};
use rayhpc_sched::ClassId;
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::ids::{ObjectId, TaskId};
use crate::invoke::FnEntry;
use crate::store::Blob;
use rayhpc_objstore::View;

/// The value of a finished object: its bytes, or the error of the task that should have
/// produced it.
pub(crate) type Outcome = Result<Blob, Error>;

/// Something that wants to hear when an object is ready.
pub(crate) trait Notify: Send + Sync {
    /// Called once, after the slot's value is set, on the completing (or registering) thread.
    fn notify(self: Arc<Self>);
}

pub(crate) enum Waiter {
    Thread(Thread),
    Callback(Arc<dyn Notify>),
}

impl Waiter {
    fn fire(self) {
        match self {
            Waiter::Thread(t) => t.unpark(),
            Waiter::Callback(n) => n.notify(),
        }
    }
}

/// An argument of a task spec: encoded bytes, or an object to wait for and read.
pub(crate) enum ArgSpec {
    Value(Vec<u8>),
    Ref(Arc<Slot>),
}

/// Everything needed to run one task, here or elsewhere. Whenever nobody runs it, it waits
/// in the slot of its result, `ret` (see [`Slot::park_job`]).
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

/// The state of one object.
pub(crate) struct Slot {
    pub(crate) id: ObjectId,
    value: OnceLock<Outcome>,
    waiters: WaitList<Waiter>,
    /// The task that produces this object while nobody runs it: while it waits for its
    /// arguments, while it is queued, between two attempts. An executor takes it from here to
    /// run it, or a thread waiting for the object does (`Runtime::get` runs it inline), or a
    /// cancel does. Whoever takes it first has it. A pointer-sized `AtomicCell` is a
    /// lock-free atomic swap.
    job: AtomicCell<Option<Box<TaskSpec>>>,
    /// The resource class of `job` while it is queued (`NO_JOB` otherwise, and while it waits
    /// for its arguments: then nobody may run it), readable without taking the job.
    job_class: AtomicU32,
    /// The cancel level of the task that produces this object: 0 none, [`CANCEL_INTERRUPT`],
    /// [`CANCEL_FORCE`]. Only grows.
    cancel: CancelFlag,
}

/// Cancel level: interrupt the running task (a binding's worker gets SIGINT).
pub(crate) const CANCEL_INTERRUPT: u8 = 1;
/// Cancel level: stop it by force (a binding's worker gets SIGKILL).
pub(crate) const CANCEL_FORCE: u8 = 2;

const NO_JOB: u32 = u32::MAX;

/// How long a waiting thread spins before it parks: a task that is about to finish is caught
/// without a futex round trip, an idle wait costs nothing after this.
const SPIN: Duration = Duration::from_micros(30);

/// How long to spin for at most `limit` without passing `deadline`.
pub(crate) fn spin_until(deadline: Option<Instant>, limit: Duration) -> Duration {
    deadline.map_or(limit, |d| d.saturating_duration_since(Instant::now()).min(limit))
}

impl Slot {
    pub(crate) fn new(id: ObjectId) -> Arc<Self> {
        Arc::new(Slot {
            id,
            value: OnceLock::new(),
            waiters: WaitList::new(),
            job: AtomicCell::new(None),
            job_class: AtomicU32::new(NO_JOB),
            cancel: CancelFlag::new(),
        })
    }

    pub(crate) fn ready(id: ObjectId, outcome: Outcome) -> Arc<Self> {
        let s = Slot::new(id);
        let _ = s.value.set(outcome);
        s.waiters.set_ready();
        s
    }

    /// Parks the producing task here while it is queued, then looks for a cancel (see the
    /// module doc). `Some(spec)`: it was cancelled and is taken back: the caller must fail it
    /// rather than queue it. `None`: queue it (a queue entry that finds the cell empty, the
    /// task taken by a cancel or run inline meanwhile, skips it).
    #[must_use]
    pub(crate) fn park_job(&self, spec: Box<TaskSpec>) -> Option<Box<TaskSpec>> {
        // Relaxed: a hint; the job cell below publishes the spec.
        self.job_class.store(spec.class.0, Ordering::Relaxed);
        // Release (`put_job` is an AcqRel swap): the spec is published to whoever takes it (an
        // Acquire swap). The cancel handshake does not lean on the swap; its fences carry it
        // (the loom model parks with a Release-only write).
        self.put_job(spec);
        // SYNC POINT: `CancelFlag::parked` fences, then reads the level: pairs with the fence
        // in `request_cancel`. A cancel that did not find the job parked is seen here.
        self.cancel.parked(|| self.take_job())
    }

    /// Parks the producing task here while it waits for its arguments: a cancel can take it
    /// (and fail it at once); nobody can run it ([`Slot::queued_class`] stays `None`). When
    /// the arguments are ready, the launcher takes it ([`Slot::take_job`]) and parks it
    /// again with [`Slot::park_job`], which looks for a cancel.
    pub(crate) fn park_waiting(&self, spec: Box<TaskSpec>) {
        self.put_job(spec);
    }

    /// Puts `spec` in the job cell: what `AtomicCell::store` does for an `Option<Box>` (a
    /// swap, then the old value dropped), with the old value, always empty, looked at inline:
    /// parking a task calls no drop glue.
    #[inline]
    fn put_job(&self, spec: Box<TaskSpec>) {
        if let Some(old) = self.job.swap(Some(spec)) {
            drop(old);
        }
    }

    /// Raises the cancel level to `CANCEL_FORCE` or `CANCEL_INTERRUPT`, then tries to take
    /// the parked task. `Some(spec)`: the caller has it and must fail it (nobody else will
    /// run it). `None`: it is running, or between two parkings (its parker then sees the
    /// level), or done.
    pub(crate) fn request_cancel(&self, force: bool) -> Option<Box<TaskSpec>> {
        let level = if force { CANCEL_FORCE } else { CANCEL_INTERRUPT };
        // SYNC POINT: `CancelFlag::cancel` raises the level, fences (pairs with the fence in
        // `park_job`), then swaps the cell: the same swap as an executor's or an inline
        // runner's `take_job`, so exactly one of them gets the task.
        self.cancel.cancel(level, || self.take_job())
    }

    /// The cancel level (0: none). A read without a fence: whoever acts on a 0 must not need
    /// more than a hint (see `execute`), or must be ordered with the cancel by a lock of its
    /// own (a binding: see [`crate::raw::current_cancel`]).
    pub(crate) fn cancel_level(&self) -> u8 {
        self.cancel.level()
    }

    /// Takes the producing task to run it; `None` when someone else took it.
    pub(crate) fn take_job(&self) -> Option<Box<TaskSpec>> {
        let t = self.job.take();
        if t.is_some() {
            self.job_class.store(NO_JOB, Ordering::Relaxed);
        }
        t
    }

    /// The resource class of the producing task, if it is (probably) queued and not started:
    /// a hint, read without taking the task; [`Slot::take_job`] decides.
    pub(crate) fn queued_class(&self) -> Option<ClassId> {
        let c = self.job_class.load(Ordering::Relaxed);
        (c != NO_JOB).then_some(ClassId(c))
    }

    pub(crate) fn get(&self) -> Option<&Outcome> {
        self.value.get()
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.value.get().is_some()
    }

    /// Sets the value (first writer wins; later ones are ignored and return false) and
    /// notifies every waiter.
    pub(crate) fn complete(&self, outcome: Outcome) -> bool {
        if self.value.set(outcome).is_err() {
            return false;
        }
        for w in self.waiters.set_ready() {
            w.fire();
        }
        true
    }

    /// Notifies `w` once the value is set (at once, on this thread, if it already is).
    pub(crate) fn on_ready(&self, w: Waiter) {
        if self.is_ready() {
            return w.fire();
        }
        for w in self.waiters.register(w) {
            w.fire();
        }
    }

    /// Spins for up to `limit` waiting for the value (yielding now and then so that a
    /// producer sharing this CPU can run). Returns whether it is set.
    pub(crate) fn spin(&self, limit: Duration) -> bool {
        let start = Instant::now();
        let mut i = 0u32;
        while !self.is_ready() {
            if start.elapsed() >= limit {
                return false;
            }
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            i += 1;
            if i.is_multiple_of(8) {
                thread::yield_now();
            }
        }
        true
    }

    /// Removes a callback registered with [`Slot::on_ready`] that is no longer wanted.
    pub(crate) fn forget_callback(&self, n: &Arc<dyn Notify>) {
        self.waiters.remove(|w| matches!(w, Waiter::Callback(c) if std::ptr::addr_eq(Arc::as_ptr(c), Arc::as_ptr(n))));
    }

    /// Blocks the calling thread until the value is set or `deadline` passes. Returns
    /// whether it is set.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        // Spinning never outlasts the deadline (a zero timeout is a poll).
        if self.spin(spin_until(deadline, SPIN)) {
            return true;
        }
        let me = thread::current();
        let my_id = me.id();
        self.on_ready(Waiter::Thread(me));
        loop {
            if self.is_ready() {
                return true;
            }
            match deadline {
                None => thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        // Take this thread off the list so that timed-out waits leave nothing.
                        self.waiters.remove(|w| matches!(w, Waiter::Thread(t) if t.id() == my_id));
                        return self.is_ready();
                    }
                    thread::park_timeout(d - now);
                }
            }
        }
    }
}

/// A future: the handle to an object that a task will produce (or that `put` stored).
/// Cheap to clone; the object lives while any handle to it does.
pub struct ObjectRef<T> {
    pub(crate) slot: Arc<Slot>,
    _t: PhantomData<fn() -> T>,
}

impl<T> ObjectRef<T> {
    pub(crate) fn from_slot(slot: Arc<Slot>) -> Self {
        ObjectRef { slot, _t: PhantomData }
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.slot.id
    }

    /// True when the object is computed (successfully or not): `get` will not block.
    pub fn is_ready(&self) -> bool {
        self.slot.is_ready()
    }

    /// Calls `f` once the object is ready (successfully or not): at once on this thread if
    /// it is, else on the thread that completes it (an executor: `f` should be short and
    /// must not block). For code that answers for an object elsewhere (another node).
    pub fn on_ready(&self, f: impl FnOnce() + Send + 'static) {
        struct Once<F>(std::sync::Mutex<Option<F>>);
        impl<F: FnOnce() + Send> Notify for Once<F> {
            fn notify(self: Arc<Self>) {
                let f = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(f) = f {
                    f();
                }
            }
        }
        self.slot.on_ready(Waiter::Callback(Arc::new(Once(std::sync::Mutex::new(Some(f))))));
    }

    /// Calls `f` with the object's bytes if it is ready and kept inline (small), without
    /// waiting and without a runtime: `None` when it is not ready or lives in the store (then
    /// [`crate::Runtime::get_bytes`] is the way); `Some(Err)` when its task failed. A fast
    /// path for bindings, whose `get` can copy small results out without a view.
    pub fn with_inline_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Option<Result<R, Error>> {
        match self.slot.get()? {
            Ok(Blob::Inline(b)) => Some(Ok(f(b))),
            Ok(Blob::Stored(_)) => None,
            Err(e) => Some(Err(e.clone())),
        }
    }

    /// A zero-copy view of the object's bytes if it is ready, without waiting: `None` when it
    /// is not; `Some(Err)` when its task failed or a spilled object could not be restored.
    pub fn try_view(&self) -> Option<Result<ObjectView, Error>> {
        match self.slot.get()? {
            Ok(_) => Some(ObjectView::new(self.slot.clone())),
            Err(e) => Some(Err(e.clone())),
        }
    }

    /// The same object, seen as raw bytes (for [`crate::Runtime::get_bytes`] and `wait` over
    /// refs of different types).
    pub fn untyped(&self) -> ObjectRef<Untyped> {
        ObjectRef::from_slot(self.slot.clone())
    }
}

/// The type parameter of refs whose value type is not known here.
#[derive(Debug, Clone, Copy)]
pub enum Untyped {}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        ObjectRef::from_slot(self.slot.clone())
    }
}

impl<T> fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectRef({}{})", self.slot.id, if self.is_ready() { ", ready" } else { "" })
    }
}

impl<T> PartialEq for ObjectRef<T> {
    fn eq(&self, o: &Self) -> bool {
        self.slot.id == o.slot.id
    }
}
impl<T> Eq for ObjectRef<T> {}
impl<T> std::hash::Hash for ObjectRef<T> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.slot.id.hash(h)
    }
}

/// A read-only, zero-copy view of an object's bytes. The object stays alive (and, when in
/// the store, pinned in memory) while the view does.
pub struct ObjectView {
    slot: Arc<Slot>,
    /// The pin of a stored object; `None` for an inline one.
    view: Option<View>,
}

impl ObjectView {
    /// A view of a slot whose value is `Ok`.
    pub(crate) fn new(slot: Arc<Slot>) -> Result<Self, Error> {
        let view = match slot.get() {
            Some(Ok(Blob::Stored(o))) => Some(o.view().map_err(crate::store::store_error)?),
            _ => None,
        };
        Ok(ObjectView { slot, view })
    }

    /// True when the bytes live in the object store rather than inline.
    pub fn is_stored(&self) -> bool {
        self.view.is_some()
    }

    /// The key another process of the node reads the object by in the store, when it lives
    /// there.
    pub fn stored_key(&self) -> Option<u128> {
        self.view.as_ref().map(|v| v.key())
    }
}

impl Deref for ObjectView {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if let Some(v) = &self.view {
            return v;
        }
        match self.slot.get() {
            Some(Ok(Blob::Inline(b))) => b,
            _ => &[],
        }
    }
}

impl fmt::Debug for ObjectView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectView({}, {} bytes)", self.slot.id, self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parked_job_cell_is_a_lock_free_atomic() {
        assert!(AtomicCell::<Option<Box<TaskSpec>>>::is_lock_free());
    }
}
