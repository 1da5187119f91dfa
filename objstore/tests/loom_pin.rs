//! Model check of the object table's pin protocol (`protocol.rs`) with loom: a reader that
//! pinned an entry never sees the store change it, and the store never takes an entry a
//! reader pins; a reader that lost the race is told so (busy or stale) and leaves no bit.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p rayhpc-objstore --release --test loom_pin`
#![cfg(loom)]

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::Arc;
use rayhpc_objstore::protocol::{release_exclusive, try_exclusive, try_pin, unpin, Pin};

const SEALED: u64 = 3 | (1 << 32);
const SPILLED: u64 = 4 | (2 << 32);
const OFF: u64 = 4096;

struct Entry {
    state: AtomicU64,
    pins: [AtomicU64; 2],
    /// What a reader reads through its pin (the offset, standing for the bytes).
    off: AtomicU64,
}

fn entry() -> Arc<Entry> {
    Arc::new(Entry { state: AtomicU64::new(SEALED), pins: [AtomicU64::new(0), AtomicU64::new(0)], off: AtomicU64::new(OFF) })
}

/// Reader `client`: pin, read twice, unpin. Returns whether it pinned.
fn read(e: &Entry, client: u32) -> bool {
    match try_pin(&e.pins, &e.state, client, SEALED) {
        Pin::Pinned => {
            assert_eq!(e.off.load(Ordering::Relaxed), OFF, "a pinned entry changed");
            loom::thread::yield_now();
            assert_eq!(e.off.load(Ordering::Relaxed), OFF, "a pinned entry changed");
            unpin(&e.pins, client);
            true
        }
        Pin::Busy | Pin::Stale => false,
    }
}

/// The store: take the entry, spill it (change its offset and state), give it back.
fn spill(e: &Entry) -> bool {
    if !try_exclusive(&e.pins) {
        return false;
    }
    e.state.store(SPILLED, Ordering::Release);
    e.off.store(0, Ordering::Relaxed);
    true
}

#[test]
fn a_pinned_entry_is_never_taken_and_a_taken_one_never_pinned() {
    loom::model(|| {
        let e = entry();
        // Clients 1 and 64: one in each pin word, so the store's rollback is exercised.
        let readers: Vec<_> = [1u32, 64]
            .into_iter()
            .map(|c| {
                let e = e.clone();
                loom::thread::spawn(move || read(&e, c))
            })
            .collect();
        let spilled = spill(&e);
        let pinned: Vec<bool> = readers.into_iter().map(|t| t.join().unwrap()).collect();
        if spilled {
            // Held by the store: no reader bit is left, only EXCL.
            assert!(e.pins.iter().all(|p| p.load(Ordering::Relaxed) == 1 << 63));
        } else {
            // Someone pinned it at the moment the store tried; every bit is gone now.
            assert!(pinned.iter().any(|&p| p), "the store gave up with nobody pinning");
            assert!(e.pins.iter().all(|p| p.load(Ordering::Relaxed) == 0));
        }
    });
}

#[test]
fn a_release_lets_readers_back_in() {
    loom::model(|| {
        let e = entry();
        assert!(try_exclusive(&e.pins));
        let e2 = e.clone();
        let r = loom::thread::spawn(move || try_pin(&e2.pins, &e2.state, 5, SEALED));
        release_exclusive(&e.pins);
        match r.join().unwrap() {
            Pin::Pinned => assert_eq!(e.pins[0].load(Ordering::Relaxed), 1 << 5),
            Pin::Busy => assert_eq!(e.pins[0].load(Ordering::Relaxed), 0, "a busy reader left its bit"),
            Pin::Stale => panic!("the state did not change"),
        }
    });
}
