//! The shared-memory arena with the machine's real backings. One test function: hugepages
//! are a machine-wide pool, so the steps must not race each other.

use rayhpc_objstore::shm::{shmem_thp_enabled, Arena, Backing, Hugepages};

fn hugepages_free() -> usize {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap();
    m.lines().find(|l| l.starts_with("HugePages_Free:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

fn exercise(a: &Arena) {
    let n = a.len();
    // SAFETY: this test owns the whole arena; the ranges are in bounds and not aliased.
    unsafe {
        a.bytes_mut(0, 4096).fill(0xab);
        a.bytes_mut(n - 64, 64).copy_from_slice(&[7u8; 64]);
        assert!(a.bytes(0, 4096).iter().all(|&b| b == 0xab));
        assert_eq!(a.bytes(n - 64, 64), &[7u8; 64]);
        assert!(a.bytes(4096, 4096).iter().all(|&b| b == 0), "fresh memory is zero");
    }
    let link = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&a.fd()))).unwrap();
    let link = link.to_string_lossy();
    assert!(link.contains("rayhpc-arena"), "{link}");
}

#[test]
fn backings_are_chosen_in_order_and_reported() {
    // Without hugetlb pages: THP when the kernel gives it to shared memory, else 4 KiB.
    let a = Arena::create(8 << 20, Hugepages::Never, true).unwrap();
    assert_eq!(a.backing(), if shmem_thp_enabled() { Backing::Thp } else { Backing::Small });
    assert_eq!(a.len(), 8 << 20);
    exercise(&a);
    drop(a);

    // With a 2 MiB pool that holds the arena, Auto takes hugetlb pages.
    let free = hugepages_free();
    let small = 4 * (2 << 20);
    if free >= 4 {
        let a = Arena::create(small, Hugepages::Auto, false).unwrap();
        assert_eq!(a.backing(), Backing::Hugetlb2M, "{} free hugepages were not used", free);
        assert!(a.fallback_reason().is_none());
        exercise(&a);
        eprintln!("arena backing with {free} free 2 MiB pages: {}", a.backing());
    } else {
        let e = Arena::create(small, Hugepages::Require2M, false).unwrap_err();
        assert!(e.to_string().contains("nr_hugepages"), "{e}");
        eprintln!("no free 2 MiB pages: Require2M refused ({e})");
    }

    // More than the pool holds: Require2M refuses clearly, Auto falls back and says why.
    let too_big = (hugepages_free() + 1) * (2 << 20);
    let e = Arena::create(too_big, Hugepages::Require2M, false).unwrap_err();
    assert!(e.to_string().contains("2 MiB hugepages"), "{e}");
    let a = Arena::create(too_big, Hugepages::Auto, false).unwrap();
    assert!(matches!(a.backing(), Backing::Thp | Backing::Small), "{}", a.backing());
    assert!(a.fallback_reason().is_some_and(|r| r.contains("hugetlb-2M")), "{:?}", a.fallback_reason());
    exercise(&a);

    assert!(Arena::create(0, Hugepages::Auto, false).is_err());
}

/// Resident KiB of the mapping that starts at `base`, from /proc/self/smaps (so that other
/// tests' arenas do not count).
fn rss_kib(base: usize) -> usize {
    let s = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut lines = s.lines();
    while let Some(l) = lines.next() {
        let start = l.split('-').next().and_then(|h| usize::from_str_radix(h, 16).ok());
        if start == Some(base) {
            return lines.find(|l| l.starts_with("Rss:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap();
        }
    }
    panic!("no mapping at {base:#x}");
}

#[test]
fn prefault_makes_a_range_resident_without_changing_its_bytes() {
    let a = Arena::create(16 << 20, Hugepages::Never, false).unwrap();
    // SAFETY: this test owns the whole arena; the ranges are in bounds and not aliased.
    let base = unsafe { a.bytes(0, 1).as_ptr() } as usize;
    // SAFETY: as above.
    unsafe { a.bytes_mut(5 << 20, 8).copy_from_slice(b"12345678") };
    let rss_shmem_kib = || rss_kib(base);
    let before = rss_shmem_kib();
    a.prefault(4 << 20, 8 << 20);
    let after = rss_shmem_kib();
    // 8 MiB asked, covering four 2 MiB chunks (one page of which was resident already).
    assert!(after >= before + 7 * 1024, "RssShmem went from {before} to {after} KiB");
    // SAFETY: as above.
    unsafe {
        assert_eq!(a.bytes(5 << 20, 8), b"12345678");
        assert!(a.bytes(4 << 20, 4096).iter().all(|&b| b == 0));
    }
    // Done chunks, empty and out-of-range requests are no-ops.
    a.prefault(4 << 20, 8 << 20);
    a.prefault(0, 0);
    a.prefault(15 << 20, 4 << 20);
    assert!(rss_shmem_kib() < after + 4 * 1024);
}
