//! The pin protocol of the object table, over any 64-bit atomic word: the shared mapping's
//! `std` atomics in the store and its clients, loom's in the model check
//! (`objstore/tests/loom_pin.rs`). See [`crate::table`] for what the words mean.

use std::sync::atomic::Ordering;

/// Bit 63 of a pin word: the store holds the entry exclusively.
pub const EXCL: u64 = 1 << 63;

/// The atomic operations the protocol uses.
pub trait Word {
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
    ($t:ty) => {
        impl Word for $t {
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

word!(std::sync::atomic::AtomicU64);
#[cfg(loom)]
word!(loom::sync::atomic::AtomicU64);

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
