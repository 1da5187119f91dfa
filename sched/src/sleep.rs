//! The idle protocol of the executors: how a worker with nothing to do goes to sleep, and
//! how a submitter wakes one, without a lost wake-up and without a syscall on the hot path.
//!
//! State: `searching` (workers spinning for work) and `sleeping` (workers parked, mirrored
//! by the `sleepers` list that holds their thread handles).
//!
//! A worker that finds no work:
//! 1. may become a *searcher* (at most `max_searching` at once) and spin for a short time;
//! 2. leaves the searching state ([`Sleep::stop_searching`]) and registers as a sleeper
//!    ([`Sleep::prepare_sleep`]): both are SeqCst and followed by a SeqCst fence;
//! 3. looks at every queue once more; only if that finds nothing does it park.
//!
//! A submitter: pushes the job, issues a SeqCst fence, then reads `searching` and `sleeping`
//! ([`Sleep::notify`]). If nobody searches and somebody sleeps, it pops one sleeper, counts it
//! as a searcher on its behalf (so a burst of submissions wakes one worker, not all) and
//! unparks it.
//!
//! Why no wake-up is lost: the submitter's fence F_s and the worker's fence F_w (after step 2)
//! are totally ordered. If F_s comes first, the worker's re-check in step 3 sees the job. If
//! F_w comes first, the submitter's loads see the worker as a sleeper and not a searcher, and
//! wake it. `tests/loom_sleep.rs` checks this exhaustively with loom.
//!
//! Work spreads by chaining: a searcher that finds work, was the last one, and sees more work
//! queued wakes another sleeper ([`Sleep::found_work`]), which searches in turn.

use crate::loom::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering::SeqCst};
use crate::loom::sync::Mutex;
use crate::loom::thread::{self, Thread};

/// Shared idle state of one pool.
pub struct Sleep {
    searching: AtomicUsize,
    sleeping: AtomicUsize,
    sleepers: Mutex<Vec<(usize, Thread)>>,
    max_searching: usize,
    shutdown: AtomicBool,
}

/// What [`Sleep::cancel_sleep`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// The worker removed itself from the list: it is an ordinary running worker again.
    Removed,
    /// A waker had already popped it and counted it as a searcher (its unpark token is set).
    WasWoken,
}

impl Sleep {
    /// A protocol for workers of which at most `max_searching` spin at once.
    pub fn new(max_searching: usize) -> Self {
        Sleep {
            searching: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            sleepers: Mutex::new(Vec::new()),
            max_searching: max_searching.max(1),
            shutdown: AtomicBool::new(false),
        }
    }

    fn sleepers(&self) -> crate::loom::sync::MutexGuard<'_, Vec<(usize, Thread)>> {
        self.sleepers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tries to become a searcher; false when enough workers already search.
    pub fn start_searching(&self) -> bool {
        let mut n = self.searching.load(SeqCst);
        loop {
            if n >= self.max_searching {
                return false;
            }
            match self.searching.compare_exchange_weak(n, n + 1, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(cur) => n = cur,
            }
        }
    }

    /// A searcher stops searching without having found work.
    pub fn stop_searching(&self) {
        self.searching.fetch_sub(1, SeqCst);
    }

    /// A searcher found work. If it was the last searcher and `more` work is queued, it
    /// wakes another worker so that the work spreads (the woken worker searches in its
    /// place). With nothing more queued nobody is woken: a stream of single tasks (a
    /// synchronous caller) then keeps one executor busy instead of waking all of them.
    ///
    /// `more` is asked after the searcher count dropped and a SeqCst fence: a job pushed
    /// concurrently is either seen by `more`, or its submitter sees no searcher and wakes a
    /// sleeper itself (the same argument as for sleeping, in the module doc).
    pub fn found_work(&self, more: impl FnOnce() -> bool) {
        if self.searching.fetch_sub(1, SeqCst) == 1 {
            // SYNC POINT: pairs with the fence in `notify`.
            fence(SeqCst);
            if more() {
                self.wake_one();
            }
        }
    }

    /// Step 2 of the worker side: registers `id` (with the calling thread) as a sleeper.
    /// The caller must then look at every queue once more before [`Sleep::park`].
    pub fn prepare_sleep(&self, id: usize) {
        {
            let mut s = self.sleepers();
            s.push((id, thread::current()));
            self.sleeping.fetch_add(1, SeqCst);
        }
        // SYNC POINT: pairs with the fence in `notify` (see the module doc).
        fence(SeqCst);
    }

    /// The re-check after [`Sleep::prepare_sleep`] found work: take `id` off the list.
    pub fn cancel_sleep(&self, id: usize) -> Cancelled {
        let mut s = self.sleepers();
        if let Some(pos) = s.iter().position(|(i, _)| *i == id) {
            s.swap_remove(pos);
            self.sleeping.fetch_sub(1, SeqCst);
            Cancelled::Removed
        } else {
            Cancelled::WasWoken
        }
    }

    /// Parks until a waker pops `id` off the list (spurious wake-ups are absorbed) or the
    /// pool shuts down. Returns true when a waker popped it: the worker then counts as a
    /// searcher and must leave that state with [`Sleep::found_work`] or
    /// [`Sleep::stop_searching`], even when the pool is shutting down.
    pub fn park(&self, id: usize) -> bool {
        loop {
            if self.shutdown.load(SeqCst) {
                return self.cancel_sleep(id) == Cancelled::WasWoken;
            }
            thread::park();
            let still_listed = self.sleepers().iter().any(|(i, _)| *i == id);
            if !still_listed {
                return true;
            }
        }
    }

    /// Submitter side: call after publishing work. Wakes one sleeper when nobody searches.
    pub fn notify(&self) {
        // SYNC POINT: pairs with the fence in `prepare_sleep`.
        fence(SeqCst);
        if self.searching.load(SeqCst) == 0 && self.sleeping.load(SeqCst) > 0 {
            self.wake_one();
        }
    }

    /// Wakes one sleeper, if any, counting it as a searcher. Returns whether one was woken.
    pub fn wake_one(&self) -> bool {
        let t = {
            let mut s = self.sleepers();
            let Some((_, t)) = s.pop() else { return false };
            self.sleeping.fetch_sub(1, SeqCst);
            self.searching.fetch_add(1, SeqCst);
            t
        };
        t.unpark();
        true
    }

    /// Number of parked workers.
    pub fn sleeping(&self) -> usize {
        self.sleeping.load(SeqCst)
    }

    /// Number of searching workers.
    pub fn searching(&self) -> usize {
        self.searching.load(SeqCst)
    }

    /// Wakes every sleeper for good: [`Sleep::park`] returns at once from now on. Sleepers
    /// stay on the list and take themselves off, so that only a real waker's pop makes a
    /// worker a searcher.
    pub fn shutdown(&self) {
        self.shutdown.store(true, SeqCst);
        let all: Vec<Thread> = self.sleepers().iter().map(|(_, t)| t.clone()).collect();
        for t in all {
            t.unpark();
        }
    }

    /// True once [`Sleep::shutdown`] was called.
    pub fn is_shutdown(&self) -> bool {
        self.shutdown.load(SeqCst)
    }
}
