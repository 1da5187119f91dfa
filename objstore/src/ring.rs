//! Single-producer, single-consumer message rings in shared memory: how the node runtime
//! and a local worker process (a Python worker, later an attached driver) pass task requests
//! and results without a socket on the per-message path.
//!
//! A [`Channel`] is one memfd holding two rings, one per direction; the side that creates it
//! passes the descriptor to the other (inherited across `exec`, or `SCM_RIGHTS`). Each side
//! takes the producer end of one ring and the consumer end of the other.
//!
//! Layout of a ring: a header of atomic words — `tail` (bytes ever written, producer-owned),
//! `head` (bytes ever consumed, consumer-owned), and two sleep flags that are futex words —
//! and `cap` bytes of data (a power of two). A message is an 8-byte record header (payload
//! length, flags) and its payload padded to 8 bytes; a message that would straddle the end
//! of the data is preceded by a padding record that fills the rest, so every payload is
//! contiguous and a reader borrows it in place.
//!
//! Waking (no lost wake-up, the same handshake on both sides, `protocol::handshake`,
//! model-checked in `tests/loom_ring.rs`): a waiter spins briefly, then stores its sleep
//! flag = 1 and re-reads the other side's position (both `SeqCst`), and only then sleeps in
//! `futex_wait(flag, 1)`; a publisher stores its position, then swaps the flag to 0 (both
//! `SeqCst`) and wakes if it was 1. Of the two store-then-load pairs at least one sees the
//! other's store, so either the waiter sees the new data or the publisher sees the flag.
//! Sleeps are sliced so that the waiter can check that its peer is alive.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::handshake;
use crate::shm::{Arena, Backing};

const HEADER: usize = 4096;
/// Word offsets inside one ring's header block (64 words = 512 bytes; each field on its own
/// cache line).
const TAIL: usize = 0;
const HEAD: usize = 8;
const CONSUMER_SLEEPING: usize = 16;
const PRODUCER_SLEEPING: usize = 24;
const CLOSED: usize = 32;
const RING_WORDS: usize = 64;
const MAGIC_WORD: usize = 2 * RING_WORDS;
const MAGIC: u64 = u64::from_le_bytes(*b"rhpcring");
const CAP_WORD: usize = MAGIC_WORD + 1;

const PAD: u32 = 1;
/// How long a waiter spins before it sleeps.
const SPIN: Duration = Duration::from_micros(20);
/// How long one futex sleep lasts at most before the waiter checks its peer.
const SLICE: Duration = Duration::from_millis(20);

#[cfg(not(target_endian = "little"))]
compile_error!("ring sleep flags use the low half of a 64-bit word as the futex word");

/// Why a ring operation did not complete.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    /// The peer closed its end or was found dead.
    #[error("the peer closed the channel or died")]
    Closed,
    /// The deadline passed.
    #[error("timed out")]
    Timeout,
    /// A message larger than a ring can ever hold.
    #[error("message of {size} bytes is larger than the ring's limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The largest a ring of this channel takes.
        limit: usize,
    },
    /// The shared header or a record is not what this code writes (a corrupt peer).
    #[error("corrupt ring: {0}")]
    Corrupt(String),
}

/// The shared memory of a two-way channel.
#[derive(Debug)]
pub struct Channel {
    arena: Arena,
    cap: usize,
}

impl Channel {
    /// A new channel whose rings hold `cap` bytes each (rounded up to a power of two, at
    /// least 4 KiB).
    ///
    /// # Errors
    /// The memfd could not be created or mapped.
    pub fn create(cap: usize) -> io::Result<Arc<Channel>> {
        let cap = cap.max(4096).next_power_of_two();
        let arena = Arena::plain(HEADER + 2 * cap, "rayhpc-ring")?;
        let w = arena.words();
        w[CAP_WORD].store(cap as u64, Relaxed);
        w[MAGIC_WORD].store(MAGIC, Release);
        Ok(Arc::new(Channel { arena, cap }))
    }

    /// Maps a channel another process created.
    ///
    /// # Errors
    /// The descriptor cannot be mapped, or does not hold a channel.
    pub fn attach(fd: OwnedFd) -> io::Result<Arc<Channel>> {
        let arena = Arena::attach(fd, true, Backing::Small)?;
        let w = arena.words();
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("not a ring channel: {m}"));
        if w.len() <= CAP_WORD || w[MAGIC_WORD].load(Acquire) != MAGIC {
            return Err(bad("bad magic"));
        }
        let cap = w[CAP_WORD].load(Relaxed) as usize;
        if !cap.is_power_of_two() || cap < 4096 || HEADER.checked_add(cap.checked_mul(2).ok_or_else(|| bad("size"))?) != Some(arena.len()) {
            return Err(bad("size does not match the file"));
        }
        Ok(Arc::new(Channel { arena, cap }))
    }

    /// The descriptor, to hand to the peer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.arena.fd()
    }

    /// The largest message a ring takes.
    pub fn limit(&self) -> usize {
        self.cap / 2 - 8
    }

    /// The ends of the creator: it produces into ring 0 and consumes ring 1.
    pub fn creator_ends(self: &Arc<Self>) -> (Producer, Consumer) {
        (Producer { ch: self.clone(), ring: 0 }, Consumer { ch: self.clone(), ring: 1 })
    }

    /// The ends of the peer that attached.
    pub fn peer_ends(self: &Arc<Self>) -> (Producer, Consumer) {
        (Producer { ch: self.clone(), ring: 1 }, Consumer { ch: self.clone(), ring: 0 })
    }

    fn word(&self, ring: usize, field: usize) -> &AtomicU64 {
        &self.arena.words()[ring * RING_WORDS + field]
    }

    fn data_off(&self, ring: usize) -> usize {
        HEADER + ring * self.cap
    }

    /// True once either side closed the channel.
    pub fn closed(&self) -> bool {
        (0..2).any(|ring| self.is_closed(ring))
    }

    /// Marks both directions closed and wakes whoever sleeps on them.
    pub fn close(&self) {
        for ring in 0..2 {
            self.word(ring, CLOSED).store(1, SeqCst);
            for f in [CONSUMER_SLEEPING, PRODUCER_SLEEPING] {
                self.word(ring, f).store(0, SeqCst);
                futex_wake(self.word(ring, f));
            }
        }
    }

    fn is_closed(&self, ring: usize) -> bool {
        self.word(ring, CLOSED).load(Acquire) != 0
    }
}

/// Waits until `ready()` holds: spins, then sleeps on `flag` in slices, checking `alive`
/// and the deadline between them.
fn wait_until(
    ch: &Channel,
    ring: usize,
    flag: &AtomicU64,
    mut ready: impl FnMut() -> bool,
    deadline: Option<Instant>,
    alive: &mut dyn FnMut() -> bool,
) -> Result<(), RingError> {
    let start = Instant::now();
    let mut spins = 0u32;
    while start.elapsed() < SPIN {
        if ready() {
            return Ok(());
        }
        spins += 1;
        if spins.is_multiple_of(16) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    loop {
        if !handshake::announce(flag, &mut ready) {
            return Ok(());
        }
        if ch.is_closed(ring) {
            flag.store(0, Relaxed);
            return Err(RingError::Closed);
        }
        let mut slice = SLICE;
        if let Some(d) = deadline {
            let now = Instant::now();
            if now >= d {
                flag.store(0, Relaxed);
                return Err(RingError::Timeout);
            }
            slice = slice.min(d - now);
        }
        futex_wait(flag, 1, slice);
        if ready() {
            flag.store(0, Relaxed);
            return Ok(());
        }
        if !alive() {
            flag.store(0, Relaxed);
            return Err(RingError::Closed);
        }
    }
}

/// The writing end of one ring.
#[derive(Debug)]
pub struct Producer {
    ch: Arc<Channel>,
    ring: usize,
}

impl Producer {
    /// Sends one message made of `parts` laid end to end, waiting for room if the ring is
    /// full. `alive` is asked now and then while waiting; returning false gives
    /// [`RingError::Closed`].
    ///
    /// # Errors
    /// The message is over [`Channel::limit`], the peer closed or died, the deadline passed.
    pub fn send(&mut self, parts: &[&[u8]], deadline: Option<Instant>, alive: &mut dyn FnMut() -> bool) -> Result<(), RingError> {
        let size: usize = parts.iter().map(|p| p.len()).sum();
        let ch = &*self.ch;
        if size > ch.limit() {
            return Err(RingError::TooLarge { size, limit: ch.limit() });
        }
        if ch.is_closed(self.ring) {
            return Err(RingError::Closed);
        }
        let cap = ch.cap as u64;
        let rec = 8 + (size as u64).next_multiple_of(8);
        let tail_w = ch.word(self.ring, TAIL);
        let head_w = ch.word(self.ring, HEAD);
        let tail = tail_w.load(Relaxed);
        let at = tail % cap;
        // A record never straddles the end: pad to the start when it would.
        let pad = if at + rec > cap { cap - at } else { 0 };
        let need = pad + rec;
        let room = || tail + need - head_w.load(SeqCst) <= cap;
        if !room() {
            wait_until(ch, self.ring, ch.word(self.ring, PRODUCER_SLEEPING), room, deadline, alive)?;
        }
        let base = ch.data_off(self.ring);
        let mut pos = tail;
        if pad > 0 {
            // SAFETY: `[at, at + 8)` lies inside this ring's data (`at + 8 <= cap`, records
            // are 8-aligned), and the bytes from `tail` to `head + cap` belong to the
            // producer alone until it publishes `tail`: the consumer reads only below it.
            unsafe { ch.arena.bytes_mut(base + at as usize, 8) }.copy_from_slice(&record_header(pad - 8, PAD));
            pos += pad;
        }
        let at = (pos % cap) as usize;
        // SAFETY: as above: `[at, at + rec)` fits before the end (padded otherwise) and is
        // the producer's until `tail` is published.
        let dst = unsafe { ch.arena.bytes_mut(base + at, rec as usize) };
        dst[..8].copy_from_slice(&record_header(size as u64, 0));
        let mut o = 8;
        for p in parts {
            dst[o..o + p.len()].copy_from_slice(p);
            o += p.len();
        }
        tail_w.store(pos + rec, SeqCst);
        wake(ch.word(self.ring, CONSUMER_SLEEPING));
        Ok(())
    }

    /// Closes the channel (both directions).
    pub fn close(&self) {
        self.ch.close();
    }
}

fn record_header(len: u64, flags: u32) -> [u8; 8] {
    (len | (u64::from(flags) << 32)).to_le_bytes()
}

fn wake(flag: &AtomicU64) {
    if handshake::must_wake(flag) {
        futex_wake(flag);
    }
}

/// The reading end of one ring.
#[derive(Debug)]
pub struct Consumer {
    ch: Arc<Channel>,
    ring: usize,
}

/// A received message, borrowed in place; the ring space is given back when it drops.
#[derive(Debug)]
pub struct Message<'a> {
    c: &'a mut Consumer,
    off: usize,
    len: usize,
    next: u64,
}

impl std::ops::Deref for Message<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `[off, off + len)` was checked to lie inside this ring's data when the
        // message was read; the producer does not write it until `head` moves past it, which
        // happens only when this message drops.
        unsafe { self.c.ch.arena.bytes(self.off, self.len) }
    }
}

impl Drop for Message<'_> {
    fn drop(&mut self) {
        let ch = &*self.c.ch;
        ch.word(self.c.ring, HEAD).store(self.next, SeqCst);
        wake(ch.word(self.c.ring, PRODUCER_SLEEPING));
    }
}

impl Consumer {
    /// The next message, waiting for one until `deadline` (forever with `None`); `alive` is
    /// asked now and then while waiting.
    ///
    /// # Errors
    /// The peer closed or died with nothing left to read, the deadline passed, or the peer
    /// wrote a record this code does not (a corrupt ring).
    pub fn recv(&mut self, deadline: Option<Instant>, alive: &mut dyn FnMut() -> bool) -> Result<Message<'_>, RingError> {
        let ch = self.ch.clone();
        let cap = ch.cap as u64;
        let tail_w = ch.word(self.ring, TAIL);
        let head_w = ch.word(self.ring, HEAD);
        let base = ch.data_off(self.ring);
        loop {
            let head = head_w.load(Relaxed);
            let ready = || tail_w.load(SeqCst) != head;
            if !ready() {
                wait_until(&ch, self.ring, ch.word(self.ring, CONSUMER_SLEEPING), ready, deadline, alive)?;
            }
            let tail = tail_w.load(Acquire);
            let at = (head % cap) as usize;
            // SAFETY: `at + 8 <= cap` (records are 8-aligned); the producer published this
            // record (`tail > head`) and does not touch it again until `head` passes it.
            let h = u64::from_le_bytes(unsafe { ch.arena.bytes(base + at, 8) }.try_into().expect("8 bytes"));
            let (len, flags) = (h & 0xffff_ffff, (h >> 32) as u32);
            let rec = 8 + len.next_multiple_of(8);
            if tail.wrapping_sub(head) > cap || rec > tail - head || at as u64 + rec > cap || flags > PAD {
                return Err(RingError::Corrupt(format!("record of {len} bytes, flags {flags}, at {head} with tail {tail}")));
            }
            if flags == PAD {
                head_w.store(head + rec, SeqCst);
                wake(ch.word(self.ring, PRODUCER_SLEEPING));
                continue;
            }
            return Ok(Message { off: base + at + 8, len: len as usize, next: head + rec, c: self });
        }
    }
}

/// Sleeps while `*flag` holds `expected` (low 32 bits), for at most `timeout`.
fn futex_wait(flag: &AtomicU64, expected: u32, timeout: Duration) {
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    // SAFETY: FUTEX_WAIT reads the aligned 32-bit word at the start of `flag` (its low half
    // on this little-endian target), which lives in a shared mapping that outlives the call;
    // `ts` is a valid timespec on the stack. A spurious or early return is handled by the
    // callers, which re-check their condition.
    unsafe {
        libc::syscall(libc::SYS_futex, flag.as_ptr().cast::<u32>(), libc::FUTEX_WAIT, expected, &ts as *const libc::timespec);
    }
}

/// Wakes every process sleeping on `flag`.
fn futex_wake(flag: &AtomicU64) {
    // SAFETY: FUTEX_WAKE only uses the address as a key; it lives in a shared mapping.
    unsafe {
        libc::syscall(libc::SYS_futex, flag.as_ptr().cast::<u32>(), libc::FUTEX_WAKE, i32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yes() -> bool {
        true
    }

    #[test]
    fn messages_cross_in_order_with_wraparound_and_backpressure() {
        let ch = Channel::create(4096).unwrap();
        let (mut p, _) = ch.creator_ends();
        let (_, mut c) = ch.peer_ends();
        let reader = std::thread::spawn(move || {
            let mut n = 0u64;
            while n < 20_000 {
                let m = c.recv(None, &mut yes).unwrap();
                let len = (n as usize * 7) % 1500;
                assert_eq!(m.len(), len);
                assert!(m.iter().all(|&b| b == n as u8), "message {n}");
                n += 1;
            }
        });
        for n in 0..20_000u64 {
            let len = (n as usize * 7) % 1500;
            let body = vec![n as u8; len];
            p.send(&[&body[..len / 2], &body[len / 2..]], None, &mut yes).unwrap();
        }
        reader.join().unwrap();
    }

    #[test]
    fn limits_timeouts_close_and_a_dead_peer_are_errors() {
        let ch = Channel::create(4096).unwrap();
        let (mut p, mut c) = ch.creator_ends();
        assert_eq!(p.send(&[&[0; 5000]], None, &mut yes), Err(RingError::TooLarge { size: 5000, limit: 2040 }));
        let soon = Some(Instant::now() + Duration::from_millis(30));
        assert_eq!(c.recv(soon, &mut yes).unwrap_err(), RingError::Timeout);
        // Fill ring 0 (nobody reads it): the next send times out.
        while p.send(&[&[1; 1000]], Some(Instant::now() + Duration::from_millis(30)), &mut yes).is_ok() {}
        let mut dead = || false;
        assert_eq!(p.send(&[&[1; 1000]], None, &mut dead), Err(RingError::Closed));
        assert_eq!(c.recv(None, &mut dead).unwrap_err(), RingError::Closed);
        let (_, mut c0) = ch.peer_ends();
        assert_eq!(&c0.recv(None, &mut yes).unwrap()[..], &[1; 1000][..]);
        let waiter = std::thread::spawn(move || c.recv(None, &mut yes).map(|m| m.len()));
        std::thread::sleep(Duration::from_millis(50));
        ch.close();
        assert_eq!(waiter.join().unwrap(), Err(RingError::Closed));
    }

    #[test]
    fn attach_checks_what_it_maps() {
        let ch = Channel::create(8192).unwrap();
        let fd = ch.fd().try_clone_to_owned().unwrap();
        let other = Channel::attach(fd).unwrap();
        assert_eq!(other.limit(), ch.limit());
        let (mut p, _) = ch.creator_ends();
        let (_, mut c) = other.peer_ends();
        p.send(&[b"hello"], None, &mut yes).unwrap();
        assert_eq!(&c.recv(None, &mut yes).unwrap()[..], b"hello");
        let plain = Arena::plain(8192, "not-a-ring").unwrap();
        assert!(Channel::attach(plain.fd().try_clone_to_owned().unwrap()).is_err());
    }

    #[test]
    fn a_corrupt_record_is_an_error_not_a_wild_read() {
        let ch = Channel::create(4096).unwrap();
        let (mut p, _) = ch.creator_ends();
        let (_, mut c) = ch.peer_ends();
        p.send(&[b"x"], None, &mut yes).unwrap();
        // Overwrite the record header with a length past the tail.
        // SAFETY: test-only; nobody else touches the ring.
        unsafe { ch.arena.bytes_mut(HEADER, 8) }.copy_from_slice(&record_header(1 << 20, 0));
        assert!(matches!(c.recv(None, &mut yes), Err(RingError::Corrupt(_))));
    }
}
