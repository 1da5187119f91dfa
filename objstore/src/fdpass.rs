//! Descriptors over a Unix socket (`SCM_RIGHTS`): how a client process receives the arena
//! and the object table; and descriptors inherited across `exec` (how a worker process
//! receives its ring channel).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// At most this many descriptors travel with one message.
pub const MAX_FDS: usize = 4;

/// Room for the control message of [`MAX_FDS`] descriptors (`CMSG_SPACE`), 8-byte aligned.
#[repr(C, align(8))]
struct Control([u8; 64]);

/// Sends `data` (all of it, in one message) with `fds` attached.
///
/// # Errors
/// The socket refused the message, or it was cut short.
pub fn send(sock: &UnixStream, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS && !data.is_empty());
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let mut control = Control([0; 64]);
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let payload = std::mem::size_of_val(raw.as_slice()) as u32;
    // SAFETY: `msg` points at `iov` (one buffer of `data`, read only by the kernel) and at
    // `control`, which is large enough for CMSG_SPACE(payload) (at most 4 fds = 16 bytes, 32
    // with the header) and 8-byte aligned as cmsghdr needs. CMSG_FIRSTHDR/CMSG_DATA return
    // pointers inside `control`; the fds are copied byte-wise into the data area.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !raw.is_empty() {
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(payload) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload) as usize;
            std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), payload as usize);
        }
        libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "message with descriptors cut short"));
    }
    Ok(())
}

/// Receives one message into `buf` and the descriptors that came with it (owned, close-on-exec).
/// Returns the number of bytes (0 at end of stream).
///
/// # Errors
/// The socket failed, or the descriptors were truncated.
pub fn recv(sock: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = Control([0; 64]);
    let mut fds = Vec::new();
    // SAFETY: `msg` points at `iov` (the caller's writable buffer) and `control` (64 aligned
    // bytes); the kernel writes at most `msg_controllen` bytes of control data. We walk the
    // control messages with CMSG_FIRSTHDR/CMSG_NXTHDR, which stay inside `msg_controllen`, and
    // read each SCM_RIGHTS payload unaligned. Every descriptor received is new and owned here.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = control.0.len();
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let count = ((*c).cmsg_len as usize - (data as usize - c as usize)) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "descriptors truncated"));
        }
        n as usize
    };
    Ok((n, fds))
}

/// A duplicate of `fd` that a child process inherits across `exec` (no `FD_CLOEXEC`), at
/// descriptor number `at_least` or above. Close it (drop) once the child is spawned; spawn
/// while holding a lock so that no other child of this process inherits it by accident.
///
/// # Errors
/// The process is out of descriptors.
pub fn inheritable_dup(fd: BorrowedFd<'_>, at_least: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD on a valid, borrowed descriptor returns a new descriptor (without
    // FD_CLOEXEC) that nobody else owns.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, at_least) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `n` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Takes ownership of descriptor `n` that this process inherited (named by its parent, say in
/// an environment variable), marking it close-on-exec so it goes no further.
///
/// # Errors
/// `n` is not an open descriptor.
pub fn claim_inherited(n: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the flags of descriptor `n` (an error if it is not open).
    if n < 0 || unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("descriptor {n} is not open in this process")));
    }
    // SAFETY: `n` is open, and the caller's parent passed it for this process to own: nothing
    // else in this process refers to it.
    let fd = unsafe { OwnedFd::from_raw_fd(n) };
    // SAFETY: F_SETFD on an open descriptor only changes its flags.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;

    #[test]
    fn a_file_travels_and_stays_the_same_file() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut f = tempfile();
        f.write_all(b"shared").unwrap();
        send(&a, b"x", &[f.as_fd()]).unwrap();
        let mut buf = [0u8; 8];
        let (n, fds) = recv(&b, &mut buf).unwrap();
        assert_eq!((n, buf[0], fds.len()), (1, b'x', 1));
        let mut g = std::fs::File::from(fds.into_iter().next().unwrap());
        g.rewind().unwrap();
        let mut s = String::new();
        g.read_to_string(&mut s).unwrap();
        assert_eq!(s, "shared");
        // No descriptors: plain data, an empty list.
        send(&a, b"yz", &[]).unwrap();
        let (n, fds) = recv(&b, &mut buf).unwrap();
        assert_eq!((n, fds.len()), (2, 0));
        drop(a);
        assert_eq!(recv(&b, &mut buf).unwrap().0, 0);
    }

    fn tempfile() -> std::fs::File {
        let p = std::env::temp_dir().join(format!("rayhpc-fdpass-{}-{}", std::process::id(), crate::unique()));
        let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        f
    }

    #[test]
    fn an_inheritable_duplicate_is_claimed_back_close_on_exec() {
        let (a, _b) = UnixStream::pair().unwrap();
        let dup = inheritable_dup(a.as_fd(), 10).unwrap();
        let n = dup.as_raw_fd();
        assert!(n >= 10);
        // SAFETY: F_GETFD only reads flags of an open descriptor.
        assert_eq!(unsafe { libc::fcntl(n, libc::F_GETFD) } & libc::FD_CLOEXEC, 0, "inheritable");
        std::mem::forget(dup); // ownership passes to claim_inherited, as in a child process
        let owned = claim_inherited(n).unwrap();
        // SAFETY: as above.
        assert_ne!(unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_GETFD) } & libc::FD_CLOEXEC, 0);
        drop(owned);
        assert!(claim_inherited(n).is_err(), "closed now");
        assert!(claim_inherited(-1).is_err());
    }
}
