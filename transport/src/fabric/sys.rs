//! The one module with `unsafe`: the hand-written declarations of the C shim
//! (`csrc/fabric_shim.c`, which owns every libfabric object) and safe owners of its two
//! handles. Errors come back as the shim's text ("call: message (-code)").
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_long, c_uint, c_void, CStr, CString};
use std::ptr::{self, NonNull};
use std::sync::Arc;

/// `struct rf_fabric`: fabric, domain, CQ, AV and one RDM endpoint.
#[repr(C)]
struct RfFabric {
    _opaque: [u8; 0],
}

/// `struct rf_mr`: one memory registration.
#[repr(C)]
struct RfMr {
    _opaque: [u8; 0],
}

extern "C" {
    fn rf_providers(buf: *mut c_char, len: usize, err: *mut c_char, errlen: usize) -> c_long;
    fn rf_open(prov: *const c_char, node: *const c_char, out: *mut *mut RfFabric, err: *mut c_char, errlen: usize) -> c_int;
    fn rf_close(f: *mut RfFabric);
    fn rf_prov_name(f: *const RfFabric) -> *const c_char;
    fn rf_mr_mode(f: *const RfFabric) -> c_uint;
    fn rf_limits(f: *const RfFabric, max_msg: *mut usize, tx_size: *mut usize);
    fn rf_can_wait(f: *const RfFabric) -> c_int;
    fn rf_getname(f: *mut RfFabric, buf: *mut c_void, len: *mut usize) -> c_int;
    fn rf_mr_reg(
        f: *mut RfFabric,
        buf: *mut c_void,
        len: usize,
        requested_key: u64,
        out: *mut *mut RfMr,
        key: *mut u64,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
    fn rf_mr_close(m: *mut RfMr);
    fn rf_av_insert(f: *mut RfFabric, addr: *const c_void, len: usize, out: *mut u64, err: *mut c_char, errlen: usize) -> c_int;
    fn rf_av_remove(f: *mut RfFabric, addr: u64) -> c_int;
    fn rf_read(f: *mut RfFabric, local: *mut c_void, len: usize, mr: *const RfMr, peer: u64, raddr: u64, key: u64, token: u64) -> c_int;
    fn rf_poll(f: *mut RfFabric, tokens: *mut u64, errs: *mut c_int, max: usize, msg: *mut c_char, msglen: usize) -> c_int;
    fn rf_wait(f: *mut RfFabric, timeout_ms: c_int) -> c_int;
    fn rf_wake(f: *mut RfFabric);
    fn rf_strerror(code: c_int) -> *const c_char;
    fn rf_is_conn_error(code: c_int) -> c_int;
}

/// Room for the shim's error text.
const ERR_LEN: usize = 512;
/// Completions taken from the CQ per [`Fabric::poll`] (the shim's limit).
pub(super) const POLL_BATCH: usize = 32;

/// The `RF_MR_*` bits of `rf_mr_mode`.
pub(super) const MR_LOCAL: u32 = 1;
pub(super) const MR_VIRT_ADDR: u32 = 2;
pub(super) const MR_ALLOCATED: u32 = 4;
pub(super) const MR_PROV_KEY: u32 = 8;
pub(super) const MR_ENDPOINT: u32 = 16;

/// The NUL-terminated text the shim wrote into `buf`.
fn text(buf: &[u8]) -> String {
    CStr::from_bytes_until_nul(buf).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// `fi_strerror` of a libfabric error code.
fn strerror(code: c_int) -> String {
    // SAFETY: rf_strerror returns fi_strerror's pointer to a static NUL-terminated string
    // (never NULL), which is only read here.
    unsafe { CStr::from_ptr(rf_strerror(code)) }.to_string_lossy().into_owned()
}

/// The providers that offer FI_RMA on FI_EP_RDM, each once, in fi_getinfo's order.
pub(super) fn providers() -> Result<Vec<String>, String> {
    let mut buf = vec![0u8; 1024];
    loop {
        let mut err = [0u8; ERR_LEN];
        // SAFETY: both buffers are writable for the lengths passed, and the shim writes
        // within them (NUL-terminated).
        let need = unsafe { rf_providers(buf.as_mut_ptr().cast(), buf.len(), err.as_mut_ptr().cast(), err.len()) };
        if need < 0 {
            return Err(text(&err));
        }
        let need = need as usize;
        if need < buf.len() {
            return Ok(text(&buf).lines().map(str::to_owned).collect());
        }
        buf = vec![0u8; need + 1];
    }
}

/// A failed operation.
#[derive(Debug, Clone)]
pub(super) struct OpError {
    /// The provider's message.
    pub message: String,
    /// The connection to the peer failed or went away (a new one may do better).
    pub connection: bool,
}

impl OpError {
    fn new(code: c_int, message: String) -> OpError {
        // SAFETY: a pure function of an integer.
        let connection = unsafe { rf_is_conn_error(code) } != 0;
        OpError { message, connection }
    }
}

/// One completion taken from the CQ: the token of the operation (0 for an error of no
/// operation) and whether it failed.
pub(super) struct Completion {
    pub token: u64,
    pub error: Option<OpError>,
}

/// An open `rf_fabric`, closed on drop.
pub(super) struct Fabric {
    raw: NonNull<RfFabric>,
    provider: String,
    mr_mode: u32,
    max_msg: usize,
    tx_size: usize,
    can_wait: bool,
    address: Vec<u8>,
}

// SAFETY: the shim opens the domain FI_THREAD_SAFE (it refuses providers that do not offer
// it), so every libfabric call may come from any thread at once; the shim's own mutable
// state (its list of operations in flight) is behind a mutex, and the fields cached here
// are immutable.
unsafe impl Send for Fabric {}
// SAFETY: as for Send: every function of the shim may be called concurrently.
unsafe impl Sync for Fabric {}

impl Fabric {
    /// Opens provider `provider` (any when `None`), bound to `source` when the provider is
    /// addressed by IP.
    pub fn open(provider: Option<&str>, source: Option<&str>) -> Result<Fabric, String> {
        let cstr = |s: &str| CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"));
        let provider = provider.map(cstr).transpose()?;
        let source = source.map(cstr).transpose()?;
        let mut raw = ptr::null_mut();
        let mut err = [0u8; ERR_LEN];
        // SAFETY: the strings are NUL-terminated (or NULL), `raw` and `err` are writable for
        // the sizes given; on success the shim stores a handle we now own.
        let ret = unsafe {
            rf_open(
                provider.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
                source.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
                &mut raw,
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        let raw = match NonNull::new(raw) {
            Some(raw) if ret == 0 => raw,
            _ => return Err(text(&err)),
        };
        let (mut max_msg, mut tx_size) = (0, 0);
        let mut name = vec![0u8; 256];
        let mut name_len = name.len();
        // SAFETY: `raw` is a live handle; the provider name is a NUL-terminated string owned
        // by it (copied out at once); the out-pointers and the name buffer are writable for
        // the sizes given.
        let (provider, mr_mode, can_wait, name_ret) = unsafe {
            let provider = CStr::from_ptr(rf_prov_name(raw.as_ptr())).to_string_lossy().into_owned();
            rf_limits(raw.as_ptr(), &mut max_msg, &mut tx_size);
            let name_ret = rf_getname(raw.as_ptr(), name.as_mut_ptr().cast(), &mut name_len);
            (provider, rf_mr_mode(raw.as_ptr()), rf_can_wait(raw.as_ptr()) != 0, name_ret)
        };
        let mut fabric = Fabric { raw, provider, mr_mode, max_msg, tx_size, can_wait, address: Vec::new() };
        if name_ret != 0 || name_len > name.len() {
            return Err(format!("fi_getname: {}", strerror(name_ret)));
        }
        name.truncate(name_len);
        fabric.address = name;
        Ok(fabric)
    }

    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The `MR_*` bits in force.
    pub fn mr_mode(&self) -> u32 {
        self.mr_mode
    }

    /// The largest single transfer and the depth of the transmit queue.
    pub fn limits(&self) -> (usize, usize) {
        (self.max_msg, self.tx_size)
    }

    /// Whether [`Fabric::wait`] sleeps (else it returns at once).
    pub fn can_wait(&self) -> bool {
        self.can_wait
    }

    /// This endpoint's address (fi_getname).
    pub fn address(&self) -> &[u8] {
        &self.address
    }

    /// Inserts a peer's address into the AV; its fi_addr.
    pub fn av_insert(&self, addr: &[u8]) -> Result<u64, String> {
        let mut out = 0u64;
        let mut err = [0u8; ERR_LEN];
        // SAFETY: `addr` is readable for its length (the shim checks that length against the
        // address format before libfabric reads it); `out` and `err` are writable.
        let ret =
            unsafe { rf_av_insert(self.raw.as_ptr(), addr.as_ptr().cast(), addr.len(), &mut out, err.as_mut_ptr().cast(), err.len()) };
        if ret == 0 {
            Ok(out)
        } else {
            Err(text(&err))
        }
    }

    /// Removes a peer from the AV (closing its connection, for providers that have them).
    pub fn av_remove(&self, addr: u64) -> Result<(), String> {
        // SAFETY: `raw` is live; the shim passes a valid one-element array to fi_av_remove.
        let ret = unsafe { rf_av_remove(self.raw.as_ptr(), addr) };
        if ret == 0 {
            Ok(())
        } else {
            Err(format!("fi_av_remove: {}", strerror(ret)))
        }
    }

    /// Posts a read of `len` bytes from the peer's `(raddr, key)` into `mr` at `offset`,
    /// whose completion will carry `token`. `Ok(false)` when the provider cannot take it
    /// now (poll, then try again).
    #[allow(clippy::too_many_arguments)] // fi_read's own arguments
    pub fn read(&self, mr: &Mr, offset: usize, len: usize, peer: u64, raddr: u64, key: u64, token: u64) -> Result<bool, OpError> {
        let refuse = |message| Err(OpError { message, connection: false });
        if mr.fabric.raw != self.raw {
            return refuse("the local region was registered with another Fabric".into());
        }
        if offset.checked_add(len).is_none_or(|end| end > mr.len) {
            return refuse(format!("{len} bytes at offset {offset} exceed the local region of {} bytes", mr.len));
        }
        // SAFETY: [base + offset, + len) lies in the registered region, which the caller of
        // `Mr::register` guaranteed valid and writable for as long as the Mr lives (and the
        // read ends, or its peer's connection is closed, before a Region is dropped: see
        // `Fabric::read`); `mr` belongs to this fabric (checked above).
        let ret = unsafe { rf_read(self.raw.as_ptr(), mr.base.add(offset).cast(), len, mr.raw.as_ptr(), peer, raddr, key, token) };
        match ret {
            0 => Ok(true),
            1 => Ok(false),
            e => Err(OpError::new(e, format!("fi_read: {}", strerror(e)))),
        }
    }

    /// Takes up to [`POLL_BATCH`] completions into `out` (cleared first), without
    /// blocking. Drives the provider's progress, both for this side's reads and for peers
    /// reading from it.
    pub fn poll(&self, out: &mut Vec<Completion>) -> Result<(), String> {
        out.clear();
        let mut tokens = [0u64; POLL_BATCH];
        let mut errs = [0 as c_int; POLL_BATCH];
        let mut msg = [0u8; ERR_LEN];
        // SAFETY: the three buffers are writable for POLL_BATCH entries and ERR_LEN bytes;
        // the shim writes at most that many.
        let n =
            unsafe { rf_poll(self.raw.as_ptr(), tokens.as_mut_ptr(), errs.as_mut_ptr(), POLL_BATCH, msg.as_mut_ptr().cast(), msg.len()) };
        if n < 0 {
            return Err(text(&msg));
        }
        let n = (n as usize).min(POLL_BATCH);
        out.extend(
            tokens[..n]
                .iter()
                .zip(&errs[..n])
                .map(|(&token, &e)| Completion { token, error: (e != 0).then(|| OpError::new(e, text(&msg))) }),
        );
        Ok(())
    }

    /// Sleeps until the provider has something to progress, [`Fabric::wake`] is called, or
    /// `timeout_ms` passes; `Ok(true)` when woken by an event. Returns at once (`Ok(true)`)
    /// when the CQ has no wait object.
    pub fn wait(&self, timeout_ms: i32) -> Result<bool, String> {
        // SAFETY: `raw` is live; fi_trywait and poll(2) may be called from any thread.
        match unsafe { rf_wait(self.raw.as_ptr(), timeout_ms) } {
            0 => Ok(false),
            1 => Ok(true),
            e => Err(format!("waiting on the completion queue: {}", strerror(e))),
        }
    }

    /// Wakes a thread sleeping in [`Fabric::wait`].
    pub fn wake(&self) {
        // SAFETY: `raw` is live; writing the eventfd is thread-safe.
        unsafe { rf_wake(self.raw.as_ptr()) }
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        // SAFETY: we own the handle and nothing else uses it: every Mr holds an Arc of this
        // Fabric, so all registrations are closed already.
        unsafe { rf_close(self.raw.as_ptr()) }
    }
}

/// A memory registration, closed on drop (before its fabric, of which it holds an Arc).
pub(super) struct Mr {
    raw: NonNull<RfMr>,
    fabric: Arc<Fabric>,
    base: *mut u8,
    len: usize,
    key: u64,
}

// SAFETY: the registration is immutable once made and libfabric lets any thread use its
// descriptor or close it (FI_THREAD_SAFE domain); `base` is only an address handed to the
// provider, never dereferenced by Rust.
unsafe impl Send for Mr {}
// SAFETY: as for Send.
unsafe impl Sync for Mr {}

impl Mr {
    /// Registers `[base, base + len)` for remote reads and as the destination of local
    /// reads, asking for key `requested_key` (the provider may pick its own).
    ///
    /// # Safety
    ///
    /// The range must be valid, writable memory until the `Mr` is dropped; the provider
    /// reads it for peers and writes it for local reads, outside Rust's knowledge, so it
    /// must not be accessed through references while a transfer touches it.
    pub unsafe fn register(fabric: &Arc<Fabric>, base: *mut u8, len: usize, requested_key: u64) -> Result<Mr, String> {
        let mut raw = ptr::null_mut();
        let mut key = 0u64;
        let mut err = [0u8; ERR_LEN];
        // SAFETY: the range is valid for the Mr's life (this function's contract); the
        // out-pointers and `err` are writable; on success we own the returned handle.
        let ret = unsafe {
            rf_mr_reg(fabric.raw.as_ptr(), base.cast(), len, requested_key, &mut raw, &mut key, err.as_mut_ptr().cast(), err.len())
        };
        match NonNull::new(raw) {
            Some(raw) if ret == 0 => Ok(Mr { raw, fabric: Arc::clone(fabric), base, len, key }),
            _ => Err(text(&err)),
        }
    }

    pub fn base(&self) -> *mut u8 {
        self.base
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn key(&self) -> u64 {
        self.key
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: we own the registration; its fabric is still open (we hold an Arc).
        unsafe { rf_mr_close(self.raw.as_ptr()) }
    }
}
