//! Figures between two nodes, measured the same way in one run: a raw TCP stream (the
//! link's own rate, what a pull should approach) and an object pull through the transport
//! (chunked, pipelined, into the puller's store).
//!
//! The head drives: `BENCH_RAW` asks a node to accept one plain TCP connection on its
//! interface and to read `len` bytes from it (it answers with the port, then acknowledges the
//! end with one byte on that connection); `BENCH_PULL` asks it to pull an object the head
//! exports, and answers with the nanoseconds it took.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayhpc_transport::{Kind, Peer};
use serde::{Deserialize, Serialize};

use super::remote::Remote;

/// Head → node: accept a raw TCP stream of `len` bytes (answer: the port).
pub const BENCH_RAW: Kind = Kind(0x120);
/// Head → node: pull object `id` of `len` bytes (answer: nanoseconds taken).
pub const BENCH_PULL: Kind = Kind(0x121);

#[derive(Serialize, Deserialize)]
struct Ask {
    id: u128,
    len: u64,
}

/// Serves the two requests (on the node being measured); false for other kinds.
pub fn on_message(remote: &Arc<Remote>, peer: &Peer, kind: Kind, id: u64, payload: &[u8]) -> bool {
    let Ok(ask) = postcard::from_bytes::<Ask>(payload) else {
        if kind == BENCH_RAW || kind == BENCH_PULL {
            let _ = peer.refuse(id, "a malformed bench request");
            return true;
        }
        return false;
    };
    match kind {
        BENCH_RAW => {
            let ip = peer.local_addr().ip();
            let listener = match TcpListener::bind((ip, 0)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = peer.refuse(id, &format!("cannot listen: {e}"));
                    return true;
                }
            };
            let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
            std::thread::spawn(move || {
                let _ = sink(&listener, ask.len);
            });
            let _ = peer.respond(id, BENCH_RAW, &port.to_le_bytes());
        }
        BENCH_PULL => {
            let (peer, remote) = (peer.clone(), remote.clone());
            std::thread::spawn(move || {
                let t = Instant::now();
                match remote.pull_blocking(&peer, ask.id, ask.len) {
                    Ok(()) => {
                        let _ = peer.respond(id, BENCH_PULL, &(t.elapsed().as_nanos() as u64).to_le_bytes());
                    }
                    Err(e) => {
                        let _ = peer.refuse(id, &e);
                    }
                }
            });
        }
        _ => return false,
    }
    true
}

/// Accepts one connection, reads `len` bytes, acknowledges with one byte.
fn sink(l: &TcpListener, len: u64) -> std::io::Result<()> {
    l.set_nonblocking(false)?;
    let (mut s, _) = l.accept()?;
    let mut buf = vec![0u8; 4 << 20];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = s.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        left -= n as u64;
    }
    s.write_all(&[1])
}

/// The raw TCP stream's rate to `peer`'s node: `len` bytes through one plain connection, in
/// bytes per second.
///
/// # Errors
/// The node refused, or the stream failed.
pub fn raw_stream(peer: &Peer, len: u64) -> Result<f64, String> {
    let ask = postcard::to_allocvec(&Ask { id: 0, len }).map_err(|e| e.to_string())?;
    let f = peer.request(BENCH_RAW, &ask, Duration::from_secs(30)).map_err(|e| e.to_string())?;
    let port = u16::from_le_bytes(f.payload.get(..2).and_then(|b| b.try_into().ok()).ok_or("a bad answer")?);
    let mut s = TcpStream::connect(SocketAddr::new(peer.remote_addr().ip(), port)).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let buf = vec![7u8; 4 << 20];
    let t = Instant::now();
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).map_err(|e| e.to_string())?;
    Ok(len as f64 / t.elapsed().as_secs_f64())
}

/// Has `peer`'s node pull `object` (exported here for the while) through the transport, into
/// its store; its rate in bytes per second, as the puller timed it.
///
/// # Errors
/// The pull failed.
pub fn pull(remote: &Arc<Remote>, peer: &Peer, object: &rayhpc::ObjectRef<rayhpc::Untyped>, len: u64) -> Result<f64, String> {
    let id = object.id().0;
    remote.export_for_bench(id, object.clone());
    let ask = postcard::to_allocvec(&Ask { id, len }).map_err(|e| e.to_string())?;
    let r = peer.request(BENCH_PULL, &ask, Duration::from_secs(120));
    remote.unexport_for_bench(id);
    let f = r.map_err(|e| e.to_string())?;
    let ns = u64::from_le_bytes(f.payload.get(..8).and_then(|b| b.try_into().ok()).ok_or("a bad answer")?);
    Ok(len as f64 / (ns as f64 * 1e-9))
}
