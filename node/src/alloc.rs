//! The global allocator of the `rayhpc` binary and of `librayhpc`: mimalloc, with alignments
//! of up to 16 bytes served by its plain `mi_malloc` (feature `mimalloc`).
//!
//! The runtime allocates a task spec and a result slot per task on the submitting thread and
//! frees them on an executor. mimalloc's aligned entry point, which the `mimalloc` crate
//! calls for every allocation, takes its fast path only when the page's local free list has
//! a block; with blocks freed by other threads that list is often empty, and it then
//! over-allocates through its generic path. `mi_malloc` collects the other threads' frees
//! instead. Measured with callgrind, an empty task submitted and got: 1 911 instructions
//! through the crate's allocator, 1 740 through this one.
//!
//! `mi_malloc` of a size rounded up to a multiple of the alignment returns a block of a size
//! class whose blocks are all that aligned (mimalloc starts the first block of every page
//! 16-aligned); the address is checked anyway, and a block that is not aligned goes back,
//! for the aligned entry point (a branch not seen taken in practice).
#![allow(unsafe_code)] // a global allocator: the `GlobalAlloc` trait and mimalloc's C calls

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;

/// See the module documentation.
pub struct Allocator;

/// The largest alignment served by `mi_malloc`.
const PLAIN_ALIGN: usize = 16;

/// A block of `layout` from `plain` (`mi_malloc` or `mi_zalloc`) when the alignment is small
/// and the block came out aligned; `None` sends the caller to the aligned entry point.
#[inline]
fn plain(layout: Layout, plain: unsafe extern "C" fn(usize) -> *mut std::ffi::c_void) -> Option<*mut u8> {
    if layout.align() > PLAIN_ALIGN {
        return None;
    }
    // SAFETY: `mi_malloc`/`mi_zalloc` take any size; the rounded size cannot overflow (a
    // layout's size rounded up to its alignment fits in `isize`).
    let p = unsafe { plain(layout.size().next_multiple_of(layout.align())) }.cast::<u8>();
    if p.is_null() || p.addr() & (layout.align() - 1) == 0 {
        return Some(p);
    }
    // SAFETY: `p` is a live block that `plain` just returned.
    unsafe { libmimalloc_sys::mi_free(p.cast()) };
    None
}

// SAFETY: every block comes from mimalloc, aligned as asked (checked, or from its aligned
// entry point), and goes back to it: `mi_free` and `mi_realloc_aligned` take any block of
// the same heap, however it was allocated.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract (a non-zero size) is passed on.
        plain(layout, libmimalloc_sys::mi_malloc).unwrap_or_else(|| unsafe { MiMalloc.alloc(layout) })
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        plain(layout, libmimalloc_sys::mi_zalloc).unwrap_or_else(|| unsafe { MiMalloc.alloc_zeroed(layout) })
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` is a block of this allocator, that is of mimalloc (`mi_free`).
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as in `dealloc`; `mi_realloc_aligned` keeps the alignment asked.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_writable_zeroed_when_asked_and_survive_realloc() {
        let a = Allocator;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1usize, 3, 7, 8, 9, 15, 16, 17, 24, 40, 72, 88, 100, 1000, 5000, 70_000] {
                let l = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; every block is freed with its layout.
                unsafe {
                    let p = a.alloc(l);
                    assert!(!p.is_null() && p.addr().is_multiple_of(align), "alloc {size} bytes aligned {align}");
                    p.write_bytes(0xa5, size);
                    let z = a.alloc_zeroed(l);
                    assert!(!z.is_null() && z.addr().is_multiple_of(align), "alloc_zeroed {size} aligned {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0), "zeroed {size}");
                    let q = a.realloc(p, l, size * 3);
                    assert!(!q.is_null() && q.addr().is_multiple_of(align), "realloc {size} aligned {align}");
                    assert!(std::slice::from_raw_parts(q, size).iter().all(|&b| b == 0xa5), "realloc kept {size}");
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    a.dealloc(z, l);
                }
            }
        }
    }
}
