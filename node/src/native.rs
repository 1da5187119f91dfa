#![allow(unsafe_code)] // the C ABI: calls through function pointers, dlopen, the outputs

//! Native (C ABI) task functions and actor classes, as the C API defines them:
//! - a function (`rayhpc_task_fn`):
//!   `int32_t f(const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user)`;
//! - a class (`rayhpc_class_def`): a constructor that makes the state, methods by name with
//!   their arity, a destructor, and a user pointer ([`ClassDef`]), run as a raw actor of the
//!   core ([`NativeClass`], whose state is a [`NativeActor`]).
//!
//! Both a C program's embedded runtime (`librayhpc`) and a node runtime (which loads
//! `library:symbol` functions and classes for drivers attached to it) call them through this
//! module: there is one implementation of what a native call or actor does.
//!
//! An output may be written by a different copy of the C API than the one that made it: a
//! node runtime (the `rayhpc` binary) calls a function of a library linked against
//! `librayhpc.so`, whose `rayhpc_output_set` is that library's copy. So an output carries
//! its maker's operations ([`OutputOps`]), and the exported functions only check the magic
//! and call through them: the bytes are always allocated and freed by the same copy.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use rayhpc::raw::{raw_actor, RawActor, RawClass, RawFailure, RawOutput};
use rayhpc::FailureKind;
use serde::{Deserialize, Serialize};

/// The C API's status codes these operations return (a subset of `rayhpc_status`).
pub mod status {
    /// Success.
    pub const OK: i32 = 0;
    /// A NULL pointer.
    pub const NULL: i32 = 1;
    /// Not an output, or bad text.
    pub const INVALID: i32 = 2;
    /// Memory for the result could not be had.
    pub const STORE: i32 = 10;
}

/// `rayhpc_bytes`: a pointer and a length.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NativeBytes {
    /// The first byte (may be NULL when `len` is 0).
    pub data: *const u8,
    /// How many.
    pub len: usize,
}

/// A native task function (see the module's docs).
pub type NativeFn = unsafe extern "C" fn(args: *const NativeBytes, nargs: usize, out: *mut NativeOutput, user: *mut c_void) -> i32;

/// What an output's maker does for `rayhpc_output_set`, `_alloc` and `_error`.
#[repr(C)]
pub struct OutputOps {
    /// `rayhpc_output_set`.
    pub set: unsafe extern "C" fn(out: *mut NativeOutput, data: *const c_void, len: usize) -> i32,
    /// `rayhpc_output_alloc`.
    pub alloc: unsafe extern "C" fn(out: *mut NativeOutput, len: usize, buf: *mut *mut c_void) -> i32,
    /// `rayhpc_output_error`.
    pub error: unsafe extern "C" fn(out: *mut NativeOutput, message: *const c_char) -> i32,
}

/// Marks a live output (a pointer that is not one is refused, not followed).
pub const OUTPUT_MAGIC: u64 = 0x7261_7968_7063_6f75; // "rayhpcou"

/// `rayhpc_output`: the magic and the maker's operations at fixed offsets (all another copy
/// of the C API reads), then the maker's own state.
#[repr(C)]
pub struct NativeOutput {
    magic: u64,
    ops: &'static OutputOps,
    result: Vec<u8>,
    error: Option<String>,
}

static OPS: OutputOps = OutputOps { set: out_set, alloc: out_alloc, error: out_error };

unsafe extern "C" fn out_set(out: *mut NativeOutput, data: *const c_void, len: usize) -> i32 {
    // SAFETY: the exported function checked `out` (non-null, magic); it is the live output
    // of the running call, which this copy made.
    let o = unsafe { &mut *out };
    if len > 0 && data.is_null() {
        return status::NULL;
    }
    let (start, end) = (o.result.as_ptr() as usize, o.result.as_ptr() as usize + o.result.len());
    let src = data as usize;
    if len > 0 && src >= start && src + len <= end {
        // `data` is (part of) the buffer `alloc` gave: move within it.
        let from = src - start;
        o.result.copy_within(from..from + len, 0);
        o.result.truncate(len);
        return status::OK;
    }
    let mut v = Vec::new();
    if v.try_reserve_exact(len).is_err() {
        return status::STORE;
    }
    if len > 0 {
        // SAFETY: `len` readable bytes at `data` (the caller's contract), outside the
        // output's own buffer (checked above).
        v.extend_from_slice(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) });
    }
    o.result = v;
    status::OK
}

unsafe extern "C" fn out_alloc(out: *mut NativeOutput, len: usize, buf: *mut *mut c_void) -> i32 {
    if buf.is_null() {
        return status::NULL;
    }
    // SAFETY: as in `out_set`.
    let o = unsafe { &mut *out };
    let mut v = Vec::new();
    if v.try_reserve_exact(len).is_err() {
        return status::STORE;
    }
    v.resize(len, 0);
    o.result = v;
    // SAFETY: non-null, writable (the caller's contract).
    unsafe { buf.write(o.result.as_mut_ptr().cast()) };
    status::OK
}

unsafe extern "C" fn out_error(out: *mut NativeOutput, message: *const c_char) -> i32 {
    if message.is_null() {
        return status::NULL;
    }
    // SAFETY: as in `out_set`.
    let o = unsafe { &mut *out };
    // SAFETY: non-null and NUL-terminated (the caller's contract).
    o.error = Some(unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned());
    status::OK
}

/// The output `out` if it is one (the magic checked), for the exported functions.
///
/// # Safety
/// `out` is NULL or points to at least 16 readable bytes (an output, or the caller's
/// mistake that the magic then catches in practice).
pub unsafe fn ops_of(out: *mut NativeOutput) -> Result<&'static OutputOps, i32> {
    if out.is_null() {
        return Err(status::NULL);
    }
    // SAFETY: non-null; the caller's contract. `magic` and `ops` are the first fields of a
    // `repr(C)` struct, the same in every copy.
    let o = unsafe { &*out };
    if o.magic != OUTPUT_MAGIC {
        return Err(status::INVALID);
    }
    Ok(o.ops)
}

/// Calls native function `f` with `inputs` and a fresh output: its result bytes, or its
/// failure (its message, else "`what` returned rc").
pub fn call(
    inputs: &[&[u8]],
    what: impl FnOnce() -> String,
    f: impl FnOnce(*const NativeBytes, usize, *mut NativeOutput) -> i32,
) -> Result<Vec<u8>, RawFailure> {
    let args: Vec<NativeBytes> = inputs.iter().map(|b| NativeBytes { data: b.as_ptr(), len: b.len() }).collect();
    let mut out = NativeOutput { magic: OUTPUT_MAGIC, ops: &OPS, result: Vec::new(), error: None };
    let rc = f(args.as_ptr(), args.len(), &mut out);
    out.magic = 0;
    if rc == 0 {
        Ok(out.result)
    } else {
        let message = out.error.unwrap_or_else(|| format!("{} returned {rc}", what()));
        Err(RawFailure { kind: FailureKind::Error, message, payload: None })
    }
}

/// The address of `symbol` in `library` for `library:symbol` (the library loaded by
/// `dlopen`, kept loaded for the process's life).
///
/// # Errors
/// No `:` in the name, a library that cannot be loaded, or a missing symbol: the message
/// says which ([`Missing`]).
fn symbol(name: &str) -> Result<*mut c_void, Missing> {
    let (lib, sym) = name.rsplit_once(':').ok_or_else(|| Missing(format!("{name:?} is not library:symbol")))?;
    let clib = CString::new(lib).map_err(|_| Missing("a library path with a NUL".to_string()))?;
    let csym = CString::new(sym).map_err(|_| Missing("a symbol with a NUL".to_string()))?;
    // SAFETY: a valid NUL-terminated path; dlopen has no other precondition. Loading runs the
    // library's constructors: the caller named the library to run code from it.
    let h = unsafe { libc::dlopen(clib.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        // SAFETY: dlerror takes nothing and returns NULL or a NUL-terminated string valid
        // until the next dl call on this thread.
        let why = unsafe { libc::dlerror() };
        let why = if why.is_null() {
            String::new()
        } else {
            // SAFETY: non-null, NUL-terminated, and no dl call happens before it is copied.
            unsafe { CStr::from_ptr(why) }.to_string_lossy().into_owned()
        };
        return Err(Missing(format!("cannot load {lib:?}: {why}")));
    }
    // SAFETY: a handle dlopen returned, and a valid NUL-terminated symbol name.
    let p = unsafe { libc::dlsym(h, csym.as_ptr()) };
    if p.is_null() {
        return Err(Missing(format!("{lib:?} has no symbol {sym:?}")));
    }
    Ok(p)
}

/// Why a `library:symbol` could not be had: its library or symbol is not there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing(pub String);

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Loads `library:symbol`, a function of the `rayhpc_task_fn` signature.
///
/// # Errors
/// No `:` in the name, a library that cannot be loaded, or a missing symbol: the message
/// says which.
pub fn load(name: &str) -> Result<NativeFn, String> {
    let p = symbol(name).map_err(|m| m.0)?;
    // SAFETY: the caller promises (by naming it) that the symbol is a function of the
    // `rayhpc_task_fn` signature; function and data pointers have the same size here.
    Ok(unsafe { std::mem::transmute::<*mut c_void, NativeFn>(p) })
}

/// Runs a loaded `library:symbol` function (no user data) on `inputs`.
pub fn run(f: NativeFn, name: &str, inputs: &[&[u8]]) -> Result<Vec<u8>, RawFailure> {
    call(
        inputs,
        || name.to_string(),
        // SAFETY: `args` holds `n` valid descriptors of bytes alive for the call, `out` a live
        // output; `f` has the task signature (the promise of whoever named it).
        |args, n, out| unsafe { f(args, n, out, std::ptr::null_mut()) },
    )
}

// ------------------------------------------------------------------------- actor classes

/// A class's constructor (`rayhpc_ctor_fn`): builds the state (`*state`) from the creation
/// arguments; 0 on success, anything else fails the creation (the actor is dead).
pub type CtorFn =
    unsafe extern "C" fn(args: *const NativeBytes, nargs: usize, state: *mut *mut c_void, out: *mut NativeOutput, user: *mut c_void) -> i32;

/// A method (`rayhpc_method_fn`): runs on the state, one call at a time per actor.
pub type MethodFn =
    unsafe extern "C" fn(state: *mut c_void, args: *const NativeBytes, nargs: usize, out: *mut NativeOutput, user: *mut c_void) -> i32;

/// A class's destructor (`rayhpc_dtor_fn`): frees the state when the actor ends.
pub type DtorFn = unsafe extern "C" fn(state: *mut c_void, user: *mut c_void);

/// One method of a class definition (`rayhpc_method`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MethodDef {
    /// Its name, NUL-terminated.
    pub name: *const c_char,
    /// The function (NULL is refused).
    pub call: Option<MethodFn>,
    /// Its number of arguments (-1: any).
    pub nargs: i32,
}

/// The first word of every class definition (`RAYHPC_CLASS_MAGIC`, "rayhpccl"): a symbol
/// that does not start with it is refused, not followed.
pub const CLASS_MAGIC: u64 = 0x7261_7968_7063_636c;

/// A native actor class as C defines it (`rayhpc_class_def`): what a `library:symbol` class
/// names, and what `rayhpc_register_class` is given piece by piece.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ClassDef {
    /// [`CLASS_MAGIC`].
    pub magic: u64,
    /// The class's name, NUL-terminated (shown in errors).
    pub name: *const c_char,
    /// The constructor (NULL is refused).
    pub ctor: Option<CtorFn>,
    /// The destructor (may be NULL).
    pub dtor: Option<DtorFn>,
    /// `nmethods` methods.
    pub methods: *const MethodDef,
    /// How many.
    pub nmethods: usize,
    /// Passed to every function of the class.
    pub user: *mut c_void,
}

/// Why a class could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassError {
    /// Its library or symbol is not there.
    Missing(String),
    /// A NULL where the definition needs a pointer.
    Null(String),
    /// Anything else malformed (not a class definition, text that is not UTF-8, a bad arity).
    Invalid(String),
}

impl std::fmt::Display for ClassError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClassError::Missing(m) | ClassError::Null(m) | ClassError::Invalid(m) => f.write_str(m),
        }
    }
}

/// The methods of a native class with their arities (-1: any): what a call is checked
/// against before it is made (by either carrier of the API) and again when it runs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The class's name.
    pub class: String,
    /// (name, arity) of each method.
    pub methods: Vec<(String, i32)>,
}

/// Why a call does not fit its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misfit {
    /// The class has no such method.
    NoMethod(String),
    /// The method takes another number of arguments.
    ArgCount(String),
}

impl Misfit {
    /// What it says.
    pub fn message(&self) -> &str {
        match self {
            Misfit::NoMethod(m) | Misfit::ArgCount(m) => m,
        }
    }
}

impl Signature {
    /// Whether a call of `method` with `nargs` arguments fits the class.
    ///
    /// # Errors
    /// No such method, or another number of arguments.
    pub fn check(&self, method: &str, nargs: usize) -> Result<(), Misfit> {
        fits(&self.class, method, self.methods.iter().find(|(m, _)| m == method).map(|(_, n)| *n), nargs)
    }
}

/// Whether a call fits a method of arity `want` (`None`: no such method).
fn fits(class: &str, method: &str, want: Option<i32>, nargs: usize) -> Result<(), Misfit> {
    match want {
        None => Err(Misfit::NoMethod(format!("{class} has no method {method:?}"))),
        Some(w) if w >= 0 && w as usize != nargs => Err(Misfit::ArgCount(format!("{class}.{method} takes {w} argument(s), {nargs} given"))),
        Some(_) => Ok(()),
    }
}

/// A class's functions, copied out of its definition.
struct Functions {
    name: String,
    ctor: CtorFn,
    dtor: Option<DtorFn>,
    methods: HashMap<String, (MethodFn, i32)>,
    user: *mut c_void,
}

// SAFETY: whoever defines a class promises that its functions and `user` may be used from any
// thread (one call at a time per actor state): the C API's documented contract.
unsafe impl Send for Functions {}
// SAFETY: as above; the fields are only read.
unsafe impl Sync for Functions {}

/// A native actor class: its functions, the core's raw class that runs them, and its
/// methods' signature.
pub struct NativeClass {
    functions: Arc<Functions>,
    raw: Arc<RawClass>,
    signature: Arc<Signature>,
}

impl std::fmt::Debug for NativeClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NativeClass({})", self.functions.name)
    }
}

/// The text at `p`, which the definition needs (`what` names it in errors).
///
/// # Safety
/// `p` is NULL or NUL-terminated.
unsafe fn def_text(p: *const c_char, what: &str) -> Result<String, ClassError> {
    if p.is_null() {
        return Err(ClassError::Null(format!("{what} is NULL")));
    }
    // SAFETY: non-null and NUL-terminated (the caller's contract).
    let s = unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| ClassError::Invalid(format!("{what} is not UTF-8")))?;
    Ok(s.to_string())
}

impl NativeClass {
    /// The class `def` defines (everything but `user` and the functions copied).
    ///
    /// # Safety
    /// `def`'s strings are NULL or NUL-terminated; `methods` is NULL or points to `nmethods`
    /// entries; the functions have the C API's signatures and, with `user`, may be used from
    /// any thread for as long as the process runs.
    ///
    /// # Errors
    /// A NULL name, constructor, methods array or method, a name that is not UTF-8, an arity
    /// below -1, or a magic word that is not [`CLASS_MAGIC`].
    pub unsafe fn from_def(def: &ClassDef) -> Result<NativeClass, ClassError> {
        if def.magic != CLASS_MAGIC {
            return Err(ClassError::Invalid(format!("not a rayhpc_class_def: its magic is {:#x}, not RAYHPC_CLASS_MAGIC", def.magic)));
        }
        // SAFETY: the caller's contract.
        let name = unsafe { def_text(def.name, "the class's name") }?;
        let Some(ctor) = def.ctor else { return Err(ClassError::Null(format!("{name}: the constructor is NULL"))) };
        if def.nmethods > 0 && def.methods.is_null() {
            return Err(ClassError::Null(format!("{name}: methods is NULL with {} method(s)", def.nmethods)));
        }
        let defs = if def.nmethods == 0 {
            &[][..]
        } else {
            // SAFETY: non-null and `nmethods` long (the caller's contract).
            unsafe { std::slice::from_raw_parts(def.methods, def.nmethods) }
        };
        let mut methods = HashMap::with_capacity(defs.len());
        let mut table = Vec::with_capacity(defs.len());
        for m in defs {
            // SAFETY: the caller's contract.
            let mname = unsafe { def_text(m.name, "a method name") }?;
            let Some(f) = m.call else { return Err(ClassError::Null(format!("{name}: method {mname} is NULL"))) };
            if m.nargs < -1 {
                return Err(ClassError::Invalid(format!("{name}: method {mname}: nargs {}, not a count or -1 for any", m.nargs)));
            }
            methods.insert(mname.clone(), (f, m.nargs));
            table.push((mname, m.nargs));
        }
        let functions = Arc::new(Functions { name: name.clone(), ctor, dtor: def.dtor, methods, user: def.user });
        let made = functions.clone();
        let raw = Arc::new(raw_actor(&name, move |inputs: &[&[u8]]| {
            NativeActor::construct(&made, inputs).map(|a| Box::new(a) as Box<dyn RawActor>)
        }));
        Ok(NativeClass { functions, raw, signature: Arc::new(Signature { class: name, methods: table }) })
    }

    /// The class's name.
    pub fn name(&self) -> &str {
        &self.functions.name
    }

    /// The core's raw class whose actors' states are [`NativeActor`]s of this class.
    pub fn raw(&self) -> &Arc<RawClass> {
        &self.raw
    }

    /// Its methods and their arities.
    pub fn signature(&self) -> &Arc<Signature> {
        &self.signature
    }
}

/// Runs `f`, a call into a native function and the handling of its output: a panic (of
/// this side: one unwinding out of a C function aborts before it gets here) fails the call.
fn guarded<T>(what: impl FnOnce() -> String, f: impl FnOnce() -> Result<T, RawFailure>) -> Result<T, RawFailure> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(RawFailure { kind: FailureKind::Error, message: format!("{} panicked (a bug of rayhpc)", what()), payload: None })
    })
}

/// The state of one native actor: what its constructor made, used by one call at a time
/// (the core runs an actor's calls in order, one after another) and freed by the class's
/// destructor when the core drops it (killed, or its last handle and call gone).
pub struct NativeActor {
    functions: Arc<Functions>,
    state: *mut c_void,
}

// SAFETY: the state is used by one call at a time, from whichever executor runs the actor's
// turn: the class's contract (its functions may be called from any thread).
unsafe impl Send for NativeActor {}

impl NativeActor {
    /// Runs the constructor on `inputs`: the state, or its failure (the constructor's own
    /// message, else "C's constructor returned rc"; `*state` is then not used: freeing what
    /// it made is the constructor's business).
    fn construct(functions: &Arc<Functions>, inputs: &[&[u8]]) -> Result<NativeActor, RawFailure> {
        let c = functions;
        let what = || format!("{}'s constructor", c.name);
        let mut state: *mut c_void = std::ptr::null_mut();
        guarded(what, || {
            call(
                inputs,
                what,
                // SAFETY: the class's constructor, with `n` descriptors of bytes alive for the
                // call, a state location and an output valid for it, and the class's `user`.
                |args, n, out| unsafe { (c.ctor)(args, n, &mut state, out, c.user) },
            )
        })?;
        Ok(NativeActor { functions: c.clone(), state })
    }
}

impl RawActor for NativeActor {
    fn call(&mut self, method: &str, inputs: &[&[u8]]) -> Result<RawOutput, RawFailure> {
        let c = &self.functions;
        let found = c.methods.get(method).copied();
        if let Err(m) = fits(&c.name, method, found.map(|(_, n)| n), inputs.len()) {
            return Err(RawFailure { kind: FailureKind::BadArguments, message: m.message().to_string(), payload: None });
        }
        let (f, _) = found.expect("checked by fits");
        // Named only when it fails: no allocation on a call's way.
        let (state, what) = (self.state, || format!("{}.{method}", c.name));
        guarded(what, || {
            call(
                inputs,
                what,
                // SAFETY: the state this actor's constructor made, used by this call alone;
                // `n` descriptors of bytes alive for the call; an output valid for it.
                |args, n, out| unsafe { f(state, args, n, out, c.user) },
            )
        })
        .map(RawOutput::Bytes)
    }
}

impl Drop for NativeActor {
    fn drop(&mut self) {
        if let Some(d) = self.functions.dtor {
            let (state, user) = (self.state, self.functions.user);
            // SAFETY: the state the constructor made, freed once, after its last call.
            let _ = catch_unwind(AssertUnwindSafe(|| unsafe { d(state, user) }));
        }
    }
}

/// The class `library:symbol` names (a `rayhpc_class_def`), loaded once per process: the
/// library stays loaded, and every actor of the class shares its functions.
///
/// # Errors
/// The library or symbol is missing ([`ClassError::Missing`]), or the symbol is not a class
/// definition or a malformed one.
pub fn load_class(name: &str) -> Result<Arc<NativeClass>, ClassError> {
    static LOADED: OnceLock<Mutex<HashMap<String, Arc<NativeClass>>>> = OnceLock::new();
    let loaded = LOADED.get_or_init(Mutex::default);
    if let Some(c) = loaded.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
        return Ok(c.clone());
    }
    // Loaded without the lock held: loading runs the library's constructors, which may call
    // the API.
    let p = symbol(name).map_err(|m| ClassError::Missing(format!("no actor class {name:?}: {m}")))?;
    // SAFETY: a symbol's address is readable for at least a word in practice (code or data
    // of a mapped library); only the first word is read until it is known to be a class.
    let magic = unsafe { p.cast::<u64>().read_unaligned() };
    if magic != CLASS_MAGIC || !p.cast::<ClassDef>().is_aligned() {
        return Err(ClassError::Invalid(format!("{name:?} is not a rayhpc_class_def (it does not start with RAYHPC_CLASS_MAGIC)")));
    }
    // SAFETY: an aligned class definition (its magic says so) in a library loaded for the
    // process's life; its contract is the C API's (whoever defined it promises it).
    let class = unsafe { NativeClass::from_def(&*p.cast::<ClassDef>()) }?;
    let mut loaded = loaded.lock().unwrap_or_else(|e| e.into_inner());
    Ok(loaded.entry(name.to_string()).or_insert_with(|| Arc::new(class)).clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayhpc::raw::RawArg;
    use rayhpc::{Config, Options, Runtime};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    static DROPPED: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn new(_: *const NativeBytes, nargs: usize, state: *mut *mut c_void, out: *mut NativeOutput, _: *mut c_void) -> i32 {
        if nargs > 0 {
            // SAFETY: the live output of this call.
            let ops = unsafe { ops_of(out) }.unwrap();
            // SAFETY: as above, and a NUL-terminated message.
            unsafe { (ops.error)(out, c"no arguments, please".as_ptr()) };
            return 3;
        }
        // SAFETY: the state location of this call.
        unsafe { state.write(Box::into_raw(Box::new(0i64)).cast()) };
        0
    }

    unsafe extern "C" fn add(state: *mut c_void, args: *const NativeBytes, _: usize, out: *mut NativeOutput, _: *mut c_void) -> i32 {
        // SAFETY: one argument (the class's arity, checked before the call) of 8 bytes (this
        // test's calls), and this actor's state.
        let (by, total) = unsafe { ((*args).data.cast::<i64>().read_unaligned(), &mut *state.cast::<i64>()) };
        *total += by;
        // SAFETY: the live output of this call, 8 readable bytes.
        unsafe { (ops_of(out).unwrap().set)(out, std::ptr::from_ref(total).cast(), 8) }
    }

    unsafe extern "C" fn free(state: *mut c_void, _: *mut c_void) {
        // SAFETY: the state `new` made, freed once.
        drop(unsafe { Box::from_raw(state.cast::<i64>()) });
        DROPPED.fetch_add(1, Ordering::SeqCst);
    }

    fn def(methods: &[MethodDef]) -> ClassDef {
        ClassDef {
            magic: CLASS_MAGIC,
            name: c"Total".as_ptr(),
            ctor: Some(new),
            dtor: Some(free),
            methods: methods.as_ptr(),
            nmethods: methods.len(),
            user: std::ptr::null_mut(),
        }
    }

    #[test]
    fn malformed_class_definitions_are_refused_with_what_is_wrong() {
        let good = [MethodDef { name: c"add".as_ptr(), call: Some(add), nargs: 1 }];
        let err = |d: ClassDef| {
            // SAFETY: the definitions' pointers are valid or NULL.
            unsafe { NativeClass::from_def(&d) }.unwrap_err()
        };
        assert!(matches!(err(ClassDef { magic: 7, ..def(&good) }), ClassError::Invalid(m) if m.contains("magic")));
        assert!(matches!(err(ClassDef { ctor: None, ..def(&good) }), ClassError::Null(m) if m.contains("constructor")));
        assert!(matches!(err(ClassDef { name: std::ptr::null(), ..def(&good) }), ClassError::Null(m) if m.contains("name")));
        assert!(matches!(err(ClassDef { methods: std::ptr::null(), ..def(&good) }), ClassError::Null(m) if m.contains("methods")));
        let null_method = [MethodDef { name: c"add".as_ptr(), call: None, nargs: 1 }];
        assert!(matches!(err(def(&null_method)), ClassError::Null(m) if m.contains("method add")));
        let bad_arity = [MethodDef { name: c"add".as_ptr(), call: Some(add), nargs: -2 }];
        assert!(matches!(err(def(&bad_arity)), ClassError::Invalid(m) if m.contains("nargs -2")));
        assert!(matches!(load_class("libc.so.6:no_such_class_here"), Err(ClassError::Missing(m)) if m.contains("no symbol")));
        assert!(matches!(load_class("libc.so.6:malloc"), Err(ClassError::Invalid(m)) if m.contains("not a rayhpc_class_def")));
    }

    #[test]
    fn a_native_actor_runs_its_methods_checks_them_and_is_destroyed_by_the_core() {
        let methods = [MethodDef { name: c"add".as_ptr(), call: Some(add), nargs: 1 }];
        // SAFETY: a valid definition of this test's functions.
        let class = unsafe { NativeClass::from_def(&def(&methods)) }.unwrap();
        assert_eq!(class.signature().check("add", 1), Ok(()));
        assert!(matches!(class.signature().check("add", 0), Err(Misfit::ArgCount(m)) if m == "Total.add takes 1 argument(s), 0 given"));
        assert!(matches!(class.signature().check("sub", 1), Err(Misfit::NoMethod(m)) if m.contains("Total has no method \"sub\"")));

        let rt = Runtime::init(Config { executors: Some(2), ..Config::default() }).unwrap();
        let h = class.raw().remote(&rt, vec![], &Options::new()).unwrap();
        let add5 = || vec![RawArg::Bytes(5i64.to_le_bytes().to_vec())];
        let a = class.raw().call(&h, "add", add5()).unwrap();
        let b = class.raw().call(&h, "add", add5()).unwrap();
        assert_eq!(&*rt.get_bytes(&a).unwrap(), &5i64.to_le_bytes());
        assert_eq!(&*rt.get_bytes(&b).unwrap(), &10i64.to_le_bytes());
        // Calls that do not fit fail (the state is not touched), and the actor goes on.
        let e = rt.get_bytes(&class.raw().call(&h, "sub", add5()).unwrap()).unwrap_err().to_string();
        assert!(e.contains("Total has no method"), "{e}");
        let e = rt.get_bytes(&class.raw().call(&h, "add", vec![]).unwrap()).unwrap_err().to_string();
        assert!(e.contains("takes 1 argument(s), 0 given"), "{e}");
        let c = class.raw().call(&h, "add", add5()).unwrap();
        assert_eq!(&*rt.get_bytes(&c).unwrap(), &15i64.to_le_bytes());

        // A constructor that fails kills its actor with its message.
        let dead = class.raw().remote(&rt, vec![RawArg::Bytes(vec![1])], &Options::new()).unwrap();
        let e = rt.get_bytes(&class.raw().call(&dead, "add", add5()).unwrap()).unwrap_err().to_string();
        assert!(e.contains("no arguments, please"), "{e}");

        // The last handle gone, the core drops the state: the destructor runs, once.
        let before = DROPPED.load(Ordering::SeqCst);
        drop((h, dead));
        let deadline = Instant::now() + Duration::from_secs(10);
        while DROPPED.load(Ordering::SeqCst) == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(DROPPED.load(Ordering::SeqCst), before + 1);
        rt.shutdown();
    }
}
