//! Model check of `signal.rs` with loom: [`WaitList`] hands every waiter out exactly once,
//! and [`RunFlag`] leaves no message without a turn and never runs two turns at once.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p rayhpc-sched --release --test loom_signal`
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use rayhpc_sched::signal::{RunFlag, WaitList};

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
