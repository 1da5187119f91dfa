//! The messages between the node runtime and a Python worker process, carried by a ring
//! channel (`rayhpc::objstore::ring`). Little-endian, 8-byte headers:
//!
//! | message | layout |
//! |---|---|
//! | define (runtime → worker) | `[1, 0 × 7][key: 16][pickled function or class]` |
//! | call (runtime → worker) | `[2, 0 × 3][n: u32][key: 16][len: u32 × n][argument bytes …]` |
//! | new (runtime → actor worker) | as call, op 3: construct the actor of class `key` |
//! | method (runtime → actor worker) | as call, op 4, key zero: the first argument is the method's name |
//! | reply (runtime → worker) | `[5, 0 × 7][postcard Reply]`: the answer to the worker's request |
//! | ok (worker → runtime) | `[1, 0 × 7][result bytes]` |
//! | error (worker → runtime) | `[2, 0 × 3][m: u32][message: m bytes, UTF-8][payload]` |
//! | request (worker → runtime) | `[3, 0 × 7][postcard Envelope]`: a nested call of the API |
//! | release (worker → runtime) | `[4, 0 × 7][postcard Release]`: handles the worker dropped (no reply) |
//! | post (worker → runtime) | `[5, 0 × 7][postcard Envelope]`: a call whose result the peer named itself (no reply) |
//!
//! The first argument of a call (after a method's name) is the call's layout (how the rest
//! map onto positional and keyword parameters, pickled by the driver; empty for
//! positional-only calls); every other argument is one pickled value. While a call runs, the
//! worker may send requests (a task submitting tasks, calling actors, `get`…); each gets one
//! reply before the call's own answer. Parsing checks every length: a malformed message is
//! an error, never a read past its end.
//!
//! The table above is the documentation of the ops and fields below, which mirror it one
//! for one; they are not documented item by item.
#![allow(missing_docs)]

use serde::{Deserialize, Serialize};

pub const DEFINE: u8 = 1;
pub const CALL: u8 = 2;
pub const NEW: u8 = 3;
pub const METHOD: u8 = 4;
pub const REPLY: u8 = 5;
pub const OK: u8 = 1;
pub const ERR: u8 = 2;
pub const REQUEST: u8 = 3;
pub const RELEASE: u8 = 4;
pub const POST: u8 = 5;

/// A message as the worker reads it.
pub enum Request<'a> {
    Define {
        key: Key,
        blob: &'a [u8],
    },
    /// A call (op CALL), an actor's construction (NEW) or an actor method (METHOD).
    Call {
        op: u8,
        key: Key,
        args: Vec<&'a [u8]>,
    },
    Reply(&'a [u8]),
}

/// A message as the runtime reads it.
pub enum Response<'a> {
    Ok(&'a [u8]),
    Err { message: &'a str, payload: &'a [u8], flags: u8 },
    Request(&'a [u8]),
    Release(&'a [u8]),
    Post(&'a [u8]),
}

use crate::api::{Failure, NodeInfo, ResourceInfo};
pub use crate::api::{Key, WireOptions};
use rayhpc::ids::{ActorId, ObjectId};

/// One argument of a call: a value's bytes, or an object the peer holds a ref to.
#[derive(Serialize, Deserialize, Debug)]
pub enum WireArg {
    Value(Vec<u8>),
    Ref(ObjectId),
}

/// The function of a submitted task.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum WireFunc {
    /// A Python function by key: the call's arguments are the layout then the values.
    Python(Key),
    /// A native C function `library:symbol` (loaded by the node on first use), with the
    /// arguments' bytes as they are (no layout).
    Native(String),
}

/// The class of an actor to create.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum WireClass {
    /// A Python class by key (defined at the node with its class name).
    Python(Key),
    /// A native C class `library:symbol` (a `rayhpc_class_def`, loaded by the node).
    Native(String),
}

/// A call of the API ([`crate::api::Api`]) from a peer of a ring. The table of every kind
/// is the enum itself: each variant is answered by exactly one arm of the server.
#[derive(Serialize, Deserialize, Debug)]
pub enum Call {
    /// Registers a pickled function or class under its key; a class has its name.
    Define {
        key: Key,
        blob: Vec<u8>,
        class_name: Option<String>,
    },
    /// Submits a task; its result is object `id` (made by the peer, see [`IdGen`]). Reply
    /// (as a request; none as a post): `Ref`.
    Submit {
        id: ObjectId,
        func: WireFunc,
        options: Opts,
        args: Vec<WireArg>,
    },
    /// Creates an actor of `class`. Reply: `Actor`.
    CreateActor {
        class: WireClass,
        options: WireOptions,
        args: Vec<WireArg>,
    },
    /// Calls a method of an actor; its result is object `id`. Reply (as a request): `Ref`.
    Method {
        id: ObjectId,
        actor: ActorId,
        method: String,
        args: Vec<WireArg>,
    },
    /// Stores a value. Reply: `Ref`.
    Put {
        bytes: Vec<u8>,
    },
    /// Reads objects. Reply: `Values` (stored objects as key markers, read in place).
    Get {
        ids: Vec<ObjectId>,
        timeout: Option<f64>,
    },
    /// Waits for objects. Reply: `Ready`.
    Wait {
        ids: Vec<ObjectId>,
        num_returns: usize,
        timeout: Option<f64>,
    },
    Kill {
        actor: ActorId,
        no_restart: bool,
    },
    /// Reply: `Actor`.
    GetActor {
        name: String,
    },
    /// Keeps object `id` alive while a ref to it travels inside a value.
    Escape {
        id: ObjectId,
    },
    /// The ref of object `id`, which travelled inside a value. Reply: `Ref`.
    RefFromId {
        id: ObjectId,
        from_actor: bool,
    },
    /// Keeps an actor alive while a handle to it travels in a value.
    EscapeActor {
        actor: ActorId,
    },
    /// A handle of actor `actor` (class `key`), which travelled inside a value. Reply: `Actor`.
    ActorFromId {
        actor: ActorId,
        key: Key,
    },
    /// Cancels the task whose result is `id`.
    Cancel {
        id: ObjectId,
        force: bool,
    },
    /// Splits the result of `id` (a call with several returns) into `n` objects. Reply: `Refs`.
    Items {
        id: ObjectId,
        n: u32,
    },
    /// The node takes a reference to `key`, which the peer sealed into the store: as a new
    /// object (`as_ref`, a put: the reply is its ref), or as the result of the running call
    /// (the reply is `Done`; the call's answer then names the key).
    Adopt {
        key: u128,
        as_ref: bool,
    },
    /// Reply: `Resources`.
    Resources,
    /// The nodes of the cluster (`ray.nodes()`). Reply: `Nodes`.
    Nodes,
    /// An operation on the cluster's KV store. Reply: `Kv`.
    Kv(crate::kv::KvOp),
    /// Another link of an attached driver (the first request on it): from now on its calls
    /// share the handles of the driver's first link, the one the node gave worker number
    /// `worker` (of the same process). Reply: `Done`.
    Join {
        worker: u32,
    },
    /// Answered once the link's earlier messages are served (the node serves a link in
    /// order): how a client knows that its posts were. Reply: `Done`.
    Sync,
    /// What the call the asking worker runs is. Reply: `Context`.
    Context,
    /// The names of the live named actors. Reply: `Names`.
    ActorNames,
}

/// A call's options: sent whole the first time, then named by their number (the node keeps
/// each peer's, so a stream of calls does not resend or rebuild them).
#[derive(Serialize, Deserialize, Debug)]
pub enum Opts {
    New(u64, WireOptions),
    Known(u64),
}

/// How a peer makes the ids of its calls' results itself (so that a call need not wait for
/// its reply): task ids `node | worker | seq` with the node's number and a worker number the
/// node gave this peer alone, and a sequence of the peer's own.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdGen {
    pub node: u32,
    pub worker: u32,
}

impl IdGen {
    /// The worker numbers the node hands to peers (the core's own threads count up from 1).
    pub const FIRST_PEER: u32 = 0x8000_0000;

    /// `node:worker`, as the `RAYHPC_IDS` variable of a worker process carries it.
    pub fn to_env(self) -> String {
        format!("{}:{}", self.node, self.worker)
    }

    /// The inverse of [`IdGen::to_env`].
    pub fn from_env(s: &str) -> Option<IdGen> {
        let (n, w) = s.split_once(':')?;
        Some(IdGen { node: n.parse().ok()?, worker: w.parse().ok()? })
    }
}

/// What a peer let go of since it last said.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct Release {
    pub objects: Vec<ObjectId>,
    pub actors: Vec<ActorId>,
}

impl Release {
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.actors.is_empty()
    }
}

/// A request: the call, and what the peer let go of since its last request.
#[derive(Serialize, Deserialize, Debug)]
pub struct Envelope {
    pub release: Release,
    pub call: Call,
}

/// The answer to a request.
#[derive(Serialize, Deserialize, Debug)]
pub enum Reply {
    Done,
    Ref(ObjectId),
    Refs(Vec<ObjectId>),
    /// An actor: id, class key, and a native class's methods.
    Actor(ActorId, Key, Option<crate::native::Signature>),
    Values(Vec<Result<Vec<u8>, Failure>>),
    Ready(Vec<u32>),
    Resources(Vec<ResourceInfo>),
    Nodes(Vec<NodeInfo>),
    Kv(crate::kv::KvAnswer),
    Context(crate::api::CallContext),
    Names(Vec<String>),
    /// The request failed as a whole.
    Failed(Failure),
}

/// A driver's hello to a node runtime (then its pid, u32), and the node's answer (with the
/// channel's descriptor; then the driver's [`IdGen`]: node, worker, u32 each).
pub const DRIVER_MAGIC: &[u8; 8] = b"RHPCDRV\x03";
pub const NODE_MAGIC: &[u8; 8] = b"RHPCNOD\x03";

/// A value that lives in the node's store, named in place of its bytes: the magic, the key
/// and the length, little-endian. (Pickled values start with 0x80: never with the magic.)
pub const KEY_MAGIC: &[u8; 8] = b"RHPCKEY\x01";

pub fn key_marker(key: u128, len: u64) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[..8].copy_from_slice(KEY_MAGIC);
    m[8..24].copy_from_slice(&key.to_le_bytes());
    m[24..].copy_from_slice(&len.to_le_bytes());
    m
}

pub fn parse_key_marker(b: &[u8]) -> Option<(u128, u64)> {
    if b.len() != 32 || &b[..8] != KEY_MAGIC {
        return None;
    }
    Some((u128::from_le_bytes(b[8..24].try_into().ok()?), u64::from_le_bytes(b[24..].try_into().ok()?)))
}

/// The result of a call with several returns: the magic, n: u64, n lengths: u64, then the
/// items' pickles one after the other (written by `_serial.dumps_items`).
pub const ITEMS_MAGIC: &[u8; 8] = b"RHPCITM\x01";

/// Item `i` of an items container.
pub fn item_of(b: &[u8], i: usize) -> Result<&[u8], String> {
    let bad = || "not a result of several items".to_string();
    if b.get(..8) != Some(&ITEMS_MAGIC[..]) {
        return Err(bad());
    }
    let word = |k: usize| -> Result<usize, String> {
        let at = 8 + 8 * k;
        b.get(at..at + 8).map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")) as usize).ok_or_else(bad)
    };
    let n = word(0)?;
    if i >= n {
        return Err(format!("item {i} of a result of {n}"));
    }
    let mut at = 16usize.checked_add(n.checked_mul(8).ok_or_else(bad)?).ok_or_else(bad)?;
    for k in 0..i {
        at = at.checked_add(word(k + 1)?).ok_or_else(bad)?;
    }
    let len = word(i + 1)?;
    at.checked_add(len).and_then(|end| b.get(at..end)).ok_or_else(|| format!("item {i} runs past the result"))
}

pub fn request_header() -> [u8; 8] {
    [REQUEST, 0, 0, 0, 0, 0, 0, 0]
}

pub fn post_header() -> [u8; 8] {
    [POST, 0, 0, 0, 0, 0, 0, 0]
}

pub fn release_header() -> [u8; 8] {
    [RELEASE, 0, 0, 0, 0, 0, 0, 0]
}

pub fn reply_header() -> [u8; 8] {
    [REPLY, 0, 0, 0, 0, 0, 0, 0]
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("wire types always encode")
}

pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("malformed message: {e}"))
}

pub fn define_header(key: &Key) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0] = DEFINE;
    h[8..].copy_from_slice(key);
    h
}

/// The header of a call with `args` (the layout first): op, count, key and lengths.
pub fn call_header(key: &[u8], args: &[&[u8]]) -> Result<Vec<u8>, String> {
    op_header(CALL, key, args)
}

/// The header of a call-shaped message (CALL, NEW, METHOD).
pub fn op_header(op: u8, key: &[u8], args: &[&[u8]]) -> Result<Vec<u8>, String> {
    let key: &Key = key.try_into().map_err(|_| format!("function key of {} bytes, not 16", key.len()))?;
    let n = u32::try_from(args.len()).map_err(|_| "too many arguments".to_string())?;
    let mut h = Vec::with_capacity(24 + 4 * args.len());
    h.extend_from_slice(&[op, 0, 0, 0]);
    h.extend_from_slice(&n.to_le_bytes());
    h.extend_from_slice(key);
    for a in args {
        let len = u32::try_from(a.len()).map_err(|_| format!("argument of {} bytes is over 4 GiB", a.len()))?;
        h.extend_from_slice(&len.to_le_bytes());
    }
    Ok(h)
}

/// An answer's flag (byte 1, of an OK or an error answer): the worker has run its function
/// `max_calls` times and is to be retired, not reused.
pub const RETIRE: u8 = 4;

/// An OK answer's header with `flags` ([`RETIRE`], or 0).
pub fn ok_header(flags: u8) -> [u8; 8] {
    [OK, flags, 0, 0, 0, 0, 0, 0]
}

/// Whether an answer (OK or error) asks for its worker to be retired.
pub fn asks_retire(m: &[u8]) -> bool {
    matches!(m.first(), Some(&OK) | Some(&ERR)) && m.get(1).is_some_and(|f| f & RETIRE != 0)
}

/// An error answer's flag (byte 1): the error must not be retried, whatever
/// `retry_exceptions` allows.
pub const ERR_FINAL: u8 = 1;
/// An error answer's flag: the actor asked to exit (`exit_actor()`): it is dead, not lost.
pub const ERR_EXIT: u8 = 2;

/// The header of an error answer with `flags` ([`ERR_FINAL`], [`ERR_EXIT`]).
pub fn err_header(message: &str, flags: u8) -> [u8; 8] {
    let mut h = [ERR, flags, 0, 0, 0, 0, 0, 0];
    h[4..].copy_from_slice(&(message.len().min(u32::MAX as usize) as u32).to_le_bytes());
    h
}

fn u32_at(m: &[u8], at: usize) -> Result<usize, String> {
    m.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize).ok_or_else(|| "message cut short".to_string())
}

fn key_at(m: &[u8], at: usize) -> Result<Key, String> {
    m.get(at..at + 16).map(|b| b.try_into().expect("16 bytes")).ok_or_else(|| "message cut short".to_string())
}

pub fn parse_request(m: &[u8]) -> Result<Request<'_>, String> {
    match m.first() {
        Some(&DEFINE) => Ok(Request::Define { key: key_at(m, 8)?, blob: m.get(24..).ok_or("message cut short")? }),
        Some(&REPLY) => Ok(Request::Reply(m.get(8..).ok_or("message cut short")?)),
        Some(&op @ (CALL | NEW | METHOD)) => {
            let n = u32_at(m, 4)?;
            let key = key_at(m, 8)?;
            let mut at = 24usize.checked_add(n.checked_mul(4).ok_or("argument count overflows")?).ok_or("argument count overflows")?;
            if at > m.len() {
                return Err(format!("call of {n} arguments cut short"));
            }
            let mut args = Vec::with_capacity(n);
            for i in 0..n {
                let len = u32_at(m, 24 + 4 * i)?;
                let end = at.checked_add(len).filter(|&e| e <= m.len()).ok_or_else(|| format!("argument {i} runs past the message"))?;
                args.push(&m[at..end]);
                at = end;
            }
            Ok(Request::Call { op, key, args })
        }
        other => Err(format!("unknown request {other:?}")),
    }
}

pub fn parse_response(m: &[u8]) -> Result<Response<'_>, String> {
    match m.first() {
        Some(&OK) => Ok(Response::Ok(m.get(8..).ok_or("response cut short")?)),
        Some(&ERR) => {
            let len = u32_at(m, 4)?;
            let end = 8usize.checked_add(len).filter(|&e| e <= m.len()).ok_or("error message runs past the response")?;
            let message = std::str::from_utf8(&m[8..end]).map_err(|_| "error message is not UTF-8".to_string())?;
            Ok(Response::Err { message, payload: &m[end..], flags: m[1] })
        }
        Some(&REQUEST) => Ok(Response::Request(m.get(8..).ok_or("request cut short")?)),
        Some(&RELEASE) => Ok(Response::Release(m.get(8..).ok_or("release cut short")?)),
        Some(&POST) => Ok(Response::Post(m.get(8..).ok_or("post cut short")?)),
        other => Err(format!("unknown response {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(parts: &[&[u8]]) -> Vec<u8> {
        let mut b = ITEMS_MAGIC.to_vec();
        b.extend_from_slice(&(parts.len() as u64).to_le_bytes());
        for p in parts {
            b.extend_from_slice(&(p.len() as u64).to_le_bytes());
        }
        for p in parts {
            b.extend_from_slice(p);
        }
        b
    }

    #[test]
    fn items_are_found_and_a_malformed_container_is_an_error() {
        let b = items(&[b"a", b"", b"ccc"]);
        assert_eq!(item_of(&b, 0).unwrap(), b"a");
        assert_eq!(item_of(&b, 1).unwrap(), b"");
        assert_eq!(item_of(&b, 2).unwrap(), b"ccc");
        assert!(item_of(&b, 3).unwrap_err().contains("item 3 of a result of 3"));
        assert!(item_of(&b[..b.len() - 1], 2).unwrap_err().contains("runs past"));
        assert!(item_of(b"\x80\x05junk", 0).is_err());
        let mut huge = ITEMS_MAGIC.to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(item_of(&huge, 0).is_err(), "a count that overflows is refused, not trusted");
        let mut long = items(&[b"x"]);
        long[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(item_of(&long, 0).is_err());
    }

    #[test]
    fn key_markers_round_trip_and_pickles_are_never_markers() {
        let m = key_marker(0xdead_beef, 42);
        assert_eq!(parse_key_marker(&m), Some((0xdead_beef, 42)));
        assert_eq!(parse_key_marker(b"\x80\x05\x95"), None);
        assert_eq!(parse_key_marker(&m[..31]), None);
    }
}
