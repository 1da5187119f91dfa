//! The arena's memory: one shared mapping of a memfd (or hugetlbfs file), created with the
//! best backing the machine offers. Its raw byte access is `unsafe` (the store, client and
//! table keep the contract); the crate's other `unsafe` is in `fdpass.rs`, `ring.rs`,
//! `client.rs`, `store.rs` and `spill.rs`, each block with its `// SAFETY:` reason.
//!
//! Preference order ([`Hugepages::Auto`]): `memfd_create(MFD_HUGETLB)` with 2 MiB pages (or
//! 1 GiB when asked), a file on a mounted hugetlbfs, a plain memfd with
//! `madvise(MADV_HUGEPAGE)` when shared-memory THP is enabled, and plain 4 KiB pages. A
//! hugetlb mapping larger than the reserved pool fails at `mmap` (ENOMEM): the next backing
//! is tried and [`Arena::backing`] says what was obtained. The mapping is one contiguous
//! range addressed by offsets, so another process (or a NIC) can map or register it once.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What backs the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// memfd with 1 GiB hugetlb pages.
    Hugetlb1G,
    /// memfd with 2 MiB hugetlb pages.
    Hugetlb2M,
    /// A file on a hugetlbfs mount (page size of the mount).
    HugetlbFs,
    /// Shared memory with transparent huge pages requested (`madvise`).
    Thp,
    /// Plain 4 KiB pages.
    Small,
}

impl fmt::Display for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backing::Hugetlb1G => "hugetlb-1G (memfd)",
            Backing::Hugetlb2M => "hugetlb-2M (memfd)",
            Backing::HugetlbFs => "hugetlbfs file",
            Backing::Thp => "thp (madvise)",
            Backing::Small => "4k pages",
        })
    }
}

impl Backing {
    /// A number for the shared header.
    pub fn code(self) -> u64 {
        match self {
            Backing::Hugetlb1G => 1,
            Backing::Hugetlb2M => 2,
            Backing::HugetlbFs => 3,
            Backing::Thp => 4,
            Backing::Small => 5,
        }
    }

    /// The backing a header number names.
    pub fn from_code(c: u64) -> Option<Backing> {
        Some(match c {
            1 => Backing::Hugetlb1G,
            2 => Backing::Hugetlb2M,
            3 => Backing::HugetlbFs,
            4 => Backing::Thp,
            5 => Backing::Small,
            _ => return None,
        })
    }
}

/// Which page sizes to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hugepages {
    /// 2 MiB hugetlb, hugetlbfs, THP, 4 KiB: the first that works.
    Auto,
    /// 1 GiB hugetlb pages first, then as `Auto`.
    Prefer1G,
    /// Only 2 MiB hugetlb pages: an error when the pool cannot hold the arena.
    Require2M,
    /// No hugetlb pages: THP if enabled for shared memory, else 4 KiB.
    Never,
}

/// A shared mapping of `len` bytes and the descriptor that names it.
pub struct Arena {
    base: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
    backing: Backing,
    /// Why a preferred backing was not used, for the start-up log line.
    fallback: Option<String>,
    /// Mapped with write access (an atomic read-modify-write on a read-only mapping faults).
    writable: bool,
    /// For arenas of small pages: which 2 MiB chunks were faulted in ahead of a large write
    /// (one bit each), and whether the kernel can do it (`MADV_POPULATE_WRITE`, Linux 5.14).
    faulted: Option<(Box<[AtomicU64]>, AtomicBool)>,
}

// SAFETY: the arena is plain shared memory; the mapping stays valid until drop. Which bytes
// a thread may read or write is decided by the allocator and the object table above, not by
// this type, whose accessors are `unsafe` for that reason.
unsafe impl Send for Arena {}
// SAFETY: as above; `&Arena` only hands out raw access through `unsafe` methods.
unsafe impl Sync for Arena {}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena").field("len", &self.len).field("backing", &self.backing).finish()
    }
}

const MB2: usize = 2 << 20;
const GB1: usize = 1 << 30;

fn memfd(name: &str, flags: libc::c_uint) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name has a NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated string; flags are plain bits.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), flags | libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn size_fd(fd: &OwnedFd, len: usize) -> io::Result<()> {
    // SAFETY: a valid descriptor; ftruncate only sets the file size.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Maps `len` bytes of `fd` shared and read-write; `populate` faults every page in now.
fn map(fd: &OwnedFd, len: usize, populate: bool) -> io::Result<NonNull<u8>> {
    map_prot(fd, len, populate, libc::PROT_READ | libc::PROT_WRITE)
}

fn map_prot(fd: &OwnedFd, len: usize, populate: bool, prot: libc::c_int) -> io::Result<NonNull<u8>> {
    let flags = libc::MAP_SHARED | if populate { libc::MAP_POPULATE } else { 0 };
    // SAFETY: a fresh mapping chosen by the kernel (addr NULL) of a valid descriptor whose
    // size is at least `len`; nothing else is affected.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd.as_raw_fd(), 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned NULL"))
}

fn hugetlbfs_mount() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, ty) = (f.next()?, f.next()?, f.next()?);
        (ty == "hugetlbfs").then(|| dir.to_string())
    })
}

/// Whether the kernel gives THP to shared memory (`shmem_enabled` not `never`/`deny`).
pub fn shmem_thp_enabled() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .map(|s| s.split_whitespace().any(|w| matches!(w, "[always]" | "[within_size]" | "[advise]")))
        .unwrap_or(false)
}

impl Arena {
    /// Creates an arena of at least `len` bytes (rounded up to the page size of the backing).
    /// Hugetlb mappings are populated at once (cheap, and a short pool fails here rather than
    /// with SIGBUS later); other backings are populated when `populate` is set.
    ///
    /// # Errors
    /// Every backing failed (the last error), or [`Hugepages::Require2M`] could not be met.
    pub fn create(len: usize, pages: Hugepages, populate: bool) -> io::Result<Arena> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "arena of zero bytes"));
        }
        let mut why: Vec<String> = Vec::new();
        let huge = |flags: libc::c_uint, page: usize, backing: Backing| -> io::Result<Arena> {
            let len = len.next_multiple_of(page);
            let fd = memfd("rayhpc-arena", libc::MFD_HUGETLB | flags)?;
            size_fd(&fd, len)?;
            let base = map(&fd, len, true)?;
            Ok(Arena { base, len, fd, backing, fallback: None, writable: true, faulted: None })
        };
        if pages == Hugepages::Prefer1G {
            match huge(libc::MFD_HUGE_1GB, GB1, Backing::Hugetlb1G) {
                Ok(a) => return Ok(a),
                Err(e) => why.push(format!("hugetlb-1G: {e}")),
            }
        }
        if matches!(pages, Hugepages::Auto | Hugepages::Prefer1G | Hugepages::Require2M) {
            match huge(libc::MFD_HUGE_2MB, MB2, Backing::Hugetlb2M) {
                Ok(a) => return Ok(a),
                Err(e) if pages == Hugepages::Require2M => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("2 MiB hugepages for {len} bytes: {e} (reserve them: echo N > /proc/sys/vm/nr_hugepages)"),
                    ))
                }
                Err(e) => why.push(format!("hugetlb-2M: {e}")),
            }
            if let Some(dir) = hugetlbfs_mount() {
                match Self::hugetlbfs(&dir, len) {
                    Ok(mut a) => {
                        a.fallback = (!why.is_empty()).then(|| why.join("; "));
                        return Ok(a);
                    }
                    Err(e) => why.push(format!("hugetlbfs {dir}: {e}")),
                }
            }
        }
        let len = len.next_multiple_of(MB2);
        let fd = memfd("rayhpc-arena", 0)?;
        size_fd(&fd, len)?;
        let base = map(&fd, len, false)?;
        let mut backing = Backing::Small;
        if shmem_thp_enabled() {
            // SAFETY: the range is exactly the mapping just made; madvise only sets a hint.
            if unsafe { libc::madvise(base.as_ptr().cast(), len, libc::MADV_HUGEPAGE) } == 0 {
                backing = Backing::Thp;
            }
        }
        let faulted = Some(((0..len.div_ceil(MB2 * 64)).map(|_| AtomicU64::new(0)).collect(), AtomicBool::new(true)));
        let arena = Arena { base, len, fd, backing, fallback: (!why.is_empty()).then(|| why.join("; ")), writable: true, faulted };
        if populate {
            arena.populate();
        }
        Ok(arena)
    }

    fn hugetlbfs(dir: &str, len: usize) -> io::Result<Arena> {
        let path = format!("{dir}/rayhpc-arena-{}-{}", std::process::id(), crate::unique());
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        // The name is not needed once open: the file lives as long as its descriptors.
        let _ = std::fs::remove_file(&path);
        let fd = OwnedFd::from(file);
        let len = len.next_multiple_of(MB2);
        size_fd(&fd, len)?;
        let base = map(&fd, len, true)?;
        Ok(Arena { base, len, fd, backing: Backing::HugetlbFs, fallback: None, writable: true, faulted: None })
    }

    /// A shared mapping of plain pages, zero until written and faulted in on first touch
    /// (the object table, ring channels): only the pages used count in anyone's memory.
    ///
    /// # Errors
    /// The memfd could not be created, sized or mapped.
    pub fn plain(len: usize, name: &str) -> io::Result<Arena> {
        let len = len.max(1).next_multiple_of(4096);
        let fd = memfd(name, 0)?;
        size_fd(&fd, len)?;
        let base = map(&fd, len, false)?;
        Ok(Arena { base, len, fd, backing: Backing::Small, fallback: None, writable: true, faulted: None })
    }

    /// Maps an arena another process created, whole (its size is the file's), read-write or
    /// read-only. `backing` is what the creator reported.
    ///
    /// # Errors
    /// The descriptor cannot be measured or mapped.
    pub fn attach(fd: OwnedFd, writable: bool, backing: Backing) -> io::Result<Arena> {
        let len = std::fs::File::from(fd.try_clone()?).metadata()?.len() as usize;
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "shared arena of zero bytes"));
        }
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        let base = map_prot(&fd, len, false, prot)?;
        Ok(Arena { base, len, fd, backing, fallback: None, writable, faulted: None })
    }

    /// The mapping as 64-bit atomic words: how the object table is shared between processes,
    /// which touch it only through atomic operations.
    ///
    /// # Panics
    /// On a read-only mapping (the atomics would fault).
    pub fn words(&self) -> &[AtomicU64] {
        assert!(self.writable, "atomic words of a read-only mapping");
        // SAFETY: the mapping is page-aligned (so 8-byte aligned), `len / 8` words long, and
        // lives as long as `&self`. Every process maps it shared and accesses it only through
        // atomics, which is what `AtomicU64` requires of memory that others write concurrently.
        // A read-only mapping is never handed to `words` (the table is always mapped writable).
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().cast::<AtomicU64>(), self.len / 8) }
    }

    /// Faults every page in by writing one byte per 4 KiB (a no-op for content: zeroes).
    /// Only for a fresh arena that nothing uses yet, hence private.
    fn populate(&self) {
        for off in (0..self.len).step_by(4096) {
            // SAFETY: `off < len`, inside the mapping; the arena is fresh, nobody reads it yet.
            unsafe { self.base.as_ptr().add(off).write_volatile(0) };
        }
    }

    /// Faults in, ahead of a write, the pages of `[off, off + len)` not faulted before, whole
    /// 2 MiB chunks at a time, with one `madvise(MADV_POPULATE_WRITE)` per chunk: several
    /// times faster than taking one fault per 4 KiB page while copying (measured 1.4 against
    /// 0.33 GiB/s for a first write of 1 GiB on this kind of machine). A no-op for hugetlb
    /// arenas (populated when made), for ranges already done, and on kernels without it.
    pub fn prefault(&self, off: usize, len: usize) {
        let Some((bits, works)) = &self.faulted else { return };
        if len == 0 || !works.load(Ordering::Relaxed) || off.checked_add(len).is_none_or(|e| e > self.len) {
            return;
        }
        for chunk in off / MB2..(off + len).div_ceil(MB2) {
            let (word, bit) = (&bits[chunk / 64], 1u64 << (chunk % 64));
            if word.load(Ordering::Relaxed) & bit != 0 {
                continue;
            }
            let start = chunk * MB2;
            let n = MB2.min(self.len - start);
            // SAFETY: `[start, start + n)` lies inside the mapping (chunk < len / 2 MiB rounded
            // up, `n` clipped to the end). MADV_POPULATE_WRITE only faults pages in, writable,
            // without changing their contents, so concurrent readers and writers of objects in
            // the chunk see the same bytes.
            let rc = unsafe { libc::madvise(self.base.as_ptr().add(start).cast(), n, libc::MADV_POPULATE_WRITE) };
            if rc != 0 {
                // EINVAL: a kernel before 5.14. Pages then fault in as they are written.
                works.store(false, Ordering::Relaxed);
                return;
            }
            word.fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The mapping's first byte (to register the whole arena with a NIC once). Reading or
    /// writing through it is the caller's to make sound (`unsafe`, as any raw pointer).
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Never true: an arena has at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What backs it.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// Why better backings were not used (`None` when the first choice worked).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The descriptor, to pass to another process (SCM_RIGHTS) or register with a NIC.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Read access to `len` bytes at `off`.
    ///
    /// # Safety
    /// `off + len <= self.len()`, and nobody writes those bytes while the slice lives (the
    /// object is sealed, or the caller owns its unsealed buffer).
    pub unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
        debug_assert!(off.checked_add(len).is_some_and(|e| e <= self.len));
        // SAFETY: in bounds by the caller's contract; no writer by the caller's contract.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(off), len) }
    }

    /// Write access to `len` bytes at `off`.
    ///
    /// # Safety
    /// `off + len <= self.len()`, and the caller has exclusive use of those bytes while the
    /// slice lives (an allocation of its own, not yet sealed).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self, off: usize, len: usize) -> &mut [u8] {
        debug_assert!(off.checked_add(len).is_some_and(|e| e <= self.len));
        // SAFETY: in bounds and exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(off), len) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `create`; no slice into it outlives `&self`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
