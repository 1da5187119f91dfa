//! One-sided RMA reads over libfabric (OFI): feature `fabric`.
//!
//! A [`Fabric`] is one libfabric endpoint of type `FI_EP_RDM` (reliable, unconnected) with
//! its fabric, domain, completion queue (CQ) and address vector (AV). A process registers
//! memory ([`Fabric::register`], giving a [`Region`]), publishes its [`Fabric::address`]
//! and the [`RemoteRegion`] (base, key, length) through some other channel (the TCP
//! transport, say), and peers then pull bytes straight out of that memory with
//! [`Fabric::read`] (`fi_read`), without its CPU taking part where the hardware allows
//! (verbs, EFA, CXI, ...), or with its progress thread doing the copy (TCP, shm).
//!
//! ## Providers
//!
//! [`Fabric::open`] takes the provider named in [`FabricOptions::provider`], else in the
//! environment variable `RAYHPC_FABRIC_PROVIDER`, else the first offered of
//! [`PREFERRED_PROVIDERS`]: `verbs;ofi_rxm`, `efa`, `cxi`, `opx`, `psm3`, `tcp;ofi_rxm`.
//! `shm` (same host only) is used only when named. [`providers`] lists what this machine
//! offers. With [`FabricOptions::source`] an IP-addressed provider (tcp, verbs) binds to
//! that local address (`fi_getinfo` with `FI_SOURCE`); others ignore it.
//!
//! ## Memory registration
//!
//! The hints ask for `FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY |
//! FI_MR_ENDPOINT` and the shim follows what the provider keeps of them: a read's remote
//! address is the region's virtual address plus the offset with `FI_MR_VIRT_ADDR`, the
//! offset alone otherwise (so [`RemoteRegion::base`] is the address or 0, and the remote
//! address is always `base + offset`); the key is the provider's with `FI_MR_PROV_KEY`, else
//! a process-wide counter's; with `FI_MR_ENDPOINT` the registration is bound to the
//! endpoint and enabled; the local descriptor (`fi_mr_desc`) always goes with the read
//! (required by `FI_MR_LOCAL`). Debian 12's libfabric 1.17 keeps none of them for
//! `tcp;ofi_rxm` (offsets, chosen keys) and `FI_MR_VIRT_ADDR` for `shm`. [`Fabric::mr_mode`]
//! tells.
//!
//! ## Progress and completions
//!
//! The TCP provider (and others over sockets) progresses only when someone reads the CQ,
//! and that includes serving the reads that *peers* make of this process's memory. So
//! every `Fabric` has a progress thread. It polls the CQ, then sleeps in `poll(2)` on the
//! CQ's wait object (`FI_WAIT_FD`, after `fi_trywait`) and an eventfd that wakes it for
//! shutdown: it wakes when a socket has data, so a peer's read is served at once and an
//! idle process uses no CPU. A CQ without a file descriptor (`shm`, whose only blocking
//! wait is `FI_WAIT_YIELD`, a busy loop) is polled with sleeps backing off from 10 µs to
//! 10 ms (a 1 ms cap cost 3% of a core on this machine's `shm`); `shm` copies with CMA
//! (`process_vm_readv`) from the reading side, so the target's progress does not delay
//! reads.
//!
//! Every `fi_read` carries a token (the shim wraps it with the 64 bytes of `FI_CONTEXT2`
//! scratch that some providers require); the completion of that token is handed to the read
//! that posted it, whichever thread takes it from the CQ. A thread in [`Fabric::read`] posts
//! its chunks ([`FabricOptions::chunk`] bytes, [`FabricOptions::depth`] in flight, more as
//! they complete), then polls the CQ itself while its read is in flight (the domain is
//! `FI_THREAD_SAFE`): it spins for 10 ms after each completion (polling is what moves TCP
//! data), then sleeps on the wait object for at most 1 ms at a time (or parks, without
//! one); a thread that takes another's completion wakes it. While any thread is in `read`,
//! the progress thread stays parked: the readers' polling serves peers too, and on a machine
//! with few cores a third thread waking for every packet costs more than it helps; the last
//! reader out unparks it. So concurrent reads and the progress thread share one CQ with no
//! lock of their own, and none waits for another to hand over its completions.
//!
//! A read waits for all its chunks, including after one of them failed (an error
//! completion's message is returned, never a panic). It has a deadline
//! ([`FabricOptions::timeout`]) renewed by each of its completions: when it passes, the
//! chunks still in flight are abandoned (their completions, if any, are dropped) and the
//! read fails with [`FabricError::Timeout`]. Some failures give no error completion for the
//! operation, and only the deadline ends them: a TCP peer that is gone (rxm retries the
//! connection), a `shm` peer that exited (libfabric 1.17 reports an error without the
//! operation's context).
//!
//! ## Failures and peers
//!
//! After a read of a peer fails or times out, the peer is removed from the AV: rxm (over TCP
//! or verbs) then closes the connection, which a remote error leaves unusable anyway, so no
//! late data of an abandoned chunk lands in the region. The [`PeerAddr`] stays valid: the
//! next read inserts the address again (a new connection); a read that fails because its
//! connection failed (refused, reset, ...) is tried twice more that way. Other reads of that
//! peer in flight at that moment may fail or time out with it. Not covered: a provider
//! without connections (`shm` where CMA is not permitted) may still complete an abandoned
//! chunk into the region later, so keep a region alive a while after a read into it timed
//! out. With `shm`, libfabric 1.17 does not check a read against the target's registration
//! (CMA reads the peer's memory directly): [`Fabric::read`] checks ranges against the
//! [`RemoteRegion`] before posting, so only a forged `RemoteRegion` could read past it.

mod sys;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The providers [`Fabric::open`] picks from, best first, when none is named.
pub const PREFERRED_PROVIDERS: [&str; 6] = ["verbs;ofi_rxm", "efa", "cxi", "opx", "psm3", "tcp;ofi_rxm"];

/// The environment variable naming the provider when [`FabricOptions::provider`] is `None`.
pub const PROVIDER_ENV: &str = "RAYHPC_FABRIC_PROVIDER";

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// No provider fits: the one named does not exist or lacks RMA reads on RDM endpoints,
    /// or none of [`PREFERRED_PROVIDERS`] is offered.
    #[error("{0}")]
    NoProvider(String),
    /// A libfabric call failed ("call: message").
    #[error("libfabric: {0}")]
    Call(String),
    /// A peer address that this provider cannot use.
    #[error("invalid peer address: {0}")]
    BadAddress(String),
    /// The range does not fit in the region.
    #[error("{len} bytes at offset {offset} do not fit in the {side} region of {region} bytes")]
    OutOfBounds {
        /// `"local"` or `"remote"`.
        side: &'static str,
        /// The offset asked for.
        offset: u64,
        /// The length asked for.
        len: u64,
        /// The region's length.
        region: u64,
    },
    /// A [`PeerAddr`] of another [`Fabric`].
    #[error("the peer was connected through another Fabric")]
    UnknownPeer,
    /// An operation of the read failed; the provider's message.
    #[error("read failed: {0}")]
    Failed(String),
    /// No completion of the read arrived for `after`; the peer's connection was closed (the
    /// next read makes a new one).
    #[error("read timed out: no completion for {after:?} ({done} of {len} bytes read)")]
    Timeout {
        /// The timeout.
        after: Duration,
        /// Bytes whose chunks completed.
        done: u64,
        /// Bytes asked for.
        len: u64,
    },
}

/// How to open a [`Fabric`].
#[derive(Debug, Clone)]
pub struct FabricOptions {
    /// The provider, e.g. `"tcp;ofi_rxm"`, `"shm"`, `"verbs;ofi_rxm"`; `None`: the
    /// environment's [`PROVIDER_ENV`], else the best of [`PREFERRED_PROVIDERS`].
    pub provider: Option<String>,
    /// The local address to bind to, for providers addressed by IP; `None`: the provider's
    /// default interface.
    pub source: Option<IpAddr>,
    /// A read fails when none of its chunks completes for this long. Default 30 s.
    pub timeout: Duration,
    /// Bytes per `fi_read`. Default 4 MiB.
    pub chunk: usize,
    /// Chunks in flight per read (bounded by the transmit queue). Default 8.
    pub depth: usize,
}

impl Default for FabricOptions {
    fn default() -> Self {
        FabricOptions { provider: None, source: None, timeout: Duration::from_secs(30), chunk: 4 << 20, depth: 8 }
    }
}

/// The memory-registration modes the provider asked for (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MrMode {
    /// `FI_MR_LOCAL`: local buffers need a descriptor.
    pub local: bool,
    /// `FI_MR_VIRT_ADDR`: remote addresses are virtual addresses, not offsets.
    pub virt_addr: bool,
    /// `FI_MR_ALLOCATED`: only allocated memory may be registered.
    pub allocated: bool,
    /// `FI_MR_PROV_KEY`: the provider picks keys.
    pub prov_key: bool,
    /// `FI_MR_ENDPOINT`: registrations are bound to the endpoint.
    pub endpoint: bool,
}

/// A peer of a [`Fabric`], from [`Fabric::connect`]: unique in the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(u64);

/// What a peer needs to read a [`Region`]: to be sent to it with [`Fabric::address`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRegion {
    /// The region's virtual address with `FI_MR_VIRT_ADDR`, else 0: a read at offset `o`
    /// is at remote address `base + o`.
    pub base: u64,
    /// The registration's key.
    pub key: u64,
    /// The region's length in bytes.
    pub len: u64,
}

/// Memory registered with a [`Fabric`]; deregistered on drop.
pub struct Region {
    mr: sys::Mr,
    remote: RemoteRegion,
}

impl Region {
    /// What a peer needs to read this region.
    pub fn remote(&self) -> RemoteRegion {
        self.remote
    }

    /// The region's first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.mr.base()
    }

    /// The region's length in bytes.
    pub fn len(&self) -> usize {
        self.mr.len()
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.mr.len() == 0
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region").field("base", &self.mr.base()).field("remote", &self.remote).finish()
    }
}

/// The providers offering RMA reads on RDM endpoints here (`fi_getinfo`), for
/// diagnostics; empty when libfabric finds none or fails.
pub fn providers() -> Vec<String> {
    sys::providers().unwrap_or_default()
}

/// Keys for providers without `FI_MR_PROV_KEY`: unique in the process, hence in a domain.
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// A random 64-bit value drawn once per process (the standard library's hasher keys come
/// from the OS's random source).
fn key_salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static SALT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SALT.get_or_init(|| std::collections::hash_map::RandomState::new().build_hasher().finish())
}
/// Ids of [`PeerAddr`]s.
static NEXT_PEER: AtomicU64 = AtomicU64::new(1);

/// How long the progress thread sleeps at most before looking at its stop flag.
const PROGRESS_WAIT_MS: i32 = 100;
/// The progress thread's sleeps between polls of a CQ without a wait object.
const MIN_BACKOFF: Duration = Duration::from_micros(10);
const MAX_BACKOFF: Duration = Duration::from_millis(10);
/// How long a reader polls the CQ without pause after its last completion (or its start).
/// Over TCP the polling is what moves the data: 100 µs gave 2–2.3 GiB/s on the 2-core test
/// machine, 1 ms 3.1, 10 ms 3.6–5.2 (sleeping on the wait object costs a wakeup per event).
const SPIN: Duration = Duration::from_millis(10);
/// After that, how long it sleeps at most on the CQ's wait object between polls (it wakes
/// at the next event), or parks when the CQ has none (a completion taken by another
/// thread unparks it).
const READER_WAIT_MS: i32 = 1;
const PARK: Duration = Duration::from_micros(200);
/// How many times a read that lost its connection is tried again, and the pause before the
/// first retry (doubled for the next).
const RETRIES: u32 = 2;
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// One libfabric RDM endpoint with its progress thread. `Send + Sync`: any number of
/// threads may read through it at once.
pub struct Fabric {
    shared: Arc<Shared>,
    progress: Option<JoinHandle<()>>,
}

/// What the progress thread shares with the readers.
struct Shared {
    raw: Arc<sys::Fabric>,
    /// The read waiting for each token in flight, and the chunk's length.
    waiting: Mutex<HashMap<u64, (Arc<Waiter>, usize)>>,
    next_token: AtomicU64,
    peers: Mutex<Peers>,
    stop: AtomicBool,
    /// Threads in [`Fabric::read`]: while there are any, they poll the CQ and the progress
    /// thread stays out of their way.
    readers: AtomicUsize,
    /// The progress thread, for the last reader to wake.
    progress_thread: OnceLock<Thread>,
    timeout: Duration,
    chunk: usize,
    depth: usize,
}

#[derive(Default)]
struct Peers {
    by_address: HashMap<Vec<u8>, PeerAddr>,
    /// Each peer's address and its fi_addr while it is in the AV.
    entries: HashMap<PeerAddr, (Vec<u8>, Option<u64>)>,
}

/// The state of one [`Fabric::read`], updated by whoever takes its completions.
struct Waiter {
    thread: Thread,
    state: Mutex<WaitState>,
}

#[derive(Default, Clone)]
struct WaitState {
    /// Chunks completed, successfully or not.
    done: usize,
    /// Bytes of the chunks completed successfully.
    bytes: u64,
    /// The first failure.
    error: Option<sys::OpError>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something did, the data is still sound.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Takes completions from the CQ and hands each to its read. Returns how many were
    /// taken.
    fn progress(&self, buf: &mut Vec<sys::Completion>) -> Result<usize, FabricError> {
        self.raw.poll(buf).map_err(FabricError::Call)?;
        for c in buf.iter_mut() {
            let waiter = lock(&self.waiting).remove(&c.token);
            match waiter {
                Some((w, len)) => {
                    lock(&w.state).complete(len, c.error.take());
                    if w.thread.id() != thread::current().id() {
                        // Its thread may be asleep on the CQ's wait object, or parked.
                        self.raw.wake();
                        w.thread.unpark();
                    }
                }
                // A chunk of a read that timed out, or an error of no operation.
                None => {
                    if let Some(e) = &c.error {
                        eprintln!("rayhpc[fabric]: error completion of no waiting read (token {}): {}", c.token, e.message);
                    }
                }
            }
        }
        Ok(buf.len())
    }

    /// The progress thread: polls the CQ and sleeps on its wait object (or with a
    /// backoff, when it has none) while no reader polls it.
    fn progress_loop(&self) {
        let mut buf = Vec::with_capacity(sys::POLL_BATCH);
        let mut backoff = MIN_BACKOFF;
        while !self.stop.load(Ordering::Acquire) {
            if self.readers.load(Ordering::Acquire) > 0 {
                // Readers poll the CQ themselves; the last one out unparks this thread.
                thread::park_timeout(Duration::from_millis(PROGRESS_WAIT_MS as u64));
                continue;
            }
            let result = match self.progress(&mut buf) {
                Ok(n) if n > 0 => {
                    backoff = MIN_BACKOFF;
                    Ok(())
                }
                Ok(_) if self.raw.can_wait() => self.raw.wait(PROGRESS_WAIT_MS).map(drop).map_err(FabricError::Call),
                Ok(_) => {
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    Ok(())
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                eprintln!("rayhpc[fabric]: progress thread: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl WaitState {
    fn complete(&mut self, len: usize, error: Option<sys::OpError>) {
        self.done += 1;
        match error {
            None => self.bytes += len as u64,
            Some(e) => {
                self.error.get_or_insert(e);
            }
        }
    }
}

impl Fabric {
    /// Opens a fabric, domain and RDM endpoint of the provider chosen as the module docs
    /// say, and starts its progress thread.
    pub fn open(opts: &FabricOptions) -> Result<Fabric, FabricError> {
        let named = opts.provider.clone().or_else(|| std::env::var(PROVIDER_ENV).ok()).filter(|p| !p.is_empty());
        let provider = match named {
            Some(p) => p,
            None => {
                let offered = sys::providers().map_err(FabricError::Call)?;
                match PREFERRED_PROVIDERS.iter().find(|p| offered.iter().any(|o| o == *p)) {
                    Some(p) => p.to_string(),
                    None => {
                        return Err(FabricError::NoProvider(format!(
                            "none of the libfabric providers {} is offered here (offered: {}); name one in {PROVIDER_ENV}",
                            PREFERRED_PROVIDERS.join(", "),
                            offered.join(", ")
                        )))
                    }
                }
            }
        };
        let source = opts.source.map(|ip| ip.to_string());
        let raw = sys::Fabric::open(Some(&provider), source.as_deref()).map_err(|e| {
            if e.starts_with("fi_getinfo") {
                let offered = providers();
                FabricError::NoProvider(format!(
                    "libfabric provider `{provider}` offers no RDM endpoint with RMA reads here{} ({e}); offered: {}",
                    source.as_ref().map(|s| format!(" at {s}")).unwrap_or_default(),
                    offered.join(", ")
                ))
            } else {
                FabricError::Call(e)
            }
        })?;
        let (max_msg, tx_size) = raw.limits();
        let shared = Arc::new(Shared {
            raw: Arc::new(raw),
            waiting: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            peers: Mutex::new(Peers::default()),
            stop: AtomicBool::new(false),
            readers: AtomicUsize::new(0),
            progress_thread: OnceLock::new(),
            timeout: opts.timeout,
            chunk: opts.chunk.clamp(1, max_msg.max(1)),
            depth: opts.depth.clamp(1, tx_size.max(1)),
        });
        let progress = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("rayhpc-fabric".into())
                .spawn(move || shared.progress_loop())
                .map_err(|e| FabricError::Call(format!("spawning the progress thread: {e}")))?
        };
        let _ = shared.progress_thread.set(progress.thread().clone());
        Ok(Fabric { shared, progress: Some(progress) })
    }

    /// The provider in use, e.g. `"tcp;ofi_rxm"`.
    pub fn provider(&self) -> &str {
        self.shared.raw.provider()
    }

    /// The memory-registration modes in force.
    pub fn mr_mode(&self) -> MrMode {
        let m = self.shared.raw.mr_mode();
        MrMode {
            local: m & sys::MR_LOCAL != 0,
            virt_addr: m & sys::MR_VIRT_ADDR != 0,
            allocated: m & sys::MR_ALLOCATED != 0,
            prov_key: m & sys::MR_PROV_KEY != 0,
            endpoint: m & sys::MR_ENDPOINT != 0,
        }
    }

    /// This endpoint's address (`fi_getname`), for peers' [`Fabric::connect`].
    pub fn address(&self) -> Vec<u8> {
        self.shared.raw.address().to_vec()
    }

    /// Registers `[base, base + len)` for peers to read and as the destination of this
    /// side's reads.
    ///
    /// # Safety
    ///
    /// The memory must stay valid and writable until the returned [`Region`] is dropped.
    /// Reads write into it and peers read from it outside Rust's knowledge: it must not be
    /// accessed through Rust references while a transfer touches it (the caller orders
    /// that, e.g. by publishing the region only once it is filled, and by reading into a
    /// range only while no reference to it exists).
    #[allow(unsafe_code)]
    pub unsafe fn register(&self, base: *mut u8, len: usize) -> Result<Region, FabricError> {
        // Unique in the process, and not guessable from outside it: a provider without
        // FI_MR_PROV_KEY (tcp;ofi_rxm) takes this key, and its endpoint does not authenticate
        // readers, so the key is what keeps strangers from reading the region.
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed) ^ key_salt();
        // SAFETY: forwarded: the caller guarantees the memory outlives the Region, which
        // owns the Mr.
        let mr = unsafe { sys::Mr::register(&self.shared.raw, base, len, key) }.map_err(FabricError::Call)?;
        let base = if self.mr_mode().virt_addr { mr.base() as u64 } else { 0 };
        let remote = RemoteRegion { base, key: mr.key(), len: len as u64 };
        Ok(Region { mr, remote })
    }

    /// The peer at `peer_address` (its [`Fabric::address`]): inserted in the AV once, then
    /// cached.
    pub fn connect(&self, peer_address: &[u8]) -> Result<PeerAddr, FabricError> {
        let mut peers = lock(&self.shared.peers);
        if let Some(p) = peers.by_address.get(peer_address) {
            return Ok(*p);
        }
        let fi_addr = self.shared.raw.av_insert(peer_address).map_err(FabricError::BadAddress)?;
        let peer = PeerAddr(NEXT_PEER.fetch_add(1, Ordering::Relaxed));
        peers.by_address.insert(peer_address.to_vec(), peer);
        peers.entries.insert(peer, (peer_address.to_vec(), Some(fi_addr)));
        Ok(peer)
    }

    /// The peer's fi_addr, inserting it in the AV again if a failure removed it.
    fn fi_addr(&self, peer: PeerAddr) -> Result<u64, FabricError> {
        let mut peers = lock(&self.shared.peers);
        let (address, fi_addr) = peers.entries.get_mut(&peer).ok_or(FabricError::UnknownPeer)?;
        match fi_addr {
            Some(a) => Ok(*a),
            None => {
                let a = self.shared.raw.av_insert(address).map_err(FabricError::BadAddress)?;
                *fi_addr = Some(a);
                Ok(a)
            }
        }
    }

    /// Removes the peer from the AV after a failed read through `fi_addr` (unless another
    /// read did already).
    fn reset(&self, peer: PeerAddr, used: u64) {
        let mut peers = lock(&self.shared.peers);
        if let Some((_, fi_addr)) = peers.entries.get_mut(&peer) {
            if *fi_addr == Some(used) {
                *fi_addr = None;
                if let Err(e) = self.shared.raw.av_remove(used) {
                    eprintln!("rayhpc[fabric]: {e}");
                }
            }
        }
    }

    /// Reads `len` bytes at `remote_offset` of the peer's region `remote` into `local` at
    /// `local_offset`, in chunks with several in flight; returns when all have completed,
    /// one failed, or none completed for [`FabricOptions::timeout`] (see the module docs).
    /// A read that fails because the connection failed is tried again, twice, on a new one.
    pub fn read(
        &self,
        peer: PeerAddr,
        remote: RemoteRegion,
        remote_offset: u64,
        local: &Region,
        local_offset: usize,
        len: usize,
    ) -> Result<(), FabricError> {
        let bounds = |side, offset: u64, region: u64| {
            let fits = offset.checked_add(len as u64).is_some_and(|end| end <= region);
            if fits {
                Ok(())
            } else {
                Err(FabricError::OutOfBounds { side, offset, len: len as u64, region })
            }
        };
        bounds("remote", remote_offset, remote.len)?;
        bounds("local", local_offset as u64, local.len() as u64)?;
        if len == 0 {
            return Ok(());
        }
        // With offsets (`base` 0) this is the offset; a forged base must not panic.
        let raddr = remote.base.wrapping_add(remote_offset);
        let mut attempt = 0;
        loop {
            let fi_addr = self.fi_addr(peer)?;
            let e = match self.read_once(fi_addr, raddr, remote.key, local, local_offset, len) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            self.reset(peer, fi_addr);
            attempt += 1;
            match e {
                Failure::Op(e) if e.connection && attempt <= RETRIES => thread::sleep(RETRY_PAUSE * attempt),
                Failure::Op(e) => return Err(FabricError::Failed(e.message)),
                Failure::Other(e) => return Err(e),
            }
        }
    }

    /// One try of [`Fabric::read`] through `fi_addr`, from remote address `raddr`.
    fn read_once(&self, fi_addr: u64, raddr: u64, key: u64, local: &Region, local_offset: usize, len: usize) -> Result<(), Failure> {
        let shared = &*self.shared;
        let _reader = ReaderGuard::enter(shared);
        let waiter = Arc::new(Waiter { thread: thread::current(), state: Mutex::new(WaitState::default()) });
        // Abandons the chunks still in flight: their completions, if any, are dropped.
        let abandon = |e: FabricError| {
            lock(&shared.waiting).retain(|_, (w, _)| !Arc::ptr_eq(w, &waiter));
            Failure::Other(e)
        };
        let mut buf = Vec::with_capacity(sys::POLL_BATCH);
        let (mut next, mut posted) = (0usize, 0usize);
        let mut post_error = None;
        let mut last_done = 0;
        let mut last_progress = Instant::now();
        loop {
            let state = lock(&waiter.state).clone();
            // Post chunks while there is room, unless something failed.
            while post_error.is_none() && state.error.is_none() && next < len && posted - state.done < shared.depth {
                let n = shared.chunk.min(len - next);
                let token = shared.next_token.fetch_add(1, Ordering::Relaxed);
                lock(&shared.waiting).insert(token, (Arc::clone(&waiter), n));
                match shared.raw.read(&local.mr, local_offset + next, n, fi_addr, raddr.wrapping_add(next as u64), key, token) {
                    Ok(true) => {
                        posted += 1;
                        next += n;
                    }
                    Ok(false) => {
                        lock(&shared.waiting).remove(&token);
                        break;
                    }
                    Err(e) => {
                        lock(&shared.waiting).remove(&token);
                        post_error = Some(e);
                    }
                }
            }
            let failed = post_error.is_some() || state.error.is_some();
            if state.done == posted && (next == len || failed) {
                return match post_error.or(state.error) {
                    Some(e) => Err(Failure::Op(e)),
                    None => Ok(()),
                };
            }
            let now = Instant::now();
            if state.done > last_done {
                last_done = state.done;
                last_progress = now;
            } else if now - last_progress > shared.timeout {
                return Err(abandon(FabricError::Timeout { after: shared.timeout, done: state.bytes, len: len as u64 }));
            }
            match shared.progress(&mut buf) {
                Ok(0) if now - last_progress > SPIN => {
                    if shared.raw.can_wait() {
                        if let Err(e) = shared.raw.wait(READER_WAIT_MS) {
                            return Err(abandon(FabricError::Call(e)));
                        }
                    } else {
                        thread::park_timeout(PARK);
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(abandon(e)),
            }
        }
    }
}

/// Counts a thread in [`Fabric::read`] while it lives.
struct ReaderGuard<'a>(&'a Shared);

impl<'a> ReaderGuard<'a> {
    fn enter(shared: &'a Shared) -> Self {
        shared.readers.fetch_add(1, Ordering::AcqRel);
        ReaderGuard(shared)
    }
}

impl Drop for ReaderGuard<'_> {
    fn drop(&mut self) {
        if self.0.readers.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(t) = self.0.progress_thread.get() {
                t.unpark();
            }
        }
    }
}

/// Why one try of a read failed.
enum Failure {
    /// An operation failed.
    Op(sys::OpError),
    /// Something else (a timeout, the CQ).
    Other(FabricError),
}

impl Drop for Fabric {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.raw.wake();
        if let Some(t) = self.shared.progress_thread.get() {
            t.unpark();
        }
        if let Some(t) = self.progress.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Fabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fabric").field("provider", &self.provider()).field("address", &self.shared.raw.address()).finish()
    }
}
