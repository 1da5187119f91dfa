//! The pin protocol of the object table, over any 64-bit atomic word: the shared mapping's
//! `std` atomics in the store and its clients, loom's in the model check
//! (`objstore/tests/loom_pin.rs`). See [`crate::table`] for what the words mean.

use std::sync::atomic::Ordering;

/// Bit 63 of a pin word: the store holds the entry exclusively.
pub const EXCL: u64 = 1 << 63;

/// The atomic operations the protocols use.
pub trait Word {
    /// `store`.
    fn store(&self, v: u64, o: Ordering);
    /// `swap`.
    fn swap(&self, v: u64, o: Ordering) -> u64;
    /// A `SeqCst` fence of the same atomics' world (std's, or loom's in the model).
    fn fence_seqcst();
    /// `fetch_or`.
    fn fetch_or(&self, v: u64, o: Ordering) -> u64;
    /// `fetch_and`.
    fn fetch_and(&self, v: u64, o: Ordering) -> u64;
    /// `load`.
    fn load(&self, o: Ordering) -> u64;
    /// `compare_exchange`.
    fn compare_exchange(&self, current: u64, new: u64, success: Ordering, failure: Ordering) -> Result<u64, u64>;
}

macro_rules! word {
    ($t:ty, $fence:path) => {
        impl Word for $t {
            fn store(&self, v: u64, o: Ordering) {
                <$t>::store(self, v, o)
            }
            fn swap(&self, v: u64, o: Ordering) -> u64 {
                <$t>::swap(self, v, o)
            }
            fn fence_seqcst() {
                $fence(Ordering::SeqCst)
            }
            fn fetch_or(&self, v: u64, o: Ordering) -> u64 {
                <$t>::fetch_or(self, v, o)
            }
            fn fetch_and(&self, v: u64, o: Ordering) -> u64 {
                <$t>::fetch_and(self, v, o)
            }
            fn load(&self, o: Ordering) -> u64 {
                <$t>::load(self, o)
            }
            fn compare_exchange(&self, current: u64, new: u64, success: Ordering, failure: Ordering) -> Result<u64, u64> {
                <$t>::compare_exchange(self, current, new, success, failure)
            }
        }
    };
}

word!(std::sync::atomic::AtomicU64, std::sync::atomic::fence);
#[cfg(loom)]
word!(loom::sync::atomic::AtomicU64, loom::sync::atomic::fence);

/// The sleep handshake of the ring channels (`crate::ring`), over a waiter's sleep flag:
/// a waiter announces itself and re-checks its condition before it sleeps; a publisher, after
/// publishing its position, takes the flag down and wakes the waiter if it was up. Each side
/// has a `SeqCst` fence between its store and its load, so at least one of the two loads sees
/// the other side's store: either the waiter sees the new position or the publisher sees the
/// flag — no lost wake-up (`objstore/tests/loom_ring.rs`; the fences are what the model can
/// check: it treats `SeqCst` loads and stores as acquire/release, too weak for this).
pub mod handshake {
    use super::Word;
    use std::sync::atomic::Ordering::{Relaxed, SeqCst};

    /// The waiter's side: raises `flag`, then re-checks `ready`. True when it may sleep (on
    /// `flag` == 1); false when the condition already holds (the flag is lowered again).
    pub fn announce<W: Word>(flag: &W, ready: impl FnOnce() -> bool) -> bool {
        flag.store(1, SeqCst);
        W::fence_seqcst();
        if ready() {
            flag.store(0, Relaxed);
            return false;
        }
        true
    }

    /// The publisher's side, after its `SeqCst` store of the new position: true when a waiter
    /// announced itself and must be woken.
    pub fn must_wake<W: Word>(flag: &W) -> bool {
        W::fence_seqcst();
        // Most publishes find nobody asleep: a load, not a read-modify-write, then.
        flag.load(Relaxed) == 1 && flag.swap(0, SeqCst) == 1
    }
}

/// How a pin attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// Pinned: the entry cannot change until unpinned.
    Pinned,
    /// The store holds the entry (spilling, evicting): ask it.
    Busy,
    /// The entry changed since it was looked up.
    Stale,
}

/// Word index and bit of `client` among an entry's pin words.
pub fn bit(client: u32) -> (usize, u64) {
    (client as usize / 63, 1 << (client % 63))
}

/// Sets `client`'s bit if the store does not hold the entry and its state word is still
/// `expect`; clears it again otherwise. One read-modify-write of the pin word against the
/// store's compare-exchange of the same word: one of the two sees the other.
pub fn try_pin<W: Word>(pins: &[W], state: &W, client: u32, expect: u64) -> Pin {
    let (w, bit) = bit(client);
    let prev = pins[w].fetch_or(bit, Ordering::AcqRel);
    if prev & EXCL != 0 {
        pins[w].fetch_and(!bit, Ordering::AcqRel);
        return Pin::Busy;
    }
    if state.load(Ordering::Acquire) != expect {
        pins[w].fetch_and(!bit, Ordering::AcqRel);
        return Pin::Stale;
    }
    Pin::Pinned
}

/// Clears `client`'s bit.
pub fn unpin<W: Word>(pins: &[W], client: u32) {
    let (w, bit) = bit(client);
    pins[w].fetch_and(!bit, Ordering::Release);
}

/// The store takes the entry: every pin word from 0 to [`EXCL`], in order; on the first that
/// is not 0 (a pin, or a reader's bit on its way out) the words taken are given back.
pub fn try_exclusive<W: Word>(pins: &[W]) -> bool {
    for i in 0..pins.len() {
        if pins[i].compare_exchange(0, EXCL, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            for p in &pins[..i] {
                p.fetch_and(!EXCL, Ordering::AcqRel);
            }
            return false;
        }
    }
    true
}

/// The store gives the entry back to readers.
pub fn release_exclusive<W: Word>(pins: &[W]) {
    for p in pins {
        p.fetch_and(!EXCL, Ordering::AcqRel);
    }
}
