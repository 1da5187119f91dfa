//! The reading half of a connection: a staging buffer and a [`FrameDecoder`] over a socket.
//! The handshake reads through it with a deadline; the reader thread then takes it over with
//! whatever bytes were already buffered (frames sent right after the handshake).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::frame::{write_frame, Frame, FrameDecoder, FrameError, Kind};

/// Bytes read per system call; many small frames arrive in one read.
const STAGING: usize = 64 << 10;

/// Why no frame came.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed; `mid_frame` if it cut a frame short.
    Eof { mid_frame: bool },
    /// The deadline passed.
    TimedOut,
    /// Bytes that are not a valid frame.
    Frame(FrameError),
    /// The socket failed (including being shut down by this side).
    Io(io::Error),
}

impl ReadError {
    /// Whether the peer sent something invalid (logged as a dropped connection), as opposed
    /// to going away.
    pub(crate) fn is_bad_input(&self) -> bool {
        matches!(self, ReadError::Frame(_) | ReadError::Eof { mid_frame: true })
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Eof { mid_frame: false } => f.write_str("connection closed by the peer"),
            ReadError::Eof { mid_frame: true } => f.write_str("connection closed in the middle of a frame"),
            ReadError::TimedOut => f.write_str("timed out"),
            ReadError::Frame(e) => write!(f, "bad frame: {e}"),
            ReadError::Io(e) => write!(f, "read failed: {e}"),
        }
    }
}

pub(crate) struct Conn {
    stream: Arc<TcpStream>,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    dec: FrameDecoder,
}

impl Conn {
    pub(crate) fn new(stream: Arc<TcpStream>, max_payload: usize) -> Self {
        Conn { stream, buf: vec![0; STAGING].into_boxed_slice(), start: 0, end: 0, dec: FrameDecoder::with_max_payload(max_payload) }
    }

    pub(crate) fn set_max_payload(&mut self, max: usize) {
        self.dec.set_max_payload(max);
    }

    /// The next frame, blocking until it is whole or `deadline` passes.
    pub(crate) fn next_frame(&mut self, deadline: Option<Instant>) -> Result<Frame, ReadError> {
        loop {
            let mut input = &self.buf[self.start..self.end];
            let got = self.dec.decode(&mut input).map_err(ReadError::Frame)?;
            self.start = self.end - input.len();
            if let Some(frame) = got {
                return Ok(frame);
            }
            // Everything buffered is consumed; read more.
            self.start = 0;
            self.end = 0;
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ReadError::TimedOut);
                }
                self.stream.set_read_timeout(Some(left)).map_err(ReadError::Io)?;
            }
            if self.dec.payload_remaining() >= STAGING {
                // A large payload goes straight into its buffer.
                let want = self.dec.payload_remaining();
                let n = self.dec.fill_payload_from(&*self.stream).map_err(read_error)?;
                if n < want {
                    return Err(ReadError::Eof { mid_frame: true });
                }
                continue;
            }
            let n = loop {
                match (&*self.stream).read(&mut self.buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r.map_err(read_error)?,
                }
            };
            if n == 0 {
                return Err(ReadError::Eof { mid_frame: !self.dec.is_idle() });
            }
            self.end = n;
        }
    }
}

fn read_error(e: io::Error) -> ReadError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ReadError::TimedOut,
        _ => ReadError::Io(e),
    }
}

/// Sends a REFUSED frame with `reason` (best effort), then closes so that the peer reads it:
/// the write side is shut first and what the peer already sent is drained for a moment,
/// because closing a socket with unread input makes the kernel reset the connection, and a
/// reset can destroy the REFUSED frame before the peer reads it.
pub(crate) fn refuse_and_close(stream: &TcpStream, reason: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = write_frame(&mut &*stream, Kind::REFUSED, 0, 0, truncate(reason).as_bytes());
    linger_close(stream);
}

/// Shuts the write side, drains input for up to 200 ms or 1 MiB, then closes both ways.
pub(crate) fn linger_close(stream: &TcpStream) {
    let _ = (&*stream).flush();
    let _ = stream.shutdown(Shutdown::Write);
    let start = Instant::now();
    let limit = Duration::from_millis(200);
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while drained < (1 << 20) {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match (&*stream).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Logs a connection dropped for bad input, on one line.
pub(crate) fn log_dropped(addr: std::net::SocketAddr, reason: &str) {
    eprintln!("rayhpc[transport]: dropped {addr}: {reason}");
}

/// Reasons travel in REFUSED frames; keep them short (and at a character boundary).
pub(crate) fn truncate(reason: &str) -> &str {
    let mut end = reason.len().min(1024);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}
