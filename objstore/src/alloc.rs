//! A two-level segregated-fit allocator (TLSF, Masmano et al., "TLSF: a new dynamic memory
//! allocator for real-time systems", ECRTS 2004) over the offsets of one arena.
//!
//! - Sizes are multiples of [`GRANULE`] (64 bytes), so every block is 64-byte aligned; a
//!   caller can ask for more (4 KiB for large objects) and the misaligned head is split off
//!   as a free block.
//! - Free blocks sit in lists indexed by (first level = log2 of the size, second level =
//!   the next [`SL_BITS`] bits). Two bitmaps find the first non-empty list that can hold a
//!   request in O(1): every block in it is large enough ("good fit").
//! - Block headers live beside the arena, in a hash map from offset to header, not in the
//!   arena's own pages: the arena holds object bytes only, and a header never shares a cache
//!   line or a page with an object another process reads. Neighbours are found through the
//!   header's `prev_phys` and `offset + size`, so splitting and coalescing are O(1) (expected,
//!   by the map).
//!
//! Nothing here touches the arena's memory; this is bookkeeping over `[0, capacity)`.

use crate::IntMap;

/// Allocation unit and minimum alignment, in bytes.
pub const GRANULE: u64 = 64;
/// Bits of the second level: each power-of-two range is split in `2^SL_BITS` lists.
pub const SL_BITS: u32 = 4;
const SL_COUNT: usize = 1 << SL_BITS;
/// First-level classes: sizes up to 2^63.
const FL_COUNT: usize = 64;
const NIL: u64 = u64::MAX;

#[derive(Debug, Clone, Copy)]
struct Block {
    size: u64,
    free: bool,
    /// Offset of the block just below this one in the arena (`NIL` for the first).
    prev_phys: u64,
    /// Free-list links (valid while `free`).
    prev_free: u64,
    next_free: u64,
}

/// Why an allocation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllocError {
    /// Larger than the whole arena.
    #[error("{size} bytes asked, the arena holds {capacity} in all")]
    TooLarge {
        /// Requested size.
        size: u64,
        /// Arena capacity.
        capacity: u64,
    },
    /// No free block large enough right now.
    #[error("no free block of {size} bytes ({free} bytes free in all, the largest block is {largest})")]
    Full {
        /// Requested size (after rounding).
        size: u64,
        /// Free bytes in all.
        free: u64,
        /// Largest free block.
        largest: u64,
    },
    /// Zero bytes, or an alignment that is not a power of two of at least 64.
    #[error("invalid request: {0}")]
    Invalid(&'static str),
}

/// The allocator state.
#[derive(Debug)]
pub struct Tlsf {
    capacity: u64,
    blocks: IntMap<u64, Block>,
    heads: Vec<[u64; SL_COUNT]>,
    fl_bitmap: u64,
    sl_bitmap: [u32; FL_COUNT],
    free_bytes: u64,
    allocated: usize,
}

/// (first level, second level) of a size: the list it belongs to when inserted.
fn mapping(size: u64) -> (usize, usize) {
    debug_assert!(size >= GRANULE);
    let fl = 63 - size.leading_zeros();
    if fl < SL_BITS {
        return (fl as usize, 0);
    }
    let sl = (size >> (fl - SL_BITS)) as usize & (SL_COUNT - 1);
    (fl as usize, sl)
}

/// The smallest size at or above `size` whose list holds only blocks of at least `size`:
/// round up to the next second-level boundary.
fn round_for_search(size: u64) -> u64 {
    let fl = 63 - size.leading_zeros();
    if fl < SL_BITS {
        return size;
    }
    let step = 1u64 << (fl - SL_BITS);
    size.checked_add(step - 1).map_or(u64::MAX, |s| s & !(step - 1))
}

impl Tlsf {
    /// An allocator over `[0, capacity)`, rounded down to whole granules.
    pub fn new(capacity: u64) -> Self {
        let capacity = capacity / GRANULE * GRANULE;
        let mut t = Tlsf {
            capacity,
            blocks: IntMap::default(),
            heads: vec![[NIL; SL_COUNT]; FL_COUNT],
            fl_bitmap: 0,
            sl_bitmap: [0; FL_COUNT],
            free_bytes: 0,
            allocated: 0,
        };
        if capacity > 0 {
            t.blocks.insert(0, Block { size: capacity, free: false, prev_phys: NIL, prev_free: NIL, next_free: NIL });
            t.insert_free(0);
        }
        t
    }

    /// Managed bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
    /// Free bytes in all.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }
    /// Live allocations.
    pub fn allocations(&self) -> usize {
        self.allocated
    }

    /// The largest free block (a scan of the non-empty lists' heads of the top class: O(1)
    /// lists, but the top list may hold blocks of different sizes, so its members are walked).
    pub fn largest_free(&self) -> u64 {
        if self.fl_bitmap == 0 {
            return 0;
        }
        let fl = 63 - self.fl_bitmap.leading_zeros() as usize;
        let sl = 31 - self.sl_bitmap[fl].leading_zeros() as usize;
        let mut best = 0;
        let mut at = self.heads[fl][sl];
        while at != NIL {
            let b = self.blocks[&at];
            best = best.max(b.size);
            at = b.next_free;
        }
        best
    }

    /// External fragmentation: `1 - largest_free / free_bytes` (0 when free space is one
    /// block, close to 1 when it is many small ones).
    pub fn fragmentation(&self) -> f64 {
        if self.free_bytes == 0 {
            return 0.0;
        }
        1.0 - self.largest_free() as f64 / self.free_bytes as f64
    }

    fn insert_free(&mut self, off: u64) {
        let size = self.blocks[&off].size;
        let (fl, sl) = mapping(size);
        let head = self.heads[fl][sl];
        {
            let b = self.blocks.get_mut(&off).expect("block exists");
            b.free = true;
            b.prev_free = NIL;
            b.next_free = head;
        }
        if head != NIL {
            self.blocks.get_mut(&head).expect("list head exists").prev_free = off;
        }
        self.heads[fl][sl] = off;
        self.fl_bitmap |= 1 << fl;
        self.sl_bitmap[fl] |= 1 << sl;
        self.free_bytes += size;
    }

    fn remove_free(&mut self, off: u64) {
        let b = self.blocks[&off];
        debug_assert!(b.free);
        let (fl, sl) = mapping(b.size);
        if b.prev_free != NIL {
            self.blocks.get_mut(&b.prev_free).expect("linked").next_free = b.next_free;
        } else {
            self.heads[fl][sl] = b.next_free;
            if b.next_free == NIL {
                self.sl_bitmap[fl] &= !(1 << sl);
                if self.sl_bitmap[fl] == 0 {
                    self.fl_bitmap &= !(1 << fl);
                }
            }
        }
        if b.next_free != NIL {
            self.blocks.get_mut(&b.next_free).expect("linked").prev_free = b.prev_free;
        }
        let m = self.blocks.get_mut(&off).expect("block exists");
        m.free = false;
        self.free_bytes -= b.size;
    }

    /// First free list at or above (fl, sl) that is not empty.
    fn find(&self, size: u64) -> Option<u64> {
        let (fl, sl) = mapping(round_for_search(size));
        if fl >= FL_COUNT {
            return None;
        }
        let sl_map = self.sl_bitmap[fl] & (!0u32 << sl);
        let (fl, sl) = if sl_map != 0 {
            (fl, sl_map.trailing_zeros() as usize)
        } else {
            let fl_map = if fl + 1 >= FL_COUNT { 0 } else { self.fl_bitmap & (!0u64 << (fl + 1)) };
            if fl_map == 0 {
                return None;
            }
            let fl = fl_map.trailing_zeros() as usize;
            (fl, self.sl_bitmap[fl].trailing_zeros() as usize)
        };
        let off = self.heads[fl][sl];
        (off != NIL).then_some(off)
    }

    /// A free block of the list `size` maps to that holds `size` bytes at `align`: a walk of
    /// one list, taken only when the O(1) search found nothing.
    fn fit_in_own_list(&self, size: u64, align: u64) -> Option<u64> {
        let (fl, sl) = mapping(size);
        if fl >= FL_COUNT {
            return None;
        }
        let mut off = self.heads[fl][sl];
        while off != NIL {
            let b = &self.blocks[&off];
            if off.next_multiple_of(align) + size <= off + b.size {
                return Some(off);
            }
            off = b.next_free;
        }
        None
    }

    /// Splits `off` so that it keeps `size` bytes; the rest becomes a free block.
    fn split(&mut self, off: u64, size: u64) {
        let b = self.blocks[&off];
        if b.size - size < GRANULE {
            return;
        }
        let rest = off + size;
        self.blocks.insert(rest, Block { size: b.size - size, free: false, prev_phys: off, prev_free: NIL, next_free: NIL });
        self.blocks.get_mut(&off).expect("block exists").size = size;
        if let Some(next) = self.blocks.get_mut(&(rest + b.size - size)) {
            next.prev_phys = rest;
        }
        self.insert_free(rest);
    }

    /// Allocates `size` bytes aligned to `align` (a power of two, at least 64). Returns the
    /// offset. O(1) expected.
    ///
    /// # Errors
    /// [`AllocError`]: zero size or bad alignment, larger than the arena, or no free block
    /// large enough now (with the free total and the largest block, for the error message).
    pub fn alloc(&mut self, size: u64, align: u64) -> Result<u64, AllocError> {
        if size == 0 {
            return Err(AllocError::Invalid("zero-byte allocation"));
        }
        if !align.is_power_of_two() || align < GRANULE {
            return Err(AllocError::Invalid("alignment must be a power of two of at least 64"));
        }
        if size > self.capacity {
            return Err(AllocError::TooLarge { size, capacity: self.capacity });
        }
        let size = size.div_ceil(GRANULE) * GRANULE;
        // A block that fits as it is and happens to be aligned (the common case for a store
        // that is not fragmented) needs no slack; otherwise ask for room for the worst
        // misalignment.
        let fitting = if align > GRANULE { self.find(size).filter(|o| o % align == 0) } else { None };
        let want = size + (align - GRANULE);
        // Good fit rounds the request up to the next list; when no list above has a block,
        // the request's own list may still hold one that fits (first fit within that list).
        let Some(off) = fitting.or_else(|| self.find(want)).or_else(|| self.fit_in_own_list(size, align)) else {
            return Err(AllocError::Full { size, free: self.free_bytes, largest: self.largest_free() });
        };
        self.remove_free(off);
        let aligned = off.next_multiple_of(align);
        let start = if aligned != off {
            // Split off the misaligned head as a free block of its own.
            let head_size = aligned - off;
            let b = self.blocks[&off];
            self.blocks.insert(aligned, Block { size: b.size - head_size, free: false, prev_phys: off, prev_free: NIL, next_free: NIL });
            if let Some(next) = self.blocks.get_mut(&(off + b.size)) {
                next.prev_phys = aligned;
            }
            self.blocks.get_mut(&off).expect("block exists").size = head_size;
            self.insert_free(off);
            aligned
        } else {
            off
        };
        self.split(start, size);
        self.allocated += 1;
        Ok(start)
    }

    /// Size of the live allocation at `off` (rounded to granules), if there is one.
    pub fn size_of(&self, off: u64) -> Option<u64> {
        self.blocks.get(&off).filter(|b| !b.free).map(|b| b.size)
    }

    /// Frees the allocation at `off`, merging it with free neighbours. Returns its size, or
    /// `None` (and changes nothing) when `off` is not a live allocation.
    pub fn free(&mut self, off: u64) -> Option<u64> {
        let b = *self.blocks.get(&off)?;
        if b.free {
            return None;
        }
        self.allocated -= 1;
        let freed = b.size;
        let mut off = off;
        // Merge with the next block.
        let next_off = off + b.size;
        if let Some(next) = self.blocks.get(&next_off).copied() {
            if next.free {
                self.remove_free(next_off);
                self.blocks.remove(&next_off);
                self.blocks.get_mut(&off).expect("block exists").size += next.size;
                let after = next_off + next.size;
                if let Some(a) = self.blocks.get_mut(&after) {
                    a.prev_phys = off;
                }
            }
        }
        // Merge with the previous block.
        if b.prev_phys != NIL {
            let prev = self.blocks[&b.prev_phys];
            if prev.free {
                self.remove_free(b.prev_phys);
                let size = self.blocks.remove(&off).expect("block exists").size;
                self.blocks.get_mut(&b.prev_phys).expect("block exists").size += size;
                let after = off + size;
                if let Some(a) = self.blocks.get_mut(&after) {
                    a.prev_phys = b.prev_phys;
                }
                off = b.prev_phys;
            }
        }
        self.insert_free(off);
        Some(freed)
    }

    /// Checks every invariant (tests and debugging): blocks tile `[0, capacity)`, links and
    /// bitmaps agree, no two free blocks are adjacent, the free total is right.
    pub fn check(&self) -> Result<(), String> {
        let mut off = 0;
        let mut prev = NIL;
        let mut free = 0;
        let mut prev_free = false;
        let mut live = 0;
        let mut visited = 0;
        while off < self.capacity {
            visited += 1;
            let b = self.blocks.get(&off).ok_or(format!("no block at {off}"))?;
            if b.prev_phys != prev {
                return Err(format!("block {off}: prev_phys {} != {prev}", b.prev_phys));
            }
            if b.size == 0 || b.size % GRANULE != 0 {
                return Err(format!("block {off}: size {}", b.size));
            }
            if b.free {
                if prev_free {
                    return Err(format!("block {off}: two adjacent free blocks"));
                }
                free += b.size;
            } else {
                live += 1;
            }
            prev_free = b.free;
            prev = off;
            off += b.size;
        }
        if off != self.capacity || visited != self.blocks.len() {
            return Err(format!("blocks do not tile the arena ({visited} visited, {} known)", self.blocks.len()));
        }
        if free != self.free_bytes || live != self.allocated {
            return Err(format!("free {free} vs {}, live {live} vs {}", self.free_bytes, self.allocated));
        }
        for fl in 0..FL_COUNT {
            for sl in 0..SL_COUNT {
                let mut at = self.heads[fl][sl];
                let bit = self.sl_bitmap[fl] >> sl & 1 == 1;
                if bit != (at != NIL) {
                    return Err(format!("bitmap ({fl},{sl}) disagrees with its list"));
                }
                let mut back = NIL;
                while at != NIL {
                    let b = self.blocks[&at];
                    if !b.free || mapping(b.size) != (fl, sl) || b.prev_free != back {
                        return Err(format!("list ({fl},{sl}) holds a wrong block at {at}"));
                    }
                    back = at;
                    at = b.next_free;
                }
            }
            if (self.fl_bitmap >> fl & 1 == 1) != (self.sl_bitmap[fl] != 0) {
                return Err(format!("first-level bit {fl} disagrees"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_puts_sizes_in_increasing_lists() {
        let mut last = (0, 0);
        for s in (64..1 << 20).step_by(64) {
            let m = mapping(s);
            assert!(m >= last, "{s}");
            last = m;
            // A list found for a rounded request only holds blocks at least that large.
            let r = round_for_search(s);
            assert!(r >= s);
            let (fl, sl) = mapping(r);
            let min_in_list = if fl < SL_BITS as usize { 1u64 << fl } else { (1u64 << fl) + ((sl as u64) << (fl - SL_BITS as usize)) };
            assert!(min_in_list >= s || fl < SL_BITS as usize, "size {s}: list ({fl},{sl}) starts at {min_in_list}");
        }
    }

    #[test]
    fn alloc_free_coalesce_back_to_one_block() {
        let mut t = Tlsf::new(1 << 20);
        let a = t.alloc(100, 64).unwrap();
        let b = t.alloc(5000, 4096).unwrap();
        let c = t.alloc(64, 64).unwrap();
        assert_eq!(a % 64, 0);
        assert_eq!(b % 4096, 0);
        assert_eq!(t.size_of(a), Some(128));
        t.check().unwrap();
        assert_eq!(t.free(b), Some(5056));
        assert_eq!(t.free(b), None, "double free is refused");
        t.free(a).unwrap();
        t.free(c).unwrap();
        t.check().unwrap();
        assert_eq!(t.free_bytes(), 1 << 20);
        assert_eq!(t.largest_free(), 1 << 20);
        assert_eq!(t.fragmentation(), 0.0);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let mut t = Tlsf::new(4096);
        assert_eq!(t.alloc(8192, 64), Err(AllocError::TooLarge { size: 8192, capacity: 4096 }));
        assert!(matches!(t.alloc(0, 64), Err(AllocError::Invalid(_))));
        assert!(matches!(t.alloc(64, 100), Err(AllocError::Invalid(_))));
        let _a = t.alloc(4096, 64).unwrap();
        let e = t.alloc(64, 64).unwrap_err();
        assert_eq!(e, AllocError::Full { size: 64, free: 0, largest: 0 });
        assert!(e.to_string().contains("no free block"));
        // An aligned free block that fits exactly needs no alignment slack.
        let mut t = Tlsf::new(8192);
        assert_eq!(t.alloc(8192, 4096), Ok(0));
    }
}
