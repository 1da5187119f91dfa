//! The only `unsafe` of this crate: CPU affinity through `sched_getaffinity(2)` and
//! `sched_setaffinity(2)`. Everything above works with the safe wrappers below.

use std::io;

/// Largest CPU number handled (the size of glibc's `cpu_set_t`).
pub const MAX_CPUS: usize = libc::CPU_SETSIZE as usize;

/// The CPUs of the calling thread's affinity mask, in increasing order.
///
/// This is what `taskset`, a Slurm cpuset or a cgroup gave the process.
///
/// # Errors
/// The `errno` of `sched_getaffinity` when it fails.
pub fn current_affinity() -> io::Result<Vec<usize>> {
    // SAFETY: `cpu_set_t` is a plain bitmask for which all-zeroes is a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable `cpu_set_t` and the size passed is its exact size;
    // pid 0 names the calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `CPU_ISSET` only reads the bitmask; every index is below `CPU_SETSIZE`.
    Ok((0..MAX_CPUS).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

/// Pins the calling thread to the given CPUs.
///
/// # Errors
/// `InvalidInput` for an empty list or a CPU number of `MAX_CPUS` or more; otherwise the
/// `errno` of `sched_setaffinity` (for instance `EINVAL` for CPUs outside the cpuset).
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    if cpus.is_empty() || cpus.iter().any(|&c| c >= MAX_CPUS) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "CPU list empty or out of range"));
    }
    // SAFETY: all-zeroes is a valid, empty `cpu_set_t`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: `c < CPU_SETSIZE` was checked above, so the bit lies inside `set`.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a valid `cpu_set_t` of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
