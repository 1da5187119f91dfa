//! Actors: classes registered in this process (`rayhpc_register_class`: the node API's
//! `Class::Registered`, run in this process only) or named `library:symbol` (a
//! `rayhpc_class_def` the runtime that runs the actor loads: `Class::Native`), created,
//! called, killed and released through the API.

use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::sync::{Arc, RwLock};

use rayhpc_node::api::{ActorRef, Class};
use rayhpc_node::native::{self, ClassError, NativeClass};

use crate::args::{api_args, arg_slice, call_options, rayhpc_arg, rayhpc_bytes, rayhpc_options, text};
use crate::handles::{actors, api, insert, rayhpc_actor, rayhpc_ref, refs};
use crate::output::rayhpc_output;
use crate::status::{fail, failed, guard, make_into, rayhpc_status, rayhpc_status::*, run};

/// An actor's constructor: builds the state (`*state`) from the creation arguments. Returns
/// 0 on success; anything else kills the actor (its message set with `rayhpc_output_error`;
/// `*state` is then not used: the constructor frees what it made).
pub type rayhpc_ctor_fn = Option<
    unsafe extern "C" fn(
        args: *const rayhpc_bytes,
        nargs: usize,
        state: *mut *mut c_void,
        out: *mut rayhpc_output,
        user: *mut c_void,
    ) -> i32,
>;

/// An actor method: runs on the state, one call at a time per actor, in submission order
/// (possibly on different threads over time). As a task function otherwise.
pub type rayhpc_method_fn = Option<
    unsafe extern "C" fn(state: *mut c_void, args: *const rayhpc_bytes, nargs: usize, out: *mut rayhpc_output, user: *mut c_void) -> i32,
>;

/// Frees an actor's state when the actor ends (killed, or its last handle released), after
/// its last call.
pub type rayhpc_dtor_fn = Option<unsafe extern "C" fn(state: *mut c_void, user: *mut c_void)>;

/// One method of an actor class.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rayhpc_method {
    /// Its name (copied at registration).
    pub name: *const c_char,
    /// The function.
    pub call: rayhpc_method_fn,
    /// Its number of arguments (-1: any).
    pub nargs: i32,
}

/// The first field of every `rayhpc_class_def` ("rayhpccl"): a symbol that does not start
/// with it is refused as a class.
pub const RAYHPC_CLASS_MAGIC: u64 = 0x726179687063636c;

/// An actor class defined as data, for a runtime to load as `library:symbol` (the symbol
/// names a `rayhpc_class_def`), as it loads task functions: what a program attached to
/// `rayhpc launch` creates its actors from, e.g.
/// `rayhpc_actor_create("/path/libcounter.so:counter_class", ...)` (the node loads the
/// library; embedded, this process does). The functions and `user` must be usable from any
/// thread for as long as the process runs. For example:
///
/// ```c
/// static const rayhpc_method methods[] = {{"add", counter_add, 1}, {"get", counter_get, 0}};
/// const rayhpc_class_def counter_class = {RAYHPC_CLASS_MAGIC, "Counter", counter_new,
///                                         counter_free, methods, 2, NULL};
/// ```
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rayhpc_class_def {
    /// `RAYHPC_CLASS_MAGIC`.
    pub magic: u64,
    /// The class's name (shown in errors).
    pub name: *const c_char,
    /// The constructor (not NULL).
    pub ctor: rayhpc_ctor_fn,
    /// The destructor (may be NULL).
    pub dtor: rayhpc_dtor_fn,
    /// `nmethods` methods.
    pub methods: *const rayhpc_method,
    /// How many.
    pub nmethods: usize,
    /// Passed to every function of the class.
    pub user: *mut c_void,
}

// The C API's class definition is the node's (`rayhpc_node::native`), with the C API's names
// for the same `repr(C)` types (function pointers of the same ABI).
const _: () = assert!(
    RAYHPC_CLASS_MAGIC == native::CLASS_MAGIC
        && std::mem::size_of::<rayhpc_class_def>() == std::mem::size_of::<native::ClassDef>()
        && std::mem::align_of::<rayhpc_class_def>() == std::mem::align_of::<native::ClassDef>()
        && std::mem::size_of::<rayhpc_method>() == std::mem::size_of::<native::MethodDef>()
        && std::mem::align_of::<rayhpc_method>() == std::mem::align_of::<native::MethodDef>()
);

/// Classes registered in this process, by name (for the process's life: their actors may
/// outlive a runtime).
static CLASSES: RwLock<Option<HashMap<String, Arc<NativeClass>>>> = RwLock::new(None);

/// Registers actor class `name`: its constructor, destructor (may be NULL) and `nmethods`
/// methods. `user` is passed to all of them; they must be usable from any thread. The
/// class is for this process's embedded runtime: attached to a node runtime, actors are of
/// `library:symbol` classes (`rayhpc_class_def`), which the node loads.
///
/// # Safety
/// `name` and every method name are NUL-terminated; `methods` points to `nmethods` entries.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_register_class(
    name: *const c_char,
    ctor: rayhpc_ctor_fn,
    dtor: rayhpc_dtor_fn,
    methods: *const rayhpc_method,
    nmethods: usize,
    user: *mut c_void,
) -> rayhpc_status {
    run(|| {
        // SAFETY: the caller's contract.
        let name_text = unsafe { text(name, "name") }?;
        let def = rayhpc_class_def { magic: RAYHPC_CLASS_MAGIC, name, ctor, dtor, methods, nmethods, user };
        // SAFETY: the same layout (asserted above); the caller's contract for its pointers.
        let class = unsafe { NativeClass::from_def(&*std::ptr::from_ref(&def).cast::<native::ClassDef>()) }.map_err(|e| {
            let status = match e {
                ClassError::Null(_) => RAYHPC_E_NULL,
                _ => RAYHPC_E_INVALID,
            };
            fail(status, e.to_string())
        })?;
        CLASSES.write().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).insert(name_text.to_string(), Arc::new(class));
        Ok(())
    })
}

/// The class `name`: one registered in this process, else a `library:symbol` class.
fn class(name: &str) -> Result<Class, rayhpc_status> {
    if let Some(c) = CLASSES.read().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|m| m.get(name)) {
        return Ok(Class::Registered(c.clone()));
    }
    if !name.contains(':') {
        return Err(fail(RAYHPC_E_UNKNOWN_FUNCTION, format!("no actor class registered as {name:?} (nor library:symbol)")));
    }
    Ok(Class::Native(name.to_string()))
}

/// The arguments of an actor's creation or call.
///
/// # Safety
/// `args` points to `nargs` valid entries (or `nargs` is 0), whose bytes are readable.
unsafe fn actor_args(args: *const rayhpc_arg, nargs: usize) -> Result<Vec<rayhpc_node::api::Arg>, rayhpc_status> {
    // SAFETY: the caller's contract.
    let args = unsafe { arg_slice(args, nargs) }?;
    let refs = refs();
    // SAFETY: as above.
    unsafe { api_args(args, &refs.table) }
}

/// The actor of handle `actor`.
fn actor_of(actor: rayhpc_actor) -> Result<ActorRef, rayhpc_status> {
    let a = actors().get(actor).cloned();
    a.ok_or_else(|| fail(RAYHPC_E_BAD_HANDLE, format!("actor {actor:#x} is released or was never made")))
}

/// Creates an actor of class `class_name`: a class registered in this process
/// (`rayhpc_register_class`; embedded only), or `library:symbol` naming a
/// `rayhpc_class_def` (loaded by the node runtime when attached, else in this process). Its
/// constructor runs once the argument refs are ready. `options` may be NULL; its resources
/// are held for the actor's life.
///
/// # Safety
/// `class_name` is NUL-terminated; `args` has `nargs` entries; `options` is NULL or valid;
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_actor_create(
    class_name: *const c_char,
    args: *const rayhpc_arg,
    nargs: usize,
    options: *const rayhpc_options,
    out: *mut rayhpc_actor,
) -> rayhpc_status {
    let make = || {
        // SAFETY: the caller's contract.
        let name = unsafe { text(class_name, "class_name") }?;
        let api = api()?;
        let class = class(name)?;
        // SAFETY: the caller's contract, passed on.
        let (args, options) = unsafe { (actor_args(args, nargs)?, call_options(options)?) };
        let a = api.create_actor(&class, args, &options).map_err(failed)?;
        Ok(actors().insert(a))
    };
    // SAFETY: the caller's contract for `out`.
    unsafe { make_into(out, make) }
}

/// Calls `method` on the actor; `*out` is the handle of its result. Calls to one actor run
/// one at a time, in the order they were made. A method the class does not have, or a
/// wrong number of arguments, is refused at once.
///
/// # Safety
/// `method` is NUL-terminated; `args` has `nargs` entries; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_actor_call(
    actor: rayhpc_actor,
    method: *const c_char,
    args: *const rayhpc_arg,
    nargs: usize,
    out: *mut rayhpc_ref,
) -> rayhpc_status {
    let make = || {
        // SAFETY: the caller's contract.
        let method = unsafe { text(method, "method") }?;
        let api = api()?;
        let a = actor_of(actor)?;
        // SAFETY: the caller's contract, passed on.
        let args = unsafe { actor_args(args, nargs) }?;
        let r = api.call_actor(&a, method, args).map_err(failed)?;
        insert(&api, r)
    };
    // SAFETY: the caller's contract for `out`.
    unsafe { make_into(out, make) }
}

/// Kills the actor: calls not run yet (and later ones) fail with `RAYHPC_E_ACTOR_DIED`; a
/// call running now finishes; the destructor runs after it. The handle stays valid (release
/// it still).
#[no_mangle]
pub extern "C" fn rayhpc_actor_kill(actor: rayhpc_actor) -> rayhpc_status {
    run(|| api()?.kill(&actor_of(actor)?, true).map_err(failed))
}

/// Releases an actor handle; the actor ends (destructor run) once no handle and no queued
/// call needs it.
#[no_mangle]
pub extern "C" fn rayhpc_actor_release(actor: rayhpc_actor) -> rayhpc_status {
    // The entry is dropped after the lock: the actor's destructor (user code, which may call
    // this API) can run right then.
    guard(|| {
        let e = actors().remove(actor); // the guard is gone at the end of this statement
        match e {
            Some(e) => {
                drop(e);
                RAYHPC_OK
            }
            None => fail(RAYHPC_E_BAD_HANDLE, format!("actor {actor:#x} is released or was never made")),
        }
    })
}
