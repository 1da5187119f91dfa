//! The framing on its own: a fuzz run of the decoder over random and mutated inputs split at
//! random points, a round-trip property over random frames, and each header error.

use std::io::{self, Write};

use rayhpc_transport::{write_frame, Frame, FrameDecoder, FrameError, Header, Kind, FLAG_RESPONSE, HEADER_LEN, VERSION};

/// xorshift64*: deterministic, so a failure reproduces from its case number.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Up to `max - 1` random bytes.
    fn noise(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max) as usize;
        self.bytes(n)
    }
    /// Mostly small, sometimes up to 2^max_log2: lengths log-uniformly.
    fn len(&mut self, max_log2: u32) -> usize {
        let bits = self.below(max_log2 as u64 + 1) as u32;
        ((1u64 << bits) - 1 + self.below(1 << bits)) as usize / 2
    }
    fn frame(&mut self, max_log2: u32) -> Frame {
        let kind = match self.below(4) {
            0 => Kind(1 + self.below(5) as u16),
            _ => Kind(0x100 + self.below(0xff00) as u16),
        };
        let len = self.len(max_log2);
        Frame { kind, flags: if self.below(2) == 0 { 0 } else { FLAG_RESPONSE }, id: self.next(), payload: self.bytes(len) }
    }
}

/// What a decoder made of an input: the frames, then an error or where it stopped.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Frame>,
    error: Option<FrameError>,
    idle: bool,
}

/// Feeds `input` in the given pieces, checking after every call that the decoder holds no
/// more than its limit and every frame it yields is one it may yield.
fn run(input: &[u8], cuts: &[usize], max: usize) -> Outcome {
    let mut dec = FrameDecoder::with_max_payload(max);
    let mut frames = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let mut piece = &input[at..cut.max(at)];
        at = cut.max(at);
        loop {
            let r = dec.decode(&mut piece);
            assert!(dec.buffered_capacity() <= max, "decoder holds {} bytes, limit {max}", dec.buffered_capacity());
            match r {
                Ok(Some(f)) => {
                    assert!(f.kind.is_known() && f.flags & !FLAG_RESPONSE == 0 && f.payload.len() <= max, "{f:?}");
                    frames.push(f);
                }
                Ok(None) => {
                    assert!(piece.is_empty(), "decoder stopped with input left");
                    break;
                }
                Err(e) => {
                    // Sticky: a stream out of step stays refused.
                    assert_eq!(dec.decode(&mut &b"RHPC"[..]), Err(e.clone()));
                    return Outcome { frames, error: Some(e), idle: false };
                }
            }
        }
    }
    Outcome { frames, error: None, idle: dec.is_idle() }
}

fn random_cuts(rng: &mut Rng, len: usize) -> Vec<usize> {
    let n = rng.below(8) as usize;
    let mut cuts: Vec<usize> = (0..n).map(|_| rng.below(len as u64 + 1) as usize).collect();
    cuts.sort_unstable();
    cuts
}

fn encode_all(frames: &[Frame]) -> Vec<u8> {
    frames.iter().flat_map(|f| f.encode().unwrap()).collect()
}

#[test]
fn fuzz_decoder_random_and_mutated_inputs() {
    const CASES: u64 = 200_000;
    let mut rng = Rng::new(0x5eed);
    let (mut valid, mut refused) = (0u64, 0u64);
    for case in 0..CASES {
        let max = [0usize, 64, 4096][rng.below(3) as usize];
        let originals: Vec<Frame> = (0..1 + rng.below(4)).map(|_| rng.frame(10)).filter(|f| f.payload.len() <= max).collect();
        let clean = encode_all(&originals);
        let (input, intact) = match rng.below(6) {
            // Noise, sometimes behind the magic so that it reaches the later checks.
            0 => (rng.noise(200), false),
            1 => {
                let mut v = b"RHPC".to_vec();
                v.extend(rng.noise(200));
                (v, false)
            }
            // Valid frames with bytes flipped, cut off, or inserted.
            2 => {
                let mut v = clean.clone();
                for _ in 0..1 + rng.below(3) {
                    if !v.is_empty() {
                        let i = rng.below(v.len() as u64) as usize;
                        v[i] ^= 1 << rng.below(8);
                    }
                }
                (v, false)
            }
            3 => {
                let mut v = clean.clone();
                v.truncate(rng.below(v.len() as u64 + 1) as usize);
                (v, false)
            }
            // Headers with a correct check but out-of-range fields: length, kind, flags.
            4 => {
                let h = Header {
                    kind: Kind(rng.below(0x200) as u16),
                    flags: rng.below(4) as u16,
                    id: rng.next(),
                    len: if rng.below(2) == 0 { rng.next() as u32 } else { rng.below(8192) as u32 },
                };
                let mut v = clean.clone();
                v.extend_from_slice(&h.encode());
                v.extend(rng.noise(64));
                (v, false)
            }
            _ => (clean.clone(), true),
        };
        let whole = run(&input, &[], max);
        let split = run(&input, &random_cuts(&mut rng, input.len()), max);
        // Where the input is cut does not change what it decodes to.
        assert_eq!(whole, split, "case {case}: split changed the outcome");
        if intact {
            assert_eq!(whole, Outcome { frames: originals, error: None, idle: true }, "case {case}: valid frames did not round-trip");
            valid += 1;
        } else {
            // Frames before the first damaged byte come out exactly as they went in.
            let damaged = input.iter().zip(&clean).position(|(a, b)| a != b).unwrap_or(input.len().min(clean.len()));
            let mut end = 0;
            for (f, want) in whole.frames.iter().zip(&originals) {
                end += HEADER_LEN + want.payload.len();
                if end <= damaged {
                    assert_eq!(f, want, "case {case}: an undamaged frame changed");
                }
            }
            refused += whole.error.is_some() as u64;
        }
    }
    // The run must actually have exercised both sides.
    assert!(valid > CASES / 10 && refused > CASES / 4, "valid {valid}, refused {refused}");
}

/// A writer that takes at most `step` bytes per call, as a socket under pressure does.
struct ShortWrites {
    out: Vec<u8>,
    step: usize,
}

impl Write for ShortWrites {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.step);
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut left = self.step;
        for b in bufs {
            let n = b.len().min(left);
            self.out.extend_from_slice(&b[..n]);
            left -= n;
            if left == 0 {
                break;
            }
        }
        Ok(self.step - left)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn random_frames_round_trip_across_random_splits() {
    let mut rng = Rng::new(42);
    for round in 0..300 {
        let frames: Vec<Frame> = (0..1 + rng.below(40)).map(|_| rng.frame(18)).collect();
        // Written through short writes (header and payload straddling calls) ...
        let mut w = ShortWrites { out: Vec::new(), step: 1 + rng.below(5000) as usize };
        for f in &frames {
            write_frame(&mut w, f.kind, f.flags, f.id, &f.payload).unwrap();
        }
        assert_eq!(w.out, encode_all(&frames), "round {round}: write_frame and Frame::encode disagree");
        // ... and read back in random pieces, down to single bytes.
        let cuts = if round % 10 == 0 { (1..w.out.len()).collect() } else { random_cuts(&mut rng, w.out.len()) };
        let out = run(&w.out, &cuts, 1 << 18);
        assert_eq!(out, Outcome { frames, error: None, idle: true }, "round {round}");
    }
}

#[test]
fn each_bad_header_is_named() {
    let good = Header { kind: Kind(0x100), flags: 0, id: 7, len: 3 }.encode();
    let decode = |bytes: &[u8]| FrameDecoder::with_max_payload(1024).decode(&mut &bytes[..]);
    // Recomputes the check after an edit, so that only the edited field is wrong.
    let fix = |mut b: [u8; HEADER_LEN]| {
        let mut h: u32 = 0x811c_9dc5;
        for &x in &b[..24] {
            h = (h ^ x as u32).wrapping_mul(0x0100_0193);
        }
        b[24..].copy_from_slice(&h.to_le_bytes());
        b
    };
    let edit = |at: usize, bytes: &[u8]| {
        let mut b = good;
        b[at..at + bytes.len()].copy_from_slice(bytes);
        fix(b)
    };
    assert_eq!(decode(b"GET / HTTP/1.1\r\n"), Err(FrameError::BadMagic { got: b"G".to_vec() }));
    // Refused as soon as the bytes show it, without waiting for a whole header.
    assert_eq!(decode(b"RH\0"), Err(FrameError::BadMagic { got: b"RH\0".to_vec() }));
    assert_eq!(decode(&edit(4, &2u16.to_le_bytes())), Err(FrameError::Version { got: 2, want: VERSION }));
    let mut corrupt = good;
    corrupt[15] ^= 0x40;
    assert!(matches!(decode(&corrupt), Err(FrameError::BadCheck { .. })));
    assert_eq!(decode(&edit(10, &[1, 0])), Err(FrameError::Reserved { got: 1 }));
    assert_eq!(decode(&edit(8, &[2, 0])), Err(FrameError::BadFlags { flags: 2 }));
    assert_eq!(decode(&edit(6, &[0, 0])), Err(FrameError::UnknownKind { kind: 0 }));
    assert_eq!(decode(&edit(6, &[6, 0])), Err(FrameError::UnknownKind { kind: 6 }));
    assert_eq!(decode(&edit(20, &1025u32.to_le_bytes())), Err(FrameError::TooLarge { len: 1025, max: 1024 }));
    // The unedited header is fine: it waits for its 3 payload bytes.
    assert_eq!(decode(&good), Ok(None));
}

#[test]
fn oversized_length_refused_before_any_allocation() {
    let mut dec = FrameDecoder::with_max_payload(1 << 20);
    let head = Header { kind: Kind(0x100), flags: 0, id: 1, len: u32::MAX }.encode();
    assert_eq!(dec.decode(&mut &head[..]), Err(FrameError::TooLarge { len: u32::MAX as u64, max: 1 << 20 }));
    assert_eq!(dec.buffered_capacity(), 0, "the decoder allocated for a frame it refused");
    // At the limit it is accepted, and allocated once, exactly.
    let mut dec = FrameDecoder::with_max_payload(1 << 20);
    let head = Header { kind: Kind(0x100), flags: 0, id: 1, len: 1 << 20 }.encode();
    assert_eq!(dec.decode(&mut &head[..]), Ok(None));
    assert_eq!(dec.buffered_capacity(), 1 << 20);
    assert_eq!(dec.payload_remaining(), 1 << 20);
}

#[test]
fn large_payload_read_straight_from_a_reader() {
    let mut rng = Rng::new(9);
    let frame = Frame { kind: Kind(0x1234), flags: FLAG_RESPONSE, id: u64::MAX, payload: rng.bytes(3 << 20) };
    let bytes = frame.encode().unwrap();
    let mut dec = FrameDecoder::new();
    assert_eq!(dec.decode(&mut &bytes[..HEADER_LEN]), Ok(None));
    // The rest arrives through `fill_payload_from`, short of one byte first (end of stream).
    let n = dec.fill_payload_from(&bytes[HEADER_LEN..bytes.len() - 1]).unwrap();
    assert_eq!((n, dec.payload_remaining()), (bytes.len() - HEADER_LEN - 1, 1));
    assert_eq!(dec.decode(&mut &[][..]), Ok(None));
    assert_eq!(dec.fill_payload_from(&bytes[bytes.len() - 1..]).unwrap(), 1);
    assert_eq!(dec.decode(&mut &[][..]), Ok(Some(frame)));
    assert!(dec.is_idle());
}

#[test]
fn frame_bodies_are_postcard_and_exact() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Msg {
        object: u128,
        len: u64,
        name: String,
    }
    let msg = Msg { object: 1 << 100, len: 42, name: "spill".into() };
    let payload = rayhpc_transport::encode_body(&msg).unwrap();
    let frame = Frame { kind: Kind(0x100), flags: 0, id: 1, payload };
    assert_eq!(frame.body::<Msg>().unwrap(), msg);
    let mut padded = frame.clone();
    padded.payload.push(0);
    assert!(matches!(padded.body::<Msg>(), Err(rayhpc_transport::Error::Codec(_))), "trailing bytes accepted");
    let cut = Frame { payload: frame.payload[..frame.payload.len() - 1].to_vec(), ..frame };
    assert!(matches!(cut.body::<Msg>(), Err(rayhpc_transport::Error::Codec(_))), "a cut body decoded");
}
