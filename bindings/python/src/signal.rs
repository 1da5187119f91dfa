//! Signals to worker processes (a cancelled task's): the extension's other `unsafe` call.
#![allow(unsafe_code)]

/// SIGINT: Python raises KeyboardInterrupt in the running call.
pub const INTERRUPT: i32 = libc::SIGINT;
/// SIGKILL.
pub const KILL: i32 = libc::SIGKILL;

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
