//! A driver's end of its attachment to a node runtime (`rayhpc_init` of a C program with
//! an address, `init(address=...)` in Python): connect to `node.sock` in the node's session
//! directory, say hello, receive a ring channel's descriptor, then make requests on it
//! ([`wire`]'s `Envelope`/`Reply`). The node answers each request before the next; refs the
//! driver dropped travel with its next request (or [`Link::flush_releases`]).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rayhpc::objstore::fdpass;
use rayhpc::objstore::ring::{Channel, Consumer, Producer, RingError};

use crate::wire::{self, Call, Envelope, Reply, Request};

/// An attached driver's link to its node runtime.
pub struct Link {
    tx: Producer,
    rx: Consumer,
    conn: UnixStream,
    ch: std::sync::Arc<Channel>,
    dir: PathBuf,
    released: Vec<u128>,
}

/// True while the node is there: it closes the connection when it goes.
fn alive(c: &UnixStream) -> bool {
    use std::io::Read;
    let mut b = [0u8; 1];
    match (&*c).read(&mut b) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted),
    }
}

impl Link {
    /// Attaches to the node runtime whose session directory is `dir`.
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
        let mut buf = [0u8; 8];
        let (n, mut fds) = fdpass::recv(&conn, &mut buf).map_err(|e| format!("{}: {e}", sock.display()))?;
        if n != 8 || &buf != wire::NODE_MAGIC || fds.len() != 1 {
            return Err(format!("{} did not answer as a rayhpc node runtime", sock.display()));
        }
        let ch = Channel::attach(fds.remove(0)).map_err(|e| e.to_string())?;
        conn.set_nonblocking(true).map_err(|e| e.to_string())?;
        let (tx, rx) = ch.peer_ends();
        Ok(Link { tx, rx, conn, ch, dir: dir.to_path_buf(), released: Vec::new() })
    }

    /// The node's object store socket (large values are read and written through it).
    pub fn store_socket(&self) -> PathBuf {
        self.dir.join("store.sock")
    }

    /// Notes that the driver dropped its ref `id` (told with the next request).
    pub fn release(&mut self, id: u128) {
        self.released.push(id);
    }

    /// Tells the node now about the refs dropped.
    ///
    /// # Errors
    /// The node is gone.
    pub fn flush_releases(&mut self) -> Result<(), String> {
        if self.released.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.released);
        let conn = &self.conn;
        self.tx.send(&[&wire::release_header(), &wire::encode(&ids)], None, &mut || alive(conn)).map_err(ring_err)
    }

    /// One round trip: the request (with the refs dropped since the last one), its reply.
    ///
    /// # Errors
    /// The node is gone, the request is over the ring's message limit, or the reply is not
    /// a reply.
    pub fn request(&mut self, call: Call) -> Result<Reply, String> {
        let release = std::mem::take(&mut self.released);
        let body = wire::encode(&Envelope { release, call });
        let conn = &self.conn;
        let mut alive = || alive(conn);
        self.tx.send(&[&wire::request_header(), &body], None, &mut alive).map_err(ring_err)?;
        let m = self.rx.recv(None, &mut alive).map_err(ring_err)?.to_vec();
        match wire::parse_request(&m)? {
            Request::Reply(b) => wire::decode(b),
            _ => Err("the node runtime sent a call while a request was outstanding".into()),
        }
    }

    /// Detaches: the node lets go of this driver's refs.
    pub fn detach(self) {
        self.ch.close();
    }
}

fn ring_err(e: RingError) -> String {
    match e {
        RingError::Closed => "the rayhpc node runtime went away".into(),
        RingError::TooLarge { size, limit } => format!("the request is {size} bytes, over the limit of {limit} bytes per message"),
        e => e.to_string(),
    }
}
