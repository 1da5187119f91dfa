//! Model check of `signal.rs` with loom: [`WaitList`] hands every waiter out exactly once,
//! [`RunFlag`] leaves no message without a turn and never runs two turns at once, and
//! [`CancelFlag`] never leaves a cancelled job parked with nobody to fail it.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p rayhpc-sched --release --test loom_signal`
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use rayhpc_sched::signal::{CancelFlag, RunFlag, WaitList};

#[test]
fn every_waiter_is_handed_out_exactly_once() {
    loom::model(|| {
        let list = Arc::new(WaitList::<u32>::new());
        let handed = Arc::new(Mutex::new(Vec::new()));
        let regs: Vec<_> = [1u32, 2]
            .into_iter()
            .map(|w| {
                let (list, handed) = (list.clone(), handed.clone());
                loom::thread::spawn(move || {
                    let back = list.register(w);
                    handed.lock().unwrap().extend(back);
                })
            })
            .collect();
        let back = list.set_ready();
        handed.lock().unwrap().extend(back);
        for t in regs {
            t.join().unwrap();
        }
        // A late registration after the event is handed straight back.
        assert_eq!(list.register(3), vec![3]);
        let mut h = handed.lock().unwrap().clone();
        h.sort_unstable();
        assert_eq!(h, vec![1, 2], "a waiter was lost or handed out twice");
        assert!(list.set_ready().is_empty());
    });
}

/// A mailbox (message count) served by turns that whoever wins the flag runs inline.
struct Mailbox {
    flag: RunFlag,
    queued: AtomicUsize,
    processed: AtomicUsize,
    in_turn: AtomicBool,
}

impl Mailbox {
    fn send(&self) {
        self.queued.fetch_add(1, Ordering::Release);
        if self.flag.request() {
            self.run_turns();
        }
    }

    fn run_turns(&self) {
        loop {
            assert!(!self.in_turn.swap(true, Ordering::SeqCst), "two turns at once");
            while self.queued.load(Ordering::Acquire) > 0 {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                self.processed.fetch_add(1, Ordering::SeqCst);
            }
            self.in_turn.store(false, Ordering::SeqCst);
            if !self.flag.finish(|| self.queued.load(Ordering::Acquire) > 0) {
                return;
            }
        }
    }
}

#[test]
fn no_message_is_left_without_a_turn() {
    loom::model(|| {
        let m = Arc::new(Mailbox {
            flag: RunFlag::new(false),
            queued: AtomicUsize::new(0),
            processed: AtomicUsize::new(0),
            in_turn: AtomicBool::new(false),
        });
        let ts: Vec<_> = (0..2)
            .map(|_| {
                let m = m.clone();
                loom::thread::spawn(move || m.send())
            })
            .collect();
        m.send();
        for t in ts {
            t.join().unwrap();
        }
        assert_eq!(m.processed.load(Ordering::SeqCst), 3, "a message was left in the mailbox");
        assert!(
            !m.flag.is_set(),
            "the flag stayed set with nothing to do (queued {}, in_turn {})",
            m.queued.load(Ordering::SeqCst),
            m.in_turn.load(Ordering::SeqCst)
        );
    });
}

/// The runtime's job cell (`AtomicCell<Option<Box<TaskSpec>>>` in a result slot). crossbeam
/// parks an `Option<Box>` and takes it with `AcqRel` swaps, which would carry a cancel from
/// one party to the other through the cell on their own; the protocol must not depend on
/// that, so the model uses the weakest operations that still hand the job to one party and
/// publish it: the take an `Acquire` swap, the park a `Release`-only RMW. Then only the
/// fences can carry the cancel (remove either, and loom finds a cancelled job left parked).
/// (The park is not a plain `Release` store: loom 0.7 lets a store slip between the read and
/// the write of a concurrent RMW, tokio-rs/loom#254, a history C++ forbids.) 0 is empty.
struct JobCell(AtomicUsize);

impl JobCell {
    fn park(&self, job: usize) {
        let parked = self.0.compare_exchange(0, job, Ordering::Release, Ordering::Relaxed);
        assert_eq!(parked, Ok(0), "a job parked over another");
    }

    fn take(&self) -> Option<usize> {
        match self.0.swap(0, Ordering::Acquire) {
            0 => None,
            j => Some(j),
        }
    }
}

#[test]
fn a_cancel_takes_the_parked_job_or_its_parker_sees_it() {
    // Parker (a task launched after its inputs), canceller, and a runner (an executor, or a
    // thread that runs the task inline from `get`) race. A runner that gets the job runs an
    // attempt that fails, and parks it again for a retry, as `execute` does through `launch`.
    loom::model(|| {
        let flag = Arc::new(CancelFlag::new());
        let cell = Arc::new(JobCell(AtomicUsize::new(0)));
        let canceller = {
            let (flag, cell) = (flag.clone(), cell.clone());
            loom::thread::spawn(move || flag.cancel(1, || cell.take()))
        };
        let runner = {
            let (flag, cell) = (flag.clone(), cell.clone());
            loom::thread::spawn(move || {
                let job = cell.take()?;
                cell.park(job);
                flag.parked(|| cell.take())
            })
        };
        cell.park(7);
        let taken_back = flag.parked(|| cell.take());
        let dequeued = canceller.join().unwrap();
        let retry_taken_back = runner.join().unwrap();
        // Still parked at the end would mean: the canceller looked while the job was not
        // parked, and its next parker did not see the cancel. (A queued job waits for a
        // runner; a cancelled one must not.)
        let left = cell.take();
        let all = [dequeued, taken_back, retry_taken_back];
        assert_eq!(left, None, "a cancelled job was left parked (dequeued, taken back, taken back at the retry: {all:?})");
        let holders = all.iter().filter(|j| j.is_some()).count();
        assert_eq!(holders, 1, "the job went to {holders} parties: {all:?}");
        assert_eq!(flag.level(), 1);
    });
}

#[test]
fn cancel_levels_only_grow() {
    loom::model(|| {
        let flag = Arc::new(CancelFlag::new());
        let f = flag.clone();
        let t = loom::thread::spawn(move || f.cancel(2, || None::<()>));
        flag.cancel(1, || None::<()>);
        t.join().unwrap();
        assert_eq!(flag.level(), 2, "a weaker cancel downgraded a forced one");
    });
}
