//! A peer's end of a ring channel to its node runtime: a worker process (the channel
//! inherited across `exec`, the node its parent) or an attached driver (connected to
//! `node.sock` in the node's session directory, the channel's descriptor received over the
//! connection after a hello). [`crate::ring_client::RingClient`] makes the API's calls over it.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayhpc::objstore::fdpass;
use rayhpc::objstore::ring::{Channel, Consumer, Producer, RingError};

use crate::wire::{self, IdGen};

/// True while the process at the other end of `c` is there: it closes the connection when
/// it goes. `c` is non-blocking, and nothing more is sent on it: a read of 0 bytes is its end.
pub fn conn_alive(c: &UnixStream) -> bool {
    use std::io::Read;
    let mut b = [0u8; 1];
    match (&*c).read(&mut b) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted),
    }
}

/// How a peer tells that its node runtime is still there.
enum Liveness {
    /// A worker: the node is its parent process.
    Parent(u32),
    /// An attached driver: the connection the channel came over.
    Conn(UnixStream),
}

impl Liveness {
    fn check(&self) -> bool {
        match self {
            Liveness::Parent(p) => std::os::unix::process::parent_id() == *p,
            Liveness::Conn(c) => conn_alive(c),
        }
    }
}

/// One end of a ring channel to a node runtime.
pub struct Link {
    tx: Producer,
    rx: Consumer,
    peer: Liveness,
    ch: Arc<Channel>,
    /// The node's object store socket.
    store_socket: PathBuf,
    /// Whether this is a worker (its node sends it calls) rather than an attached driver.
    worker: bool,
    /// How this process names its calls' results.
    ids: IdGen,
}

impl Link {
    /// Attaches, as a driver, to the node runtime whose session directory is `dir`.
    ///
    /// # Errors
    /// Nothing listens there, or it does not answer as a node runtime.
    pub fn attach(dir: &Path) -> Result<Link, String> {
        let sock = dir.join("node.sock");
        let conn = UnixStream::connect(&sock).map_err(|e| format!("cannot reach the rayhpc node runtime at {}: {e}", sock.display()))?;
        let mut hello = wire::DRIVER_MAGIC.to_vec();
        hello.extend_from_slice(&std::process::id().to_le_bytes());
        (&conn).write_all(&hello).map_err(|e| format!("{}: {e}", sock.display()))?;
        conn.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 16];
        let (n, mut fds) = fdpass::recv(&conn, &mut buf).map_err(|e| format!("{}: {e}", sock.display()))?;
        if n != 16 || &buf[..8] != wire::NODE_MAGIC || fds.len() != 1 {
            return Err(format!("{} did not answer as a rayhpc node runtime of this version", sock.display()));
        }
        let word = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
        let ids = IdGen { node: word(8), worker: word(12) };
        let ch = Channel::attach(fds.remove(0)).map_err(|e| e.to_string())?;
        conn.set_nonblocking(true).map_err(|e| e.to_string())?;
        let (tx, rx) = ch.peer_ends();
        Ok(Link { tx, rx, peer: Liveness::Conn(conn), ch, store_socket: dir.join("store.sock"), worker: false, ids })
    }

    /// The channel this process was started with, as a worker (`RAYHPC_WORKER_FD`,
    /// `RAYHPC_STORE_SOCKET`, `RAYHPC_IDS`).
    ///
    /// # Errors
    /// The variables are not set (not started by a node runtime) or the channel is bad.
    pub fn inherited() -> Result<Link, String> {
        let n: i32 = std::env::var("RAYHPC_WORKER_FD")
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or("RAYHPC_WORKER_FD is not set: this process was not started by a rayhpc runtime")?;
        let store_socket = std::env::var_os("RAYHPC_STORE_SOCKET").ok_or("RAYHPC_STORE_SOCKET is not set")?;
        let ids = std::env::var("RAYHPC_IDS").ok().and_then(|v| IdGen::from_env(&v)).ok_or("RAYHPC_IDS is not set or malformed")?;
        let fd = fdpass::claim_inherited(n).map_err(|e| e.to_string())?;
        let ch = Channel::attach(fd).map_err(|e| e.to_string())?;
        let (tx, rx) = ch.peer_ends();
        Ok(Link {
            tx,
            rx,
            peer: Liveness::Parent(std::os::unix::process::parent_id()),
            ch,
            store_socket: store_socket.into(),
            worker: true,
            ids,
        })
    }

    /// The node's object store socket (large values are read and written through it).
    pub fn store_socket(&self) -> &Path {
        &self.store_socket
    }

    /// How this process names its calls' results.
    pub fn ids(&self) -> IdGen {
        self.ids
    }

    /// Whether this process is a worker of the node (rather than an attached driver).
    pub fn is_worker(&self) -> bool {
        self.worker
    }

    /// Sends one message (its parts, one after the other).
    ///
    /// # Errors
    /// The node is gone, or the message is over the ring's limit.
    pub fn send(&mut self, parts: &[&[u8]]) -> Result<(), RingError> {
        let peer = &self.peer;
        self.tx.send(parts, None, &mut || peer.check())
    }

    /// The next message, waiting up to `deadline` (forever with `None`).
    ///
    /// # Errors
    /// The node is gone, closed the channel, or the deadline passed.
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<Vec<u8>, RingError> {
        let peer = &self.peer;
        self.rx.recv(deadline, &mut || peer.check()).map(|m| m.to_vec())
    }

    /// Closes the channel: the node lets go of this process's handles.
    pub fn close(&self) {
        self.ch.close();
    }
}
