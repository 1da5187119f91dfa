//! Model check of the idle protocol (`sleep.rs`) with loom: every interleaving of a
//! submitter and sleeping workers, with the job queue modelled by release/acquire atomics
//! (as the real deques are), so that only the protocol's own fences order things.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p rayhpc-sched --release --test loom_sleep`
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use rayhpc_sched::sleep::{Cancelled, Sleep};

struct World {
    sleep: Sleep,
    queued: AtomicUsize,
    done: AtomicUsize,
}

impl World {
    fn new(max_searching: usize) -> Arc<Self> {
        Arc::new(World { sleep: Sleep::new(max_searching), queued: AtomicUsize::new(0), done: AtomicUsize::new(0) })
    }

    /// Pops one job if any (acquire, like a deque pop).
    fn take(&self) -> bool {
        let mut n = self.queued.load(Ordering::Acquire);
        while n > 0 {
            match self.queued.compare_exchange(n, n - 1, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => {
                    self.done.fetch_add(1, Ordering::SeqCst);
                    return true;
                }
                Err(m) => n = m,
            }
        }
        false
    }

    fn more(&self) -> bool {
        self.queued.load(Ordering::Acquire) > 0
    }

    /// Submitter side: publish (release, like a deque push), then notify.
    fn submit(&self) {
        self.queued.fetch_add(1, Ordering::Release);
        self.sleep.notify();
    }

    /// The executor loop of `pool.rs` without spinning: run what there is, search once,
    /// register as a sleeper, look again, park. Returns at shutdown.
    fn worker(&self, id: usize) {
        let mut searching = false;
        loop {
            if self.take() {
                if searching {
                    self.sleep.found_work(|| self.more());
                    searching = false;
                }
                continue;
            }
            if self.sleep.is_shutdown() {
                if searching {
                    self.sleep.stop_searching();
                }
                return;
            }
            if !searching && self.sleep.start_searching() {
                searching = true;
                continue; // one more look as a searcher
            }
            if searching {
                self.sleep.stop_searching();
                searching = false;
            }
            self.sleep.prepare_sleep(id);
            if self.take() {
                if self.sleep.cancel_sleep(id) == Cancelled::WasWoken {
                    self.sleep.found_work(|| self.more());
                }
                continue;
            }
            if self.sleep.is_shutdown() {
                if self.sleep.cancel_sleep(id) == Cancelled::WasWoken {
                    self.sleep.stop_searching();
                }
                return;
            }
            searching = self.sleep.park(id);
        }
    }
}

/// One worker, one job: the job is run without any later submission to rescue it.
#[test]
fn a_single_submission_is_never_lost() {
    loom::model(|| {
        let w = World::new(1);
        let w2 = w.clone();
        let t = loom::thread::spawn(move || w2.worker(0));
        w.submit();
        while w.done.load(Ordering::SeqCst) < 1 {
            loom::thread::yield_now();
        }
        w.sleep.shutdown();
        t.join().unwrap();
        assert_eq!(w.queued.load(Ordering::SeqCst), 0);
    });
}

/// Two workers, two jobs: both jobs run, whatever the interleaving of wakes and searches.
#[test]
fn two_workers_two_jobs_all_run() {
    loom::model(|| {
        let w = World::new(1);
        let ts: Vec<_> = (0..2)
            .map(|i| {
                let w2 = w.clone();
                loom::thread::spawn(move || w2.worker(i))
            })
            .collect();
        w.submit();
        w.submit();
        while w.done.load(Ordering::SeqCst) < 2 {
            loom::thread::yield_now();
        }
        w.sleep.shutdown();
        for t in ts {
            t.join().unwrap();
        }
        assert_eq!(w.sleep.searching(), 0, "searcher count leaked");
        assert_eq!(w.sleep.sleeping(), 0, "sleeper count leaked");
    });
}
