//! Two small synchronisation protocols the runtime builds on, kept here (with the loom
//! shim) so that the very code the runtime runs is model-checked (`tests/loom_signal.rs`).
//!
//! - [`WaitList`]: a once-set "ready" event with a list of waiters. Every registered waiter
//!   is handed back exactly once, to whoever must notify it, however `register` and
//!   `set_ready` interleave. Setting an event nobody waits on takes no lock.
//! - [`RunFlag`]: the "is a turn scheduled?" flag of a mailbox served by one runner at a
//!   time (an actor). No message is left in the mailbox with no turn scheduled.

use crate::loom::sync::atomic::{fence, AtomicBool, Ordering::SeqCst};
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
