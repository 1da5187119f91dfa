//! Sans-IO framing: the fixed header, a decoder fed bytes as they arrive, and an encoder that
//! writes a payload from the caller's slice without copying it.
//!
//! The decoder owns no socket and never blocks, so the same code decodes a handshake with a
//! deadline, a connection's reader thread, and the fuzz test's random splits.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"RHPC";
/// The protocol version this build speaks; a peer speaking another is refused.
pub const VERSION: u16 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 28;
/// Bytes of the header the check covers (all but the check itself).
const CHECKED_LEN: usize = 24;
/// The largest payload a decoder accepts unless told otherwise.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 << 20;
/// Flag bit 0: this frame answers the request with the same id.
pub const FLAG_RESPONSE: u16 = 1;
const KNOWN_FLAGS: u16 = FLAG_RESPONSE;

/// A message type. Kinds below [`Kind::FIRST_APP`] belong to the transport (the constants
/// below; any other is refused as [`FrameError::UnknownKind`]); kinds from `FIRST_APP` up are
/// the application's, passed through untouched.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind(pub u16);

impl Kind {
    /// Handshake opening: node id, incarnation, nonce, largest accepted payload.
    pub const HELLO: Kind = Kind(1);
    /// Handshake proof of the job secret (and, from the lower node id, the verdict).
    pub const HELLO_OK: Kind = Kind(2);
    /// A refusal with a UTF-8 reason: of a connection (then it closes), or, as a response,
    /// of one request.
    pub const REFUSED: Kind = Kind(3);
    /// Round-trip probe; answered by the transport itself.
    pub const PING: Kind = Kind(4);
    /// The answer to a [`Kind::PING`], echoing its payload.
    pub const PONG: Kind = Kind(5);
    /// The first application kind.
    pub const FIRST_APP: Kind = Kind(0x100);

    /// Whether this kind belongs to the application (passed through, never interpreted).
    pub const fn is_app(self) -> bool {
        self.0 >= Self::FIRST_APP.0
    }

    /// Whether the transport knows this kind: an application kind or one of its own.
    pub const fn is_known(self) -> bool {
        self.is_app() || (self.0 >= Self::HELLO.0 && self.0 <= Self::PONG.0)
    }

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::HELLO => "HELLO",
            Self::HELLO_OK => "HELLO_OK",
            Self::REFUSED => "REFUSED",
            Self::PING => "PING",
            Self::PONG => "PONG",
            _ => return None,
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "kind {:#06x}", self.0),
        }
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One decoded message.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the message is.
    pub kind: Kind,
    /// Flag bits ([`FLAG_RESPONSE`]).
    pub flags: u16,
    /// Request id: a response carries its request's; 0 is a one-way message.
    pub id: u64,
    /// The body, opaque to the framing (postcard for the transport's own messages).
    pub payload: Vec<u8>,
}

impl Frame {
    /// Whether this frame answers a request (flag bit 0).
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// The frame's bytes on the wire: header then payload.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let head = Header::new(self.kind, self.flags, self.id, self.payload.len())?.encode();
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&head);
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// The payload decoded with postcard, the project's wire codec for message bodies.
    /// Trailing bytes are an error: a body is exactly one value.
    pub fn body<'de, T: serde::Deserialize<'de>>(&'de self) -> Result<T, crate::Error> {
        let (value, rest) = postcard::take_from_bytes(&self.payload)?;
        if rest.is_empty() {
            Ok(value)
        } else {
            Err(crate::Error::Codec(postcard::Error::DeserializeBadEncoding))
        }
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The payload can be megabytes: its length says enough.
        f.debug_struct("Frame")
            .field("kind", &self.kind)
            .field("flags", &self.flags)
            .field("id", &self.id)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Why bytes are not a valid frame. After one, the stream is out of step and cannot be
/// trusted again: the decoder keeps returning the same error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The stream does not start with [`MAGIC`]: not this protocol, or out of step.
    #[error("bad magic {}: not a rayhpc transport stream", got.escape_ascii())]
    BadMagic {
        /// The bytes found where the magic should be, up to the first wrong one.
        got: Vec<u8>,
    },
    /// A peer speaking another protocol version.
    #[error("protocol version {got}, this build speaks {want}")]
    Version {
        /// The version in the header.
        got: u16,
        /// [`VERSION`].
        want: u16,
    },
    /// The header's check does not match its bytes: corruption or an out-of-step stream.
    #[error("header check {got:#010x} does not match the header ({want:#010x}): corrupt stream")]
    BadCheck {
        /// The check carried by the header.
        got: u32,
        /// The check computed over the header.
        want: u32,
    },
    /// The reserved field is not zero (kept so that a later version can use it).
    #[error("reserved header field is {got:#06x}, must be 0")]
    Reserved {
        /// The field's value.
        got: u16,
    },
    /// Flag bits this version does not define.
    #[error("unknown flags {flags:#06x}")]
    BadFlags {
        /// The header's flags.
        flags: u16,
    },
    /// A control kind (below [`Kind::FIRST_APP`]) the transport does not define.
    #[error("unknown control kind {kind:#06x}")]
    UnknownKind {
        /// The header's kind.
        kind: u16,
    },
    /// A payload longer than the receiver accepts (checked before any allocation).
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced (or attempted) length.
        len: u64,
        /// The limit.
        max: u64,
    },
}

/// FNV-1a, 32 bits: a cheap check that catches garbage and misaligned streams at the first
/// header (TCP already protects the bytes themselves).
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// A frame header, the 28 bytes before every payload (layout in the crate's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type.
    pub kind: Kind,
    /// Flag bits.
    pub flags: u16,
    /// Request id.
    pub id: u64,
    /// Payload length in bytes.
    pub len: u32,
}

impl Header {
    /// A header for a payload of `len` bytes; longer than `u32::MAX` is `TooLarge`.
    pub fn new(kind: Kind, flags: u16, id: u64, len: usize) -> Result<Header, FrameError> {
        let len = u32::try_from(len).map_err(|_| FrameError::TooLarge { len: len as u64, max: u32::MAX as u64 })?;
        Ok(Header { kind, flags, id, len })
    }

    /// The header's bytes, check included.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&self.kind.0.to_le_bytes());
        b[8..10].copy_from_slice(&self.flags.to_le_bytes());
        // 10..12 reserved, zero.
        b[12..20].copy_from_slice(&self.id.to_le_bytes());
        b[20..24].copy_from_slice(&self.len.to_le_bytes());
        let check = fnv1a(&b[..CHECKED_LEN]);
        b[24..28].copy_from_slice(&check.to_le_bytes());
        b
    }

    /// Parses and validates a header. The version is checked before the check, so that a
    /// peer of another version (whose header may differ) is told so rather than "corrupt".
    pub fn decode(b: &[u8; HEADER_LEN], max_payload: usize) -> Result<Header, FrameError> {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if b[0..4] != MAGIC {
            return Err(FrameError::BadMagic { got: b[0..4].to_vec() });
        }
        let version = u16_at(4);
        if version != VERSION {
            return Err(FrameError::Version { got: version, want: VERSION });
        }
        let (got, want) = (u32_at(24), fnv1a(&b[..CHECKED_LEN]));
        if got != want {
            return Err(FrameError::BadCheck { got, want });
        }
        let reserved = u16_at(10);
        if reserved != 0 {
            return Err(FrameError::Reserved { got: reserved });
        }
        let flags = u16_at(8);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FrameError::BadFlags { flags });
        }
        let kind = Kind(u16_at(6));
        if !kind.is_known() {
            return Err(FrameError::UnknownKind { kind: kind.0 });
        }
        let len = u32_at(20);
        if len as u64 > max_payload as u64 {
            return Err(FrameError::TooLarge { len: len as u64, max: max_payload as u64 });
        }
        let id = u64::from_le_bytes(b[12..20].try_into().expect("8 bytes"));
        Ok(Header { kind, flags, id, len })
    }
}

/// Writes one frame: header then payload, in as few system calls as the writer allows
/// (vectored), without copying the payload into a new buffer.
pub fn write_frame<W: Write + ?Sized>(w: &mut W, kind: Kind, flags: u16, id: u64, payload: &[u8]) -> io::Result<()> {
    write_frame_after(w, &[], kind, flags, id, payload)
}

/// [`write_frame`] after the bytes `before` (frames encoded earlier), in the same vectored
/// writes.
pub(crate) fn write_frame_after<W: Write + ?Sized>(
    w: &mut W,
    before: &[u8],
    kind: Kind,
    flags: u16,
    id: u64,
    payload: &[u8],
) -> io::Result<()> {
    let head = Header::new(kind, flags, id, payload.len()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?.encode();
    let mut slices = [IoSlice::new(before), IoSlice::new(&head), IoSlice::new(payload)];
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match w.write_vectored(rest) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "connection accepted no more bytes")),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reassembles frames from bytes fed in pieces of any size.
///
/// Memory: the header is 28 bytes in place; a payload buffer is allocated once its header
/// has been validated, so never more than the limit, whatever the peer announces.
#[derive(Debug)]
pub struct FrameDecoder {
    max: usize,
    head: [u8; HEADER_LEN],
    have: usize,
    current: Option<Header>,
    payload: Vec<u8>,
    failed: Option<FrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder accepting payloads up to [`DEFAULT_MAX_PAYLOAD`].
    pub fn new() -> Self {
        Self::with_max_payload(DEFAULT_MAX_PAYLOAD)
    }

    /// A decoder accepting payloads up to `max` bytes.
    pub fn with_max_payload(max: usize) -> Self {
        FrameDecoder { max, head: [0; HEADER_LEN], have: 0, current: None, payload: Vec::new(), failed: None }
    }

    /// The largest payload accepted.
    pub fn max_payload(&self) -> usize {
        self.max
    }

    /// Changes the limit for the headers that follow (the handshake runs with a small one).
    pub fn set_max_payload(&mut self, max: usize) {
        self.max = max;
    }

    /// Consumes bytes from the front of `input` until one frame is complete (returned, with
    /// `input` left at the next frame's first byte) or `input` is exhausted (`Ok(None)`).
    /// Call it again with the rest, or with more bytes; an empty `input` returns a frame
    /// completed by [`fill_payload_from`](Self::fill_payload_from).
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        loop {
            match self.current {
                None => {
                    let n = (HEADER_LEN - self.have).min(input.len());
                    self.head[self.have..self.have + n].copy_from_slice(&input[..n]);
                    *input = &input[n..];
                    self.have += n;
                    // The magic is checked as soon as its bytes arrive, so that a stranger
                    // (an HTTP probe, a misdirected client) is refused without waiting for 28.
                    // What it reports ends at the first wrong byte, whatever the split.
                    let m = self.have.min(MAGIC.len());
                    if let Some(wrong) = (0..m).find(|&i| self.head[i] != MAGIC[i]) {
                        return Err(self.fail(FrameError::BadMagic { got: self.head[..=wrong].to_vec() }));
                    }
                    if self.have < HEADER_LEN {
                        return Ok(None);
                    }
                    let h = Header::decode(&self.head, self.max).map_err(|e| self.fail(e))?;
                    self.have = 0;
                    // Validated above: `len` is at most the limit.
                    self.payload = Vec::with_capacity(h.len as usize);
                    self.current = Some(h);
                }
                Some(h) => {
                    let want = h.len as usize - self.payload.len();
                    let n = want.min(input.len());
                    self.payload.extend_from_slice(&input[..n]);
                    *input = &input[n..];
                    if self.payload.len() < h.len as usize {
                        return Ok(None);
                    }
                    self.current = None;
                    let payload = std::mem::take(&mut self.payload);
                    return Ok(Some(Frame { kind: h.kind, flags: h.flags, id: h.id, payload }));
                }
            }
        }
    }

    fn fail(&mut self, e: FrameError) -> FrameError {
        self.failed = Some(e.clone());
        e
    }

    /// Whether the decoder sits between frames (no partial header or payload): an end of
    /// stream here is clean, anywhere else it cuts a frame.
    pub fn is_idle(&self) -> bool {
        self.have == 0 && self.current.is_none()
    }

    /// Payload bytes still missing from the frame in progress (0 while reading a header).
    pub fn payload_remaining(&self) -> usize {
        self.current.map_or(0, |h| h.len as usize - self.payload.len())
    }

    /// Reads the rest of the current payload straight from `r` into the frame's buffer,
    /// skipping the copy through a staging buffer (for large payloads). Returns the bytes
    /// read; fewer than [`payload_remaining`](Self::payload_remaining) means end of stream.
    /// Then [`decode`](Self::decode) with an empty input yields the frame.
    pub fn fill_payload_from<R: Read>(&mut self, r: R) -> io::Result<usize> {
        let want = self.payload_remaining();
        if want == 0 {
            return Ok(0);
        }
        // The buffer's capacity is exactly the payload's length: `read_to_end` under this
        // limit fills it without reallocating and without zeroing it first.
        r.take(want as u64).read_to_end(&mut self.payload)
    }

    /// Bytes of payload buffer the decoder holds (for accounting and tests).
    pub fn buffered_capacity(&self) -> usize {
        self.payload.capacity()
    }
}
