//! Two small synchronisation protocols the runtime builds on, kept here (with the loom
//! shim) so that the very code the runtime runs is model-checked (`tests/loom_signal.rs`).
//!
//! - [`WaitList`]: a once-set "ready" event with a list of waiters. Every registered waiter
//!   is handed back exactly once, to whoever must notify it, however `register` and
//!   `set_ready` interleave. Setting an event nobody waits on takes no lock.
//! - [`RunFlag`]: the "is a turn scheduled?" flag of a mailbox served by one runner at a
//!   time (an actor). No message is left in the mailbox with no turn scheduled.
//! - [`CancelFlag`]: the cancel request of a job parked in a cell that whoever runs it (or
//!   cancels it) empties with one swap. A cancel either takes the parked job or is seen by
//!   whoever parks it next: a cancelled job is never left parked with nobody to fail it.

use crate::loom::sync::atomic::{fence, AtomicBool, AtomicU8, Ordering::SeqCst};
use crate::loom::sync::Mutex;

/// A once-set event plus the waiters registered before it was set.
///
/// Protocol (Dekker with fences): `set_ready` stores `ready`, fences, and reads
/// `has_waiters`; `register` pushes under the lock, sets `has_waiters`, fences and reads
/// `ready`. The fences are totally ordered, so at least one side sees the other; the list
/// is only ever drained under its lock, so no waiter is handed out twice.
pub struct WaitList<W> {
    ready: AtomicBool,
    has_waiters: AtomicBool,
    waiters: Mutex<Vec<W>>,
}

impl<W> Default for WaitList<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W> WaitList<W> {
    /// An event not yet set, with no waiters.
    pub fn new() -> Self {
        WaitList { ready: AtomicBool::new(false), has_waiters: AtomicBool::new(false), waiters: Mutex::new(Vec::new()) }
    }

    fn lock(&self) -> crate::loom::sync::MutexGuard<'_, Vec<W>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once [`WaitList::set_ready`] ran. Everything written before `set_ready` is
    /// visible after this returns true (acquire).
    pub fn is_ready(&self) -> bool {
        self.ready.load(SeqCst)
    }

    /// Sets the event. Returns the waiters the caller must notify now (empty, and no lock
    /// taken, when nobody registered). Calling it twice returns nothing the second time.
    pub fn set_ready(&self) -> Vec<W> {
        self.ready.store(true, SeqCst);
        // SYNC POINT: pairs with the fence in `register`.
        fence(SeqCst);
        if self.has_waiters.load(SeqCst) {
            std::mem::take(&mut *self.lock())
        } else {
            Vec::new()
        }
    }

    /// Registers `w`. Returns the waiters the caller must notify itself: `[w]` when the event
    /// is already set, the drained list when it was set concurrently, else nothing (then
    /// `set_ready` will hand `w` to its caller).
    pub fn register(&self, w: W) -> Vec<W> {
        let mut g = self.lock();
        if self.ready.load(SeqCst) {
            return vec![w];
        }
        g.push(w);
        self.has_waiters.store(true, SeqCst);
        drop(g);
        // SYNC POINT: pairs with the fence in `set_ready`.
        fence(SeqCst);
        if self.ready.load(SeqCst) {
            return std::mem::take(&mut *self.lock());
        }
        Vec::new()
    }

    /// Removes the waiters for which `drop_it` is true (a waiter that gave up, e.g. a timed
    /// out `get`). They will not be handed out.
    pub fn remove(&self, drop_it: impl FnMut(&W) -> bool) {
        let mut drop_it = drop_it;
        self.lock().retain(|w| !drop_it(w));
    }
}

/// The scheduling flag of a mailbox with one runner at a time.
///
/// Producer: push the message, then [`RunFlag::request`]; if it returns true, schedule a
/// turn. Runner: at the end of a turn that emptied the mailbox, [`RunFlag::finish`] with a
/// check of the mailbox; if it returns true, the runner schedules another turn itself.
pub struct RunFlag {
    scheduled: AtomicBool,
}

impl RunFlag {
    /// A flag in state `scheduled` (true: a turn is pending or running).
    pub fn new(scheduled: bool) -> Self {
        RunFlag { scheduled: AtomicBool::new(scheduled) }
    }

    /// After publishing a message: true when the caller must schedule a turn.
    pub fn request(&self) -> bool {
        // SYNC POINT: the message is published before the flag is read; pairs with `finish`.
        fence(SeqCst);
        !self.scheduled.swap(true, SeqCst)
    }

    /// End of a turn: clears the flag, then looks again (`pending`: is a message waiting?).
    /// True when the runner must schedule another turn (it holds the flag again).
    pub fn finish(&self, pending: impl FnOnce() -> bool) -> bool {
        // A swap rather than a store: the clear must be an RMW so that it is ordered with
        // the producers' swaps in the flag's modification order. With a plain store, loom
        // (which models SeqCst stores as release stores) finds an execution that leaves the
        // flag set with nothing to run. On x86 a SeqCst store is an `xchg` anyway.
        self.scheduled.swap(false, SeqCst);
        // SYNC POINT: pairs with the fence in `request`.
        fence(SeqCst);
        pending() && self.request()
    }

    /// Clears the flag without looking (the runner parks the turn on something else, which
    /// will call [`RunFlag::request`] when it fires).
    pub fn clear(&self) {
        // An RMW for the same reason as in `finish`.
        self.scheduled.swap(false, SeqCst);
    }

    /// Whether a turn is pending or running.
    pub fn is_set(&self) -> bool {
        self.scheduled.load(SeqCst)
    }
}

/// The cancel request of a job that waits in a cell of its own (the runtime: a task parked in
/// its result slot), which a runner, or a canceller, empties with one atomic swap. The cell
/// is the caller's; the protocol only needs that parking writes it and taking swaps it, so
/// that exactly one party gets the job.
///
/// Protocol (Dekker with fences, as [`WaitList`]): the canceller raises the level, fences,
/// and tries to take the job ([`CancelFlag::cancel`]); whoever parks the job, the first time
/// or again (a retry), fences after parking and reads the level ([`CancelFlag::parked`]),
/// and takes the job back if it is raised. The two fences are totally ordered: if the
/// canceller's comes first, the parker reads the raised level; if the parker's does, the
/// canceller's swap finds the job parked (or already taken by a runner, which then runs it
/// and owns the cancel from there). So a cancel is never lost between two attempts, or
/// between the wait for a job's inputs and its queueing.
///
/// Levels only grow (`fetch_max`): a forced cancel (2 in the runtime) after an interrupting
/// one (1) upgrades it; a later weaker one does not downgrade it.
pub struct CancelFlag {
    level: AtomicU8,
}

impl Default for CancelFlag {
    fn default() -> Self {
        Self::new()
    }
}

impl CancelFlag {
    /// No cancel requested (level 0).
    pub fn new() -> Self {
        CancelFlag { level: AtomicU8::new(0) }
    }

    /// Canceller: raises the level to at least `level` (> 0), then tries to take the parked
    /// job with `take`. `Some(job)`: the canceller has it and must fail it; nobody else will
    /// run it. `None`: someone took it first (it runs, or it is between two parkings, and
    /// then its parker sees the level).
    pub fn cancel<J>(&self, level: u8, take: impl FnOnce() -> Option<J>) -> Option<J> {
        debug_assert!(level > 0, "level 0 means no cancel");
        // SeqCst: one total order with the fences; an RMW, so that two cancels compose.
        self.level.fetch_max(level, SeqCst);
        // SYNC POINT: pairs with the fence in `parked`: the level is raised before the cell
        // is looked at.
        fence(SeqCst);
        take()
    }

    /// Parker: call right after parking the job in its cell. When a cancel is seen, tries to
    /// take the job back with `take`: `Some(job)` then means the parker must fail it instead
    /// of queueing it. `None`: no cancel was seen (queue the job), or one was and someone
    /// else took the job (the canceller, which fails it, or a runner, which owns it now).
    pub fn parked<J>(&self, take: impl FnOnce() -> Option<J>) -> Option<J> {
        // SYNC POINT: pairs with the fence in `cancel`: the job is in its cell before the
        // level is read.
        fence(SeqCst);
        // SeqCst: loom models SeqCst accesses as AcqRel, so the fences carry the proof; after
        // the fence even Relaxed would do (C++20 [atomics.order]: a write sequenced before a
        // SeqCst fence is seen by a read sequenced after a later SeqCst fence).
        if self.level.load(SeqCst) == 0 {
            return None;
        }
        take()
    }

    /// The level now (0: no cancel). No fence: a hint for a runner that already holds the
    /// job (a cancel that raced with its taking may be missed, and then the caller learns it
    /// from a later read, or through its own lock, as a binding does).
    pub fn level(&self) -> u8 {
        // SeqCst: a plain `mov` on x86 and arm64's `ldar`; nothing is concluded from a 0 here.
        self.level.load(SeqCst)
    }
}
