//! Signals: to worker processes (a cancelled task's), and the node runtime's own SIGINT and
//! SIGTERM (an orderly stop). The crate's only `unsafe`.
#![allow(unsafe_code)]

/// SIGINT: Python raises KeyboardInterrupt in the running call.
pub const INTERRUPT: i32 = libc::SIGINT;
/// SIGKILL.
pub const KILL: i32 = libc::SIGKILL;
/// SIGTERM: asks a process to end.
pub const TERMINATE: i32 = libc::SIGTERM;

/// Sends `sig` to process `pid` (one of this process's children, not yet reaped).
pub fn send(pid: u32, sig: i32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    if pid <= 0 {
        return Err(std::io::Error::other("not a single process"));
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; `pid > 0` names
    // one process (never a group or every process).
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

static TERMINATION: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn note_termination(sig: libc::c_int) {
    // Async-signal-safe: one atomic store.
    TERMINATION.store(sig, std::sync::atomic::Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM set a flag ([`termination`]) instead of ending the process, so
/// that a node runtime shuts down in order (workers stopped, files removed). Handlers are
/// reset by `exec`, so children (workers, the driver command) keep the default actions.
///
/// # Errors
/// `sigaction` failed.
pub fn catch_termination() -> std::io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed `sigaction` is a valid empty one; the handler only stores to an
        // atomic (async-signal-safe) and has the signature `sa_handler` expects.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = note_termination as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The termination signal received since [`catch_termination`], if any.
pub fn termination() -> Option<i32> {
    match TERMINATION.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        s => Some(s),
    }
}
