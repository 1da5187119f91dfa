//! The object table: fixed-size entries in a shared mapping, addressed by slot, that every
//! process of the node reads and pins without a lock.
//!
//! One process (the store) is the only writer of entries: it inserts, seals, spills, restores
//! and removes them under its own mutex. Other processes (clients) and the store's own readers
//! only *look up* an entry and *pin* it, with atomic operations on the shared words:
//!
//! * An entry is 8 words: a state word (`state | creator << 8 | generation << 32`, the
//!   generation bumped on every change), the 128-bit key, the arena offset and length, an LRU
//!   tick, and two pin words: client `c` owns bit `c % 63` of pin word `c / 63`; bit 63 of
//!   each word is [`EXCL`], held by the store while it spills, evicts or rewrites the entry.
//! * Pinning is `fetch_or` of the client's bit, then a check: if [`EXCL`] was set, or the state
//!   word is no longer the one looked up, the bit is cleared again and the pin failed. Taking
//!   [`EXCL`] is a `compare_exchange(0, EXCL)` of each pin word in turn (rolled back if one is
//!   non-zero). Both are read-modify-writes of the same word, so one of them sees the other:
//!   either the store finds a pin and leaves the entry alone, or the reader sees [`EXCL`].
//! * Lookups read the key under the state word like a sequence lock: state, key, fence,
//!   state again; a change in between means the entry was rewritten and the probe is retried.
//! * A client keeps one bit per entry whatever the number of views it holds (it counts them
//!   itself), so when a client dies the store clears that client's bit in every entry and
//!   its pins are gone.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::shm::Arena;

/// Words per entry.
const W: usize = 8;
const STATE: usize = 0;
const KEY0: usize = 1;
const KEY1: usize = 2;
const OFF: usize = 3;
const LEN: usize = 4;
const TICK: usize = 5;
const PIN: usize = 6;
/// Pin words per entry.
const PIN_WORDS: usize = 2;

use crate::protocol;
pub use crate::protocol::{Pin, EXCL};
/// Client indices are `0..MAX_CLIENTS`; 0 is the store's own process.
pub const MAX_CLIENTS: u32 = 63 * PIN_WORDS as u32;

/// Header words, before the entries.
const HEADER: usize = 16;
const H_MAGIC: usize = 0;
const H_VERSION: usize = 1;
const H_SLOTS: usize = 2;
const H_CLOCK: usize = 3;
/// Header words the store publishes for clients and status tools.
pub(crate) const H_CAPACITY: usize = 4;
pub(crate) const H_USED: usize = 5;
pub(crate) const H_OBJECTS: usize = 6;
pub(crate) const H_BACKING: usize = 7;
pub(crate) const H_ARENA_LEN: usize = 8;

const MAGIC: u64 = u64::from_le_bytes(*b"rayhpcOT");
const VERSION: u64 = 1;

/// Entry states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Never used: a probe stops here.
    Empty,
    /// Removed: a probe goes on past it; an insert may reuse it.
    Tomb,
    /// Reserved by its creator, being written.
    Creating,
    /// Immutable and in the arena.
    Sealed,
    /// Immutable and on disk; restored on the next get.
    Spilled,
}

impl State {
    fn of(word: u64) -> State {
        match word & 0xff {
            0 => State::Empty,
            1 => State::Tomb,
            2 => State::Creating,
            3 => State::Sealed,
            _ => State::Spilled,
        }
    }
    fn code(self) -> u64 {
        match self {
            State::Empty => 0,
            State::Tomb => 1,
            State::Creating => 2,
            State::Sealed => 3,
            State::Spilled => 4,
        }
    }
    fn live(self) -> bool {
        matches!(self, State::Creating | State::Sealed | State::Spilled)
    }
}

/// The state in a state word.
pub fn state_of(word: u64) -> State {
    State::of(word)
}

/// The creator (client index) in a state word.
pub fn creator_of(word: u64) -> u32 {
    ((word >> 8) & 0xff) as u32
}

/// The shared table, mapped in this process.
pub struct Table {
    meta: Arena,
    slots: usize,
    /// Tombstones now (the writer's count; see [`Table::clean`]).
    tombs: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Table({} slots)", self.slots)
    }
}

fn hash(key: u128) -> u64 {
    // splitmix64's finalizer over the folded key: ids differ mostly in their low bits.
    let mut z = (key as u64) ^ ((key >> 64) as u64).rotate_left(29);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn pin_bit(client: u32) -> (usize, u64) {
    let (w, bit) = protocol::bit(client);
    (PIN + w, bit)
}

impl Table {
    /// A new table of at least `slots` entries (rounded up to a power of two).
    ///
    /// # Errors
    /// The shared mapping could not be made.
    pub fn create(slots: usize) -> io::Result<Table> {
        let slots = slots.max(16).next_power_of_two();
        let meta = Arena::plain((HEADER + slots * W) * 8, "rayhpc-objtable")?;
        let t = Table { meta, slots, tombs: Default::default() };
        t.h(H_SLOTS).store(slots as u64, Ordering::Relaxed);
        t.h(H_VERSION).store(VERSION, Ordering::Relaxed);
        t.h(H_MAGIC).store(MAGIC, Ordering::Release);
        Ok(t)
    }

    /// The table another process created.
    ///
    /// # Errors
    /// The mapping is not a table of this version, or is too small for its own header.
    pub fn attach(meta: Arena) -> io::Result<Table> {
        let words = meta.words();
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("object table: {what}"));
        if words.len() < HEADER || words[H_MAGIC].load(Ordering::Acquire) != MAGIC {
            return Err(bad("bad magic"));
        }
        if words[H_VERSION].load(Ordering::Relaxed) != VERSION {
            return Err(bad("version mismatch"));
        }
        let slots = words[H_SLOTS].load(Ordering::Relaxed) as usize;
        if !slots.is_power_of_two() || HEADER + slots * W > words.len() {
            return Err(bad("slot count does not fit the mapping"));
        }
        Ok(Table { meta, slots, tombs: Default::default() })
    }

    /// The mapping (to pass to clients).
    pub fn arena(&self) -> &Arena {
        &self.meta
    }

    /// Number of entries.
    pub fn slots(&self) -> usize {
        self.slots
    }

    pub(crate) fn h(&self, i: usize) -> &AtomicU64 {
        &self.meta.words()[i]
    }

    fn e(&self, slot: u32, w: usize) -> &AtomicU64 {
        &self.meta.words()[HEADER + slot as usize * W + w]
    }

    /// The state word of `slot`.
    pub fn state(&self, slot: u32) -> u64 {
        self.e(slot, STATE).load(Ordering::Acquire)
    }

    /// Offset and length of `slot` (meaningful while it is pinned or held by the writer).
    pub fn place(&self, slot: u32) -> (usize, usize) {
        (self.e(slot, OFF).load(Ordering::Relaxed) as usize, self.e(slot, LEN).load(Ordering::Relaxed) as usize)
    }

    /// The key of `slot` as last written.
    pub fn key(&self, slot: u32) -> u128 {
        (self.e(slot, KEY0).load(Ordering::Relaxed) as u128) | ((self.e(slot, KEY1).load(Ordering::Relaxed) as u128) << 64)
    }

    /// The LRU tick of `slot` (larger is more recent).
    pub fn tick(&self, slot: u32) -> u64 {
        self.e(slot, TICK).load(Ordering::Relaxed)
    }

    /// Finds a live entry by key: its slot and state word.
    pub fn lookup(&self, key: u128) -> Option<(u32, u64)> {
        let mask = self.slots - 1;
        let start = hash(key) as usize & mask;
        let mut i = 0;
        while i < self.slots {
            let slot = ((start + i) & mask) as u32;
            let s1 = self.e(slot, STATE).load(Ordering::Acquire);
            let st = State::of(s1);
            if st == State::Empty {
                return None;
            }
            if st.live() {
                let k = self.key(slot);
                fence(Ordering::Acquire);
                if self.e(slot, STATE).load(Ordering::Relaxed) != s1 {
                    continue; // rewritten while read: look at it again
                }
                if k == key {
                    return Some((slot, s1));
                }
            }
            i += 1;
        }
        None
    }

    /// Sets `client`'s pin bit on `slot` if the entry still has state word `expect` and the
    /// store does not hold it. The caller keeps its own count: one bit per client and entry.
    pub fn try_pin(&self, slot: u32, client: u32, expect: u64) -> Pin {
        let r = protocol::try_pin(self.pins(slot), self.e(slot, STATE), client, expect);
        if r == Pin::Pinned {
            self.e(slot, TICK).store(self.h(H_CLOCK).load(Ordering::Relaxed), Ordering::Relaxed);
        }
        r
    }

    /// Clears `client`'s pin bit on `slot`.
    pub fn unpin(&self, slot: u32, client: u32) {
        self.e(slot, TICK).store(self.h(H_CLOCK).load(Ordering::Relaxed), Ordering::Relaxed);
        protocol::unpin(self.pins(slot), client);
    }

    fn pins(&self, slot: u32) -> &[AtomicU64] {
        let base = HEADER + slot as usize * W + PIN;
        &self.meta.words()[base..base + PIN_WORDS]
    }

    /// Whether any client pins `slot` (or the store holds it).
    pub fn pinned(&self, slot: u32) -> bool {
        (0..PIN_WORDS).any(|i| self.e(slot, PIN + i).load(Ordering::Acquire) != 0)
    }

    /// Whether `client`'s bit is set on `slot`.
    pub fn pinned_by(&self, slot: u32, client: u32) -> bool {
        let (w, bit) = pin_bit(client);
        self.e(slot, w).load(Ordering::Acquire) & bit != 0
    }

    // ---- the writer's side: only the store, under its own lock ----

    /// Takes the entry exclusively: fails (changing nothing) when any client pins it.
    pub(crate) fn try_exclusive(&self, slot: u32) -> bool {
        protocol::try_exclusive(self.pins(slot))
    }

    /// Gives the entry back to readers.
    pub(crate) fn release_exclusive(&self, slot: u32) {
        protocol::release_exclusive(self.pins(slot));
    }

    /// Sets `client`'s bit for it (the store pins on a client's behalf, under its lock, with
    /// the entry sealed and not held).
    pub(crate) fn pin_for(&self, slot: u32, client: u32) {
        let (w, bit) = pin_bit(client);
        self.e(slot, w).fetch_or(bit, Ordering::AcqRel);
    }

    /// Clears a dead client's bit.
    pub(crate) fn clear_client(&self, slot: u32, client: u32) {
        let (w, bit) = pin_bit(client);
        self.e(slot, w).fetch_and(!bit, Ordering::AcqRel);
    }

    fn write_state(&self, slot: u32, st: State, creator: u32) -> u64 {
        let old = self.e(slot, STATE).load(Ordering::Relaxed);
        match (State::of(old) == State::Tomb, st == State::Tomb) {
            (false, true) => _ = self.tombs.fetch_add(1, Ordering::Relaxed),
            (true, false) => _ = self.tombs.fetch_sub(1, Ordering::Relaxed),
            _ => {}
        }
        let gen = (old >> 32).wrapping_add(1) & 0xffff_ffff;
        let word = st.code() | ((creator as u64 & 0xff) << 8) | (gen << 32);
        self.e(slot, STATE).store(word, Ordering::Release);
        word
    }

    /// Inserts `key` as [`State::Creating`], held exclusively. `None` when the key is present
    /// or the table has no free entry.
    pub(crate) fn insert(&self, key: u128, off: usize, len: usize, creator: u32) -> Result<u32, InsertError> {
        let mask = self.slots - 1;
        let start = hash(key) as usize & mask;
        let mut free = None;
        for i in 0..self.slots {
            let slot = ((start + i) & mask) as u32;
            let st = State::of(self.e(slot, STATE).load(Ordering::Relaxed));
            match st {
                State::Empty => {
                    free.get_or_insert(slot);
                    break;
                }
                State::Tomb => {
                    free.get_or_insert(slot);
                }
                _ if self.key(slot) == key => return Err(InsertError::Exists),
                _ => {}
            }
        }
        let slot = free.ok_or(InsertError::Full)?;
        for i in 0..PIN_WORDS {
            self.e(slot, PIN + i).fetch_or(EXCL, Ordering::AcqRel);
        }
        // Readers that read the old state then these words see a changed state afterwards.
        fence(Ordering::Release);
        self.e(slot, KEY0).store(key as u64, Ordering::Relaxed);
        self.e(slot, KEY1).store((key >> 64) as u64, Ordering::Relaxed);
        self.e(slot, OFF).store(off as u64, Ordering::Relaxed);
        self.e(slot, LEN).store(len as u64, Ordering::Relaxed);
        self.e(slot, TICK).store(self.bump_clock(), Ordering::Relaxed);
        self.write_state(slot, State::Creating, creator);
        Ok(slot)
    }

    /// Publishes `slot` as sealed at `off` and lets readers pin it (it was held exclusively).
    pub(crate) fn seal(&self, slot: u32, off: usize) -> u64 {
        self.e(slot, OFF).store(off as u64, Ordering::Relaxed);
        self.e(slot, TICK).store(self.bump_clock(), Ordering::Relaxed);
        let w = self.write_state(slot, State::Sealed, 0);
        self.release_exclusive(slot);
        w
    }

    /// Marks a held entry spilled (it stays held: pins fail until it is restored).
    pub(crate) fn mark_spilled(&self, slot: u32) {
        self.write_state(slot, State::Spilled, 0);
    }

    /// Removes a held entry (it stays held until reused). A tombstone followed by an empty
    /// entry ends no probe early, so it and the tombstones before it become empty again:
    /// without that, a table with churn fills with tombstones and every miss walks it all.
    /// Readers are unaffected (a probe that reached the run stopped at the empty entry after
    /// it anyway), and only this writer ever makes an entry live.
    pub(crate) fn remove(&self, slot: u32) {
        let mask = self.slots as u32 - 1;
        if State::of(self.state((slot + 1) & mask)) != State::Empty {
            self.write_state(slot, State::Tomb, 0);
            return;
        }
        let mut s = slot;
        loop {
            self.write_state(s, State::Empty, 0);
            s = s.wrapping_sub(1) & mask;
            if State::of(self.state(s)) != State::Tomb {
                break;
            }
        }
    }

    /// Tombstones now.
    pub fn tombstones(&self) -> usize {
        self.tombs.load(Ordering::Relaxed)
    }

    /// Empties every tombstone no live entry's probe path crosses, once they pass an eighth of
    /// the table (so O(1) amortized per removal). A tombstone is needed only between a live
    /// entry and its home slot; for the others, a probe that now stops there would have found
    /// nothing further on. Entries never move, so readers and handles are unaffected.
    pub(crate) fn maybe_clean(&self) {
        if self.tombstones() <= self.slots / 8 {
            return;
        }
        let mask = self.slots - 1;
        let Some(start) = (0..self.slots).find(|&s| State::of(self.state(s as u32)) == State::Empty) else { return };
        let mut run: Vec<u32> = Vec::new();
        for i in 1..=self.slots {
            let slot = ((start + i) & mask) as u32;
            if State::of(self.state(slot)) != State::Empty {
                run.push(slot);
                continue;
            }
            // `run` is a maximal stretch of non-empty entries; walk it backwards, tracking the
            // earliest home (as a position in the run) of the live entries after each point.
            let mut reach = usize::MAX;
            for j in (0..run.len()).rev() {
                let s = run[j];
                match State::of(self.state(s)) {
                    State::Tomb if reach > j => {
                        self.write_state(s, State::Empty, 0);
                    }
                    st if st.live() => {
                        let home = hash(self.key(s)) as usize & mask;
                        reach = reach.min(home.wrapping_sub(run[0] as usize) & mask);
                    }
                    _ => {}
                }
            }
            run.clear();
        }
    }

    /// Advances the LRU clock.
    pub(crate) fn bump_clock(&self) -> u64 {
        self.h(H_CLOCK).fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Why an insert failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// The key is live already.
    Exists,
    /// No free entry.
    Full,
}

/// Views held per slot: the state word pinned and how many.
type Counts = HashMap<u32, (u64, u32)>;

/// One process's pins: how many views it holds of each entry, and its bit in the table.
pub struct Pins {
    client: u32,
    shards: Box<[Mutex<Counts>]>,
}

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pins(client {})", self.client)
    }
}

const SHARDS: usize = 32;

impl Pins {
    /// Pins of client `client`.
    pub fn new(client: u32) -> Pins {
        Pins { client, shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect() }
    }

    /// The client index.
    pub fn client(&self) -> u32 {
        self.client
    }

    fn shard(&self, slot: u32) -> std::sync::MutexGuard<'_, Counts> {
        // Each update of the map is whole before anything can panic.
        self.shards[slot as usize % SHARDS].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more view of `slot` as of state word `expect`.
    pub fn pin(&self, t: &Table, slot: u32, expect: u64) -> Pin {
        let mut m = self.shard(slot);
        if let Some((word, n)) = m.get_mut(&slot) {
            // Held by this process: the entry cannot have changed.
            if *word != expect {
                return Pin::Stale;
            }
            *n += 1;
            return Pin::Pinned;
        }
        let r = t.try_pin(slot, self.client, expect);
        if r == Pin::Pinned {
            m.insert(slot, (expect, 1));
        }
        r
    }

    /// Runs `f` with the shard of `slot` locked and nothing pinned there by this process
    /// (`f` has the store set the bit, as it does for a client); records one view after.
    ///
    /// # Errors
    /// What `f` returns.
    pub fn pin_with<E>(&self, slot: u32, f: impl FnOnce() -> Result<u64, E>) -> Result<u64, E> {
        let mut m = self.shard(slot);
        if let Some((word, n)) = m.get_mut(&slot) {
            *n += 1;
            return Ok(*word);
        }
        let word = f()?;
        m.insert(slot, (word, 1));
        Ok(word)
    }

    /// One view fewer; the last one clears the bit. Returns true when it was the last.
    pub fn unpin(&self, t: &Table, slot: u32) -> bool {
        let mut m = self.shard(slot);
        let Some((_, n)) = m.get_mut(&slot) else {
            debug_assert!(false, "unpin of slot {slot} that is not pinned");
            return false;
        };
        *n -= 1;
        if *n == 0 {
            m.remove(&slot);
            t.unpin(slot, self.client);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_lookup_pin_and_exclusive() {
        let t = Table::create(64).unwrap();
        let s = t.insert(7, 4096, 100, 0).unwrap();
        assert_eq!(t.insert(7, 0, 1, 0), Err(InsertError::Exists));
        let (slot, w) = t.lookup(7).unwrap();
        assert_eq!((slot, state_of(w)), (s, State::Creating));
        assert_eq!(t.try_pin(s, 3, w), Pin::Busy, "creating entries are held");
        let w = t.seal(s, 8192);
        assert_eq!(t.place(s), (8192, 100));
        assert_eq!(t.try_pin(s, 3, w ^ (1 << 32)), Pin::Stale);
        assert!(!t.pinned(s));
        assert_eq!(t.try_pin(s, 70, w), Pin::Pinned);
        assert!(!t.try_exclusive(s), "a pin keeps the store out");
        assert!(t.pinned(s), "the failed attempt rolled back only its own bits");
        t.unpin(s, 70);
        assert!(t.try_exclusive(s));
        assert_eq!(t.try_pin(s, 1, w), Pin::Busy);
        t.remove(s);
        assert_eq!(t.lookup(7), None);
        let a = t.insert(7, 0, 1, 2).unwrap();
        assert_eq!(a, s);
        assert_eq!(creator_of(t.state(a)), 2);
        assert_eq!(t.lookup(8), None);
    }

    #[test]
    fn tombstones_mid_chain_stay_and_trailing_ones_are_cleared() {
        let t = Table::create(16).unwrap();
        // Keys that collide: same home slot, so they form one chain.
        let home = |k: u128| hash(k) as usize & 15;
        let keys: Vec<u128> = (0..10_000u128).filter(|&k| home(k) == home(0)).take(3).collect();
        let slots: Vec<u32> = keys.iter().map(|&k| t.insert(k, 0, 1, 0).unwrap()).collect();
        t.remove(slots[1]);
        assert_eq!(state_of(t.state(slots[1])), State::Tomb, "mid-chain: the probe for the third must go on");
        assert!(t.lookup(keys[2]).is_some());
        t.remove(slots[2]);
        assert_eq!(state_of(t.state(slots[2])), State::Empty);
        assert_eq!(state_of(t.state(slots[1])), State::Empty, "the run of tombstones before it goes too");
        assert!(t.lookup(keys[0]).is_some());
        // Churn with live entries around does not fill the table with tombstones.
        let t = Table::create(1024).unwrap();
        let mut live: Vec<(u128, u32)> = Vec::new();
        for k in 1..200_000u128 {
            live.push((k, t.insert(k, 0, 1, 0).unwrap()));
            if live.len() > 300 {
                let (_, s) = live.swap_remove((k as usize * 7919) % live.len());
                t.remove(s);
                t.maybe_clean();
            }
        }
        assert!(t.tombstones() <= 1024 / 8 + 1, "{} tombstones", t.tombstones());
        for &(k, s) in &live {
            assert_eq!(t.lookup(k).map(|x| x.0), Some(s), "every live key is still found");
        }
        assert_eq!(t.lookup(u128::MAX), None);
    }

    #[test]
    fn full_table_and_collisions() {
        let t = Table::create(16).unwrap();
        for k in 0..16u128 {
            t.insert(k << 70, 0, 1, 0).unwrap();
        }
        assert_eq!(t.insert(99, 0, 1, 0), Err(InsertError::Full));
        for k in 0..16u128 {
            assert!(t.lookup(k << 70).is_some());
        }
        assert_eq!(t.lookup(99), None);
    }

    #[test]
    fn a_process_counts_its_views_and_holds_one_bit() {
        let t = Table::create(16).unwrap();
        let s = t.insert(1, 0, 1, 0).unwrap();
        let w = t.seal(s, 0);
        let p = Pins::new(5);
        assert_eq!(p.pin(&t, s, w), Pin::Pinned);
        assert_eq!(p.pin(&t, s, w), Pin::Pinned);
        assert!(!p.unpin(&t, s));
        assert!(t.pinned(s));
        assert!(p.unpin(&t, s));
        assert!(!t.pinned(s));
    }
}
