//! Objects in the arena: create (reserve a buffer) → write → seal → view (pin) → release;
//! under memory pressure, eviction and spilling to disk with transparent restore.
//!
//! The store's process is the only writer of the allocator and the object table; it does
//! every change under one mutex. Reading is lock-free for everyone: a view pins its entry in
//! the shared table (see [`crate::table`]) and reads the arena in place. Other processes
//! reach the store through [`crate::server`] and [`crate::client`].
//!
//! References decide what may go: an object held by somebody (an [`Object`] handle in this
//! process, or a client's reference) is spilled when memory runs short and restored on the
//! next view; an object nobody holds is deleted as soon as nobody pins it; a *cached* object
//! (sealed with [`Allocation::seal_cached`]: a copy whose primary lives elsewhere) stays until
//! the space is needed, then is evicted, least recently used first. Pages are never given
//! back to the kernel on free: a re-faulted page costs far more than the copy into it.

use std::collections::HashMap;
use std::io;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::alloc::{AllocError, Tlsf, GRANULE};
use crate::shm::{Arena, Backing, Hugepages};
use crate::spill::{SpillIo, Spiller};
use crate::table::{self, InsertError, Pin, Pins, State, Table, MAX_CLIENTS};
use crate::{IntMap, IntSet};

/// Objects at least this large are 4 KiB aligned (page-aligned I/O and registration).
pub const LARGE: usize = 64 * 1024;

/// Buffers from this size up are faulted in by the store before they are written.
const PREFAULT_MIN: usize = 1 << 20;

/// How to build a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Capacity in bytes.
    pub capacity: usize,
    /// Page sizes to try.
    pub hugepages: Hugepages,
    /// Fault every page in at start (hugetlb arenas always are).
    pub populate: bool,
    /// Most objects held at once (in memory or spilled); 0 derives it from the capacity.
    pub max_objects: usize,
    /// The directory under which the store makes its own spill directory (named by job,
    /// process and store, and removed with the store; the parent itself is left alone);
    /// `None`: the temporary directory.
    pub spill_dir: Option<PathBuf>,
    /// How long a create waits for pinned objects to be released when the store is full.
    pub full_wait: Duration,
    /// How spill files are written and read.
    pub spill_io: SpillIo,
}

impl StoreConfig {
    /// `capacity` bytes, every other setting at its default.
    pub fn new(capacity: usize) -> StoreConfig {
        StoreConfig {
            capacity,
            hugepages: Hugepages::Auto,
            populate: false,
            max_objects: 0,
            spill_dir: None,
            full_wait: Duration::from_secs(5),
            spill_io: SpillIo::Buffered,
        }
    }
}

/// Why the store refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Larger than the whole store.
    #[error("object of {size} bytes is larger than the object store ({capacity} bytes)")]
    TooLarge {
        /// Object size.
        size: usize,
        /// Store capacity.
        capacity: usize,
    },
    /// No room after evicting and spilling everything that may go and waiting for pins.
    #[error("object store out of memory: {size} bytes asked, {used} of {capacity} bytes in use, {pinned} objects pinned (largest free block {largest})")]
    Full {
        /// Object size.
        size: usize,
        /// Bytes in memory.
        used: usize,
        /// Capacity.
        capacity: usize,
        /// Largest free block.
        largest: usize,
        /// Objects held in memory by pins or unsealed.
        pinned: usize,
    },
    /// The object table is full.
    #[error("object table full: {objects} objects")]
    TableFull {
        /// Its size.
        objects: usize,
    },
    /// An object with this key exists.
    #[error("object {key:032x} exists")]
    Exists {
        /// The key.
        key: u128,
    },
    /// No such object (or not sealed yet).
    #[error("object {key:032x} not found")]
    NotFound {
        /// The key.
        key: u128,
    },
    /// Spilling or restoring failed.
    #[error("spill: {0}")]
    Spill(String),
    /// A malformed or out-of-order request.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The store's process is gone.
    #[error("store disconnected: {0}")]
    Disconnected(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Creating,
    Sealed,
    Spilled,
}

#[derive(Debug)]
struct Info {
    key: u128,
    len: usize,
    off: usize,
    refs: u32,
    creator: u32,
    life: Life,
    cached: bool,
}

struct Inner {
    alloc: Tlsf,
    live: IntMap<u32, Info>,
    /// Nobody holds them; delete when unpinned.
    doomed: IntSet<u32>,
    /// Bit `i`: client index `i` is in use (0 is this process).
    clients: u128,
    spill_dir_made: bool,
    spiller: Spiller,
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Objects written to disk.
    pub spilled: u64,
    /// Bytes written to disk.
    pub spilled_bytes: u64,
    /// Objects read back.
    pub restored: u64,
    /// Bytes read back.
    pub restored_bytes: u64,
    /// Cached objects evicted.
    pub evicted: u64,
    /// Time spent writing spilled objects, in nanoseconds.
    pub spill_nanos: u64,
    /// Time spent reading them back, in nanoseconds.
    pub restore_nanos: u64,
}

/// The object store of one node.
pub struct Store {
    arena: Arena,
    table: Table,
    /// The configured capacity (the arena may be larger: whole pages).
    capacity: usize,
    full_wait: Duration,
    spill_dir: PathBuf,
    inner: Mutex<Inner>,
    pins: Pins,
    used: AtomicUsize,
    objects: AtomicUsize,
    on_disk: AtomicUsize,
    doomed: AtomicUsize,
    spilled: AtomicU64,
    spilled_bytes: AtomicU64,
    restored: AtomicU64,
    restored_bytes: AtomicU64,
    evicted: AtomicU64,
    spill_nanos: AtomicU64,
    restore_nanos: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("arena", &self.arena).field("used", &self.used()).field("objects", &self.objects()).finish()
    }
}

/// This store's own spill directory under `parent`: never a directory someone else made, so
/// removing it with the store removes nothing but spill files.
fn own_spill_dir(parent: Option<&std::path::Path>) -> PathBuf {
    let job = std::env::var("SLURM_JOB_ID").map(|j| format!("job{j}-")).unwrap_or_default();
    let parent = parent.map_or_else(std::env::temp_dir, std::path::Path::to_path_buf);
    parent.join(format!("rayhpc-spill-{job}{}-{}", std::process::id(), crate::unique()))
}

impl Store {
    /// Creates the arena, the object table and the allocator.
    ///
    /// # Errors
    /// The arena or the table could not be mapped.
    pub fn new(config: &StoreConfig) -> io::Result<Arc<Store>> {
        let capacity = config.capacity.max(GRANULE as usize) / GRANULE as usize * GRANULE as usize;
        let arena = Arena::create(capacity, config.hugepages, config.populate)?;
        let max_objects = if config.max_objects > 0 { config.max_objects } else { (capacity / 8192).clamp(16 * 1024, 4 << 20) };
        let table = Table::create(max_objects * 2)?;
        table.h(table::H_CAPACITY).store(capacity as u64, Ordering::Relaxed);
        table.h(table::H_ARENA_LEN).store(arena.len() as u64, Ordering::Relaxed);
        table.h(table::H_BACKING).store(arena.backing().code(), Ordering::Relaxed);
        let inner = Inner {
            alloc: Tlsf::new(capacity as u64),
            live: IntMap::default(),
            doomed: IntSet::default(),
            clients: 1,
            spill_dir_made: false,
            spiller: Spiller::new(config.spill_io),
        };
        Ok(Arc::new(Store {
            arena,
            table,
            capacity,
            full_wait: config.full_wait,
            spill_dir: own_spill_dir(config.spill_dir.as_deref()),
            inner: Mutex::new(inner),
            pins: Pins::new(0),
            used: AtomicUsize::new(0),
            objects: AtomicUsize::new(0),
            on_disk: AtomicUsize::new(0),
            doomed: AtomicUsize::new(0),
            spilled: AtomicU64::new(0),
            spilled_bytes: AtomicU64::new(0),
            restored: AtomicU64::new(0),
            restored_bytes: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            spill_nanos: AtomicU64::new(0),
            restore_nanos: AtomicU64::new(0),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update under the lock is whole before anything in it can panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves a writable buffer of `len` bytes for `key`.
    ///
    /// # Errors
    /// [`StoreError::TooLarge`] beyond the capacity, [`StoreError::Exists`] for a live key,
    /// [`StoreError::Full`] when nothing more can be evicted or spilled within the wait.
    pub fn create(self: &Arc<Self>, key: u128, len: usize) -> Result<Allocation, StoreError> {
        let (slot, off) = self.create_for(key, len, 0)?;
        self.prefault(off, len);
        Ok(Allocation { store: self.clone(), slot, off, len, key, done: false })
    }

    /// Copies `bytes` into a new sealed object (one copy).
    ///
    /// # Errors
    /// As [`Store::create`].
    pub fn put(self: &Arc<Self>, key: u128, bytes: &[u8]) -> Result<Object, StoreError> {
        let mut a = self.create(key, bytes.len())?;
        a.as_mut_slice().copy_from_slice(bytes);
        Ok(a.seal())
    }

    /// A view of the sealed object `key`, restored from disk if it was spilled; `None` when
    /// absent or not sealed yet.
    ///
    /// # Errors
    /// A spilled object could not be restored.
    pub fn get(self: &Arc<Self>, key: u128) -> Result<Option<View>, StoreError> {
        let Some((slot, _)) = self.table.lookup(key) else { return Ok(None) };
        match self.view_slot(slot, key) {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A handle of this process to the sealed object `key`, which another process (a client)
    /// created: the object then stays in the store while the handle lives, whatever that
    /// process does with its own reference.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when `key` is absent or not sealed.
    pub fn adopt(self: &Arc<Self>, key: u128) -> Result<Object, StoreError> {
        let (slot, _) = self.table.lookup(key).ok_or(StoreError::NotFound { key })?;
        let len = {
            let mut g = self.lock();
            match g.live.get_mut(&slot) {
                Some(i) if i.key == key && i.life != Life::Creating => {
                    i.refs += 1;
                    let len = i.len;
                    if i.refs == 1 && g.doomed.remove(&slot) {
                        self.doomed.fetch_sub(1, Ordering::Relaxed);
                    }
                    len
                }
                _ => return Err(StoreError::NotFound { key }),
            }
        };
        Ok(Object(Arc::new(Held { store: self.clone(), slot, key, len })))
    }

    /// Faults in the pages of a large new buffer before it is written (outside the lock).
    pub(crate) fn prefault(&self, off: usize, len: usize) {
        if len >= PREFAULT_MIN {
            self.arena.prefault(off, len);
        }
    }

    pub(crate) fn create_for(&self, key: u128, len: usize, client: u32) -> Result<(u32, usize), StoreError> {
        if len > self.capacity {
            return Err(StoreError::TooLarge { size: len, capacity: self.capacity });
        }
        // (A live key is refused by the insert below, after the allocation: rare, and cheaper
        // than a second probe on every create.)
        let (mut g, off) = self.room(self.lock(), len);
        let off = off?;
        // Released objects whose last pins were other processes' (they unpin without telling
        // the store) are deleted here: so a key released everywhere can be created again,
        // and the figures do not count the dead.
        if self.doomed.load(Ordering::Relaxed) > 0 {
            self.sweep_locked(&mut g);
        }
        match self.table.insert(key, off, len, client) {
            Ok(slot) => {
                g.live.insert(slot, Info { key, len, off, refs: 0, creator: client, life: Life::Creating, cached: false });
                self.used.fetch_add(len, Ordering::Relaxed);
                self.objects.fetch_add(1, Ordering::Relaxed);
                self.publish();
                Ok((slot, off))
            }
            Err(e) => {
                g.alloc.free(off as u64);
                Err(match e {
                    InsertError::Exists => StoreError::Exists { key },
                    InsertError::Full => StoreError::TableFull { objects: self.table.slots() / 2 },
                })
            }
        }
    }

    pub(crate) fn seal_for(&self, slot: u32, client: u32, cached: bool) -> Result<(), StoreError> {
        let mut g = self.lock();
        let info = g
            .live
            .get_mut(&slot)
            .filter(|i| i.life == Life::Creating && i.creator == client)
            .ok_or_else(|| StoreError::Protocol(format!("seal of slot {slot}, which client {client} is not creating")))?;
        info.life = Life::Sealed;
        info.cached = cached;
        info.refs = u32::from(!cached);
        self.table.seal(slot, info.off);
        Ok(())
    }

    pub(crate) fn abort_for(&self, slot: u32, client: u32) -> Result<(), StoreError> {
        let mut g = self.lock();
        match g.live.get(&slot) {
            Some(i) if i.life == Life::Creating && i.creator == client => {
                self.delete(&mut g, slot);
                Ok(())
            }
            _ => Err(StoreError::Protocol(format!("abort of slot {slot}, which client {client} is not creating"))),
        }
    }

    /// Adds `n` references to a sealed object (a client that reads it keeps it alive).
    pub(crate) fn add_ref(&self, slot: u32, key: u128) -> Result<(), StoreError> {
        let mut g = self.lock();
        match g.live.get_mut(&slot) {
            Some(i) if i.key == key && i.life != Life::Creating => {
                i.refs += 1;
                if i.refs == 1 && g.doomed.remove(&slot) {
                    self.doomed.fetch_sub(1, Ordering::Relaxed);
                }
                Ok(())
            }
            _ => Err(StoreError::NotFound { key }),
        }
    }

    /// Drops one reference; the last one deletes the object (now, or when unpinned).
    pub(crate) fn unref(&self, slot: u32) {
        let mut g = self.lock();
        let Some(info) = g.live.get_mut(&slot) else { return };
        debug_assert!(info.refs > 0, "unref of an object nobody holds");
        info.refs = info.refs.saturating_sub(1);
        if info.refs == 0 && !info.cached {
            self.try_delete(&mut g, slot);
        }
    }

    /// Deletes an unreferenced object now if nobody pins it, else when the last pin goes.
    fn try_delete(&self, g: &mut Inner, slot: u32) {
        match g.live.get(&slot).map(|i| i.life) {
            Some(Life::Spilled) => self.delete(g, slot),
            Some(Life::Sealed) if self.table.try_exclusive(slot) => self.delete(g, slot),
            Some(Life::Sealed) if g.doomed.insert(slot) => {
                self.doomed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Removes an entry the caller holds exclusively and gives its memory or file back.
    fn delete(&self, g: &mut Inner, slot: u32) {
        let Some(info) = g.live.remove(&slot) else { return };
        if g.doomed.remove(&slot) {
            self.doomed.fetch_sub(1, Ordering::Relaxed);
        }
        match info.life {
            Life::Creating | Life::Sealed => {
                let freed = g.alloc.free(info.off as u64);
                debug_assert!(freed.is_some(), "object at {} freed twice", info.off);
                self.used.fetch_sub(info.len, Ordering::Relaxed);
            }
            Life::Spilled => {
                let _ = std::fs::remove_file(self.spill_path(info.key));
                self.on_disk.fetch_sub(info.len, Ordering::Relaxed);
            }
        }
        self.objects.fetch_sub(1, Ordering::Relaxed);
        self.table.remove(slot);
        self.table.maybe_clean();
        self.publish();
    }

    /// Deletes unreferenced objects whose last pin has gone.
    pub fn sweep(&self) {
        if self.doomed.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut g = self.lock();
        self.sweep_locked(&mut g);
    }

    fn sweep_locked(&self, g: &mut Inner) {
        let doomed: Vec<u32> = g.doomed.iter().copied().collect();
        for slot in doomed {
            if self.table.try_exclusive(slot) {
                self.delete(g, slot);
            }
        }
    }

    fn publish(&self) {
        self.table.h(table::H_USED).store(self.used() as u64, Ordering::Relaxed);
        self.table.h(table::H_OBJECTS).store(self.objects() as u64, Ordering::Relaxed);
    }

    /// Allocates `len` bytes, evicting and spilling as needed, waiting up to `full_wait` for
    /// pins to go when nothing else can. The lock is released while waiting.
    fn room<'a>(&'a self, mut g: MutexGuard<'a, Inner>, len: usize) -> (MutexGuard<'a, Inner>, Result<usize, StoreError>) {
        let align = if len >= LARGE { 4096 } else { GRANULE };
        let size = len.max(1) as u64;
        let mut deadline = None;
        let mut nap = Duration::from_micros(200);
        loop {
            let largest = match g.alloc.alloc(size, align) {
                Ok(off) => return (g, Ok(off as usize)),
                Err(AllocError::Full { largest, .. }) => largest as usize,
                Err(_) => return (g, Err(StoreError::TooLarge { size: len, capacity: self.capacity })),
            };
            match self.make_room(&mut g, size, align) {
                Ok(Some(off)) => return (g, Ok(off as usize)),
                Ok(None) => {}
                Err(e) => return (g, Err(e)),
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.full_wait);
            if Instant::now() >= deadline {
                let pinned = g.live.values().filter(|i| i.life != Life::Spilled).count();
                let e = StoreError::Full { size: len, used: self.used(), capacity: self.capacity, largest, pinned };
                return (g, Err(e));
            }
            drop(g);
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(20));
            g = self.lock();
        }
    }

    /// Frees memory until `size` bytes at `align` can be allocated, and allocates them:
    /// unreferenced objects go first, then referenced ones are spilled, least recently used
    /// first. Once the allocation succeeds it goes on until a 32nd of the store is free, so
    /// that a stream of puts under pressure does not pay a scan each. `None` when everything
    /// that may go has gone and the allocation still fails.
    fn make_room(&self, g: &mut Inner, size: u64, align: u64) -> Result<Option<u64>, StoreError> {
        self.sweep_locked(g);
        if let Ok(off) = g.alloc.alloc(size, align) {
            return Ok(Some(off));
        }
        let mut victims: Vec<(bool, u64, u32)> = g
            .live
            .iter()
            .filter(|(_, i)| i.life == Life::Sealed)
            .map(|(&slot, i)| (i.refs > 0, self.table.tick(slot), slot))
            .filter(|&(_, _, slot)| !self.table.pinned(slot))
            .collect();
        victims.sort_unstable();
        let slack = (self.capacity / 32) as u64;
        let mut got = None;
        let mut failure = None;
        for (held, _, slot) in victims {
            if got.is_some() && g.alloc.free_bytes() >= slack {
                break;
            }
            if !self.table.try_exclusive(slot) {
                continue;
            }
            if held {
                if let Err(e) = self.spill(g, slot) {
                    self.table.release_exclusive(slot);
                    failure = Some(e);
                    break;
                }
            } else {
                self.delete(g, slot);
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
            if got.is_none() {
                got = g.alloc.alloc(size, align).ok();
            }
        }
        self.table.bump_clock();
        match (got, failure) {
            (None, Some(e)) => Err(e),
            (got, _) => Ok(got),
        }
    }

    fn spill_path(&self, key: u128) -> PathBuf {
        self.spill_dir.join(format!("{key:032x}"))
    }

    /// Writes a sealed object the caller holds exclusively to disk and frees its memory.
    fn spill(&self, g: &mut Inner, slot: u32) -> Result<(), StoreError> {
        let (key, off, len) = {
            let i = &g.live[&slot];
            (i.key, i.off, i.len)
        };
        if !g.spill_dir_made {
            if let Some(parent) = self.spill_dir.parent() {
                std::fs::create_dir_all(parent).map_err(|e| StoreError::Spill(format!("cannot create {}: {e}", parent.display())))?;
            }
            // `create_dir`, not `create_dir_all`: the directory must be new, hence ours.
            std::fs::create_dir(&self.spill_dir)
                .map_err(|e| StoreError::Spill(format!("cannot create {}: {e}", self.spill_dir.display())))?;
            g.spill_dir_made = true;
        }
        let path = self.spill_path(key);
        // SAFETY: the object is sealed (nobody writes it) and held exclusively (nobody frees
        // or moves it) until this function returns.
        let bytes = unsafe { self.arena.bytes(off, len) };
        let t = Instant::now();
        let written = g.spiller.write(&path, bytes);
        self.spill_nanos.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if let Err(e) = written {
            // A partial file (a full disk) must not keep its space.
            let _ = std::fs::remove_file(&path);
            return Err(StoreError::Spill(format!("writing {len} bytes to {}: {e}", path.display())));
        }
        g.alloc.free(off as u64);
        let info = g.live.get_mut(&slot).expect("victim is live");
        info.life = Life::Spilled;
        self.table.mark_spilled(slot);
        self.used.fetch_sub(len, Ordering::Relaxed);
        self.on_disk.fetch_add(len, Ordering::Relaxed);
        self.spilled.fetch_add(1, Ordering::Relaxed);
        self.spilled_bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.publish();
        Ok(())
    }

    /// Reads a spilled object back into memory and unblocks its readers.
    fn restore<'a>(&'a self, g: MutexGuard<'a, Inner>, slot: u32) -> (MutexGuard<'a, Inner>, Result<(), StoreError>) {
        let Some(&Info { key, len, .. }) = g.live.get(&slot) else { return (g, Ok(())) };
        let (mut g, off) = self.room(g, len);
        let off = match off {
            Ok(off) => off,
            Err(e) => return (g, Err(e)),
        };
        // The lock may have been released while waiting for room: look again.
        if g.live.get(&slot).is_none_or(|i| i.key != key || i.life != Life::Spilled) {
            g.alloc.free(off as u64);
            return (g, Ok(()));
        }
        let path = self.spill_path(key);
        // SAFETY: `off..off+len` was just allocated and is not yet published: nobody else
        // reads or writes it.
        let buf = unsafe { self.arena.bytes_mut(off, len) };
        let t = Instant::now();
        let read = g.spiller.read(&path, buf);
        self.restore_nanos.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if let Err(e) = read {
            g.alloc.free(off as u64);
            return (g, Err(StoreError::Spill(format!("reading {len} bytes from {}: {e}", path.display()))));
        }
        let _ = std::fs::remove_file(&path);
        let info = g.live.get_mut(&slot).expect("checked above");
        info.life = Life::Sealed;
        info.off = off;
        self.table.seal(slot, off);
        self.used.fetch_add(len, Ordering::Relaxed);
        self.on_disk.fetch_sub(len, Ordering::Relaxed);
        self.restored.fetch_add(1, Ordering::Relaxed);
        self.restored_bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.publish();
        (g, Ok(()))
    }

    /// Pins `slot` for this process, restoring it first if spilled.
    fn view_slot(self: &Arc<Self>, slot: u32, key: u128) -> Result<View, StoreError> {
        let w = self.table.state(slot);
        if table::state_of(w) == State::Sealed && self.table.key(slot) == key && self.pins.pin(&self.table, slot, w) == Pin::Pinned {
            let (off, len) = self.table.place(slot);
            // The table is shared memory that clients map writable: a range it gives must
            // lie in the arena before it is read (the slow path uses the store's own record).
            if off.checked_add(len).is_some_and(|end| end <= self.arena.len()) {
                return Ok(View { store: self.clone(), slot, key, off, len });
            }
            self.pins.unpin(&self.table, slot);
        }
        // Slow path: under the lock nobody else can spill or move the entry.
        let g = self.lock();
        let (g, r) = self.make_resident(g, slot, key);
        r?;
        let w = self.table.state(slot);
        match self.pins.pin(&self.table, slot, w) {
            Pin::Pinned => {
                let (off, len) = {
                    let i = &g.live[&slot];
                    (i.off, i.len)
                };
                Ok(View { store: self.clone(), slot, key, off, len })
            }
            other => Err(StoreError::Protocol(format!("pin of a resident object failed under the store lock ({other:?})"))),
        }
    }

    /// Under the lock: restores `slot` if spilled; errors when it is not a sealed `key`.
    fn make_resident<'a>(&'a self, g: MutexGuard<'a, Inner>, slot: u32, key: u128) -> (MutexGuard<'a, Inner>, Result<(), StoreError>) {
        match g.live.get(&slot) {
            Some(i) if i.key == key && i.life == Life::Sealed => (g, Ok(())),
            Some(i) if i.key == key && i.life == Life::Spilled => {
                let (g, r) = self.restore(g, slot);
                match (r, g.live.get(&slot)) {
                    (Err(e), _) => (g, Err(e)),
                    (Ok(()), Some(i)) if i.key == key && i.life == Life::Sealed => (g, Ok(())),
                    _ => (g, Err(StoreError::NotFound { key })),
                }
            }
            _ => (g, Err(StoreError::NotFound { key })),
        }
    }

    /// For a client: makes `slot` resident and sets the client's pin bit. Returns the state
    /// word, offset and length.
    pub(crate) fn pin_for(&self, slot: u32, key: u128, client: u32) -> Result<(u64, usize, usize), StoreError> {
        let g = self.lock();
        let (g, r) = self.make_resident(g, slot, key);
        r?;
        self.table.pin_for(slot, client);
        let (off, len) = {
            let i = &g.live[&slot];
            (i.off, i.len)
        };
        Ok((self.table.state(slot), off, len))
    }

    /// A client index for a new connection, `None` when all are taken.
    pub(crate) fn register_client(&self) -> Option<u32> {
        let mut g = self.lock();
        let free = (!g.clients).trailing_zeros();
        if free >= MAX_CLIENTS {
            return None;
        }
        g.clients |= 1 << free;
        Some(free)
    }

    /// A client is gone (closed or died): its pins, unsealed buffers and references go.
    pub(crate) fn reclaim_client(&self, client: u32, refs: &HashMap<u32, u32>) {
        let mut g = self.lock();
        for slot in 0..self.table.slots() as u32 {
            self.table.clear_client(slot, client);
        }
        let unsealed: Vec<u32> = g.live.iter().filter(|(_, i)| i.life == Life::Creating && i.creator == client).map(|(&s, _)| s).collect();
        for slot in unsealed {
            self.delete(&mut g, slot);
        }
        for (&slot, &n) in refs {
            if let Some(i) = g.live.get_mut(&slot) {
                i.refs = i.refs.saturating_sub(n);
                if i.refs == 0 && !i.cached {
                    self.try_delete(&mut g, slot);
                }
            }
        }
        self.sweep_locked(&mut g);
        g.clients &= !(1 << client);
    }

    /// Entries client `client` pins (0 once a gone client has been reclaimed).
    pub fn pins_of(&self, client: u32) -> usize {
        (0..self.table.slots() as u32).filter(|&s| self.table.pinned_by(s, client)).count()
    }

    /// Whether client index `client` is connected (0, this process, always is).
    pub fn client_connected(&self, client: u32) -> bool {
        client < 128 && self.lock().clients & (1 << client) != 0
    }

    pub(crate) fn table(&self) -> &Table {
        &self.table
    }

    pub(crate) fn arena(&self) -> &Arena {
        &self.arena
    }

    /// Bytes of objects in memory (sealed or being written).
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
    /// Objects held, in memory or on disk.
    pub fn objects(&self) -> usize {
        self.objects.load(Ordering::Relaxed)
    }
    /// Bytes of spilled objects on disk.
    pub fn spilled_bytes(&self) -> usize {
        self.on_disk.load(Ordering::Relaxed)
    }
    /// Counters since start.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            spilled: self.spilled.load(Ordering::Relaxed),
            spilled_bytes: self.spilled_bytes.load(Ordering::Relaxed),
            restored: self.restored.load(Ordering::Relaxed),
            restored_bytes: self.restored_bytes.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            spill_nanos: self.spill_nanos.load(Ordering::Relaxed),
            restore_nanos: self.restore_nanos.load(Ordering::Relaxed),
        }
    }
    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// The arena's mapping in this process: its first byte and its length (a memory region
    /// for RDMA: registered once, objects then read at their offsets).
    pub fn region(&self) -> (*mut u8, usize) {
        (self.arena.as_ptr(), self.arena.len())
    }
    /// What backs the arena.
    pub fn backing(&self) -> Backing {
        self.arena.backing()
    }
    /// Why a better backing was not used.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.arena.fallback_reason()
    }
    /// How spill files are written (`buffered`, `direct (io_uring)`), and why not direct when
    /// it was asked for.
    pub fn spill_backend(&self) -> (&'static str, Option<String>) {
        let g = self.lock();
        let (b, why) = g.spiller.backend();
        (b, why.map(str::to_string))
    }

    /// The spill directory (created on the first spill, removed with the store).
    pub fn spill_dir(&self) -> &std::path::Path {
        &self.spill_dir
    }
    /// Fragmentation of the free space (0: one block; see [`Tlsf::fragmentation`]).
    pub fn fragmentation(&self) -> f64 {
        self.lock().alloc.fragmentation()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let g = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        if g.spill_dir_made {
            let _ = std::fs::remove_dir_all(&self.spill_dir);
        }
    }
}

/// A buffer being written: exclusive to its holder until sealed. Dropped unsealed, its
/// bytes go back to the store.
#[derive(Debug)]
pub struct Allocation {
    store: Arc<Store>,
    slot: u32,
    off: usize,
    len: usize,
    key: u128,
    done: bool,
}

impl Allocation {
    /// The buffer.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the allocator gave this range to this allocation alone and the entry is
        // held (readers cannot pin it) until sealed; `&mut self` makes the slice the only
        // access while it lives.
        unsafe { self.store.arena.bytes_mut(self.off, self.len) }
    }

    /// Makes the object immutable and readable; the handle holds one reference.
    pub fn seal(mut self) -> Object {
        self.done = true;
        self.store.seal_for(self.slot, 0, false).expect("this process created the entry");
        Object(Arc::new(Held { store: self.store.clone(), slot: self.slot, key: self.key, len: self.len }))
    }

    /// Seals a copy nobody holds (its primary lives elsewhere): readers find it by key, and
    /// it is evicted, least recently used first, when the space is needed.
    pub fn seal_cached(mut self) {
        self.done = true;
        self.store.seal_for(self.slot, 0, true).expect("this process created the entry");
    }

    /// Its offset in the arena.
    pub fn offset(&self) -> usize {
        self.off
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.store.abort_for(self.slot, 0);
        }
    }
}

struct Held {
    store: Arc<Store>,
    slot: u32,
    key: u128,
    len: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.store.unref(self.slot);
    }
}

/// A sealed object held by this process: it stays in the store (in memory or spilled) while
/// any clone of the handle lives. Read it through [`Object::view`].
#[derive(Clone)]
pub struct Object(Arc<Held>);

impl Object {
    /// Pins the object in memory (restoring it if spilled) and returns its bytes in place.
    ///
    /// # Errors
    /// Restoring failed (disk error, or no room within the wait).
    pub fn view(&self) -> Result<View, StoreError> {
        self.0.store.view_slot(self.0.slot, self.0.key)
    }
    /// Its key.
    pub fn key(&self) -> u128 {
        self.0.key
    }
    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.0.len
    }
    /// True for an empty object.
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }
    /// True while its bytes are in memory (false when spilled).
    pub fn is_resident(&self) -> bool {
        table::state_of(self.0.store.table.state(self.0.slot)) == State::Sealed
    }
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Object({:032x}, {} bytes)", self.0.key, self.0.len)
    }
}

/// Read-only bytes of a sealed object in the arena, pinned (never spilled or moved) while
/// the view lives.
pub struct View {
    store: Arc<Store>,
    slot: u32,
    key: u128,
    off: usize,
    len: usize,
}

impl Deref for View {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the entry is sealed (no writer) and pinned by this view (not freed, moved
        // or spilled) until it drops; the range is the entry's.
        unsafe { self.store.arena.bytes(self.off, self.len) }
    }
}

impl View {
    /// Its offset in the arena (what a remote reader asks for).
    pub fn offset(&self) -> usize {
        self.off
    }
    /// The object's key (what another process of the node reads it by).
    pub fn key(&self) -> u128 {
        self.key
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if self.store.pins.unpin(&self.store.table, self.slot) {
            self.store.sweep();
        }
    }
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "View({} bytes at {})", self.len, self.off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(cap: usize) -> Arc<Store> {
        let mut c = StoreConfig::new(cap);
        c.hugepages = Hugepages::Never;
        c.full_wait = Duration::from_millis(50);
        Store::new(&c).unwrap()
    }

    #[test]
    fn put_view_free_and_limits() {
        let s = store(1 << 20);
        let a = s.put(1, b"hello").unwrap();
        assert_eq!(&*a.view().unwrap(), b"hello");
        let big = s.put(2, &vec![3u8; 300_000]).unwrap();
        assert_eq!(big.view().unwrap().offset() % 4096, 0);
        assert_eq!((s.used(), s.objects()), (300_005, 2));
        assert!(matches!(s.create(3, 2 << 20), Err(StoreError::TooLarge { .. })));
        assert!(matches!(s.create(1, 10), Err(StoreError::Exists { key: 1 })));
        let v = s.get(2).unwrap().unwrap();
        assert_eq!(v[299_999], 3);
        drop(big);
        assert_eq!(s.objects(), 2, "a pinned object outlives its last reference");
        drop(v);
        assert_eq!(s.objects(), 1, "and goes with its last pin");
        let again = s.create(4, 900_000).unwrap();
        drop(again); // unsealed: given back
        drop(a);
        assert_eq!((s.used(), s.objects()), (0, 0));
        assert!(s.get(1).unwrap().is_none());
        assert!(s.put(5, &[]).unwrap().view().unwrap().is_empty());
    }

    #[test]
    fn full_of_pinned_objects_errs_after_the_wait() {
        let s = store(1 << 20);
        let a = s.put(1, &vec![1u8; 700_000]).unwrap();
        let v = a.view().unwrap();
        let t = Instant::now();
        let e = s.create(2, 700_000).unwrap_err();
        assert!(matches!(e, StoreError::Full { size: 700_000, pinned: 1, .. }), "{e}");
        assert!(t.elapsed() >= Duration::from_millis(50));
        drop(v);
        // Unpinned and referenced: spilled to make room, restored on the next view.
        let b = s.put(2, &vec![2u8; 700_000]).unwrap();
        assert!(!a.is_resident());
        assert_eq!(s.spilled_bytes(), 700_000);
        drop(b);
        assert!(a.view().unwrap().iter().all(|&x| x == 1));
        assert_eq!(s.stats().restored, 1);
    }

    #[test]
    fn cached_objects_are_evicted_lru() {
        let s = store(1 << 20);
        for k in 0..4u128 {
            let mut a = s.create(k, 200_000).unwrap();
            a.as_mut_slice().fill(k as u8);
            a.seal_cached();
        }
        // Touch 0 so that 1 is the least recently used.
        drop(s.get(0).unwrap().unwrap());
        let _big = s.put(9, &vec![0u8; 300_000]).unwrap();
        assert!(s.get(1).unwrap().is_none(), "the LRU copy was evicted");
        assert!(s.get(0).unwrap().is_some());
        assert!(s.stats().evicted >= 1);
        assert_eq!(s.stats().spilled, 0, "cached copies are dropped, not spilled");
    }
}
