//! [`RingClient`]: the [`Api`] over a ring channel to a node runtime, for a worker process
//! and an attached driver. Each call is one request and its reply ([`crate::wire`]); the
//! node's server makes the call on its [`super::Service`]. Handles the process drops are
//! told with its next request. Large values go through the node's store: a `put` writes
//! the object into the shared arena itself; a `get` maps it in place.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rayhpc::ids::{ActorId, ObjectId};
use rayhpc::objstore::ring::RingError;
use rayhpc::objstore::{Client, StoreError};

use super::{lock, ActorRef, Api, Arg, CallOptions, ErrorKind, Failure, Fill, Func, NodeInfo, Ref, Released, ResourceInfo, Result, Value};
use crate::client::Link;
use crate::kv::{KvAnswer, KvOp};
use crate::wire::{self, Call, Envelope, IdGen, Key, Opts, Release, Reply, Request, WireArg, WireFunc};

/// Values up to this size travel in the ring's messages; larger ones through the store.
pub const RING_VALUE_MAX: usize = 1 << 20;

/// The API over a ring channel (see the module's docs).
pub struct RingClient {
    /// One request at a time (and, in a worker, the loop that waits for the next call).
    link: Mutex<Option<Link>>,
    store_socket: PathBuf,
    released: Arc<Released>,
    /// Functions and classes already defined at the node from this process.
    defined: Mutex<HashSet<Key>>,
    /// Options sent to the node, by content: their number there and whether a task with
    /// them was accepted (later ones are posted).
    options: Mutex<Sent>,
    worker: bool,
    /// How this process makes its calls' result ids, and its next sequence number.
    ids: IdGen,
    seq: std::sync::atomic::AtomicU64,
}

impl RingClient {
    /// A client over `link`.
    pub fn new(link: Link) -> RingClient {
        RingClient {
            store_socket: link.store_socket().to_path_buf(),
            worker: link.is_worker(),
            ids: link.ids(),
            link: Mutex::new(Some(link)),
            released: Arc::default(),
            defined: Mutex::new(HashSet::new()),
            options: Mutex::new(Sent::default()),
            seq: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Attaches, as a driver, to the node runtime whose session directory is `dir`.
    ///
    /// # Errors
    /// Nothing listens there, or it does not answer as a node runtime.
    pub fn attach(dir: &Path) -> Result<RingClient> {
        Link::attach(dir).map(RingClient::new).map_err(|m| Failure::new(ErrorKind::Shutdown, m))
    }

    /// Whether this process is a worker of its node.
    pub fn is_worker(&self) -> bool {
        self.worker
    }

    /// Runs `f` on the link (none once detached).
    ///
    /// # Errors
    /// Detached ([`RingError::Closed`]), or `f`'s.
    pub fn with_link<R>(&self, f: impl FnOnce(&mut Link) -> std::result::Result<R, RingError>) -> std::result::Result<R, RingError> {
        let mut g = lock(&self.link);
        f(g.as_mut().ok_or(RingError::Closed)?)
    }

    /// Closes the channel: the node lets go of this process's handles.
    pub fn detach(&self) {
        if let Some(l) = lock(&self.link).take() {
            l.close();
        }
    }

    /// Handles dropped since the last request.
    pub fn take_released(&self) -> Release {
        let (objects, actors) = self.released.take();
        Release { objects, actors }
    }

    /// Tells the node now about the handles dropped (a worker does before it answers, so
    /// that an idle worker holds nothing it no longer uses).
    ///
    /// # Errors
    /// The node is gone.
    pub fn flush_released(&self) -> Result<()> {
        let r = self.take_released();
        if r.is_empty() {
            return Ok(());
        }
        self.with_link(|l| l.send(&[&wire::release_header(), &wire::encode(&r)])).map_err(ring_failure)
    }

    /// One round trip: the request (with the handles dropped since the last one), its reply.
    /// A reply that failed as a whole is the `Err`.
    ///
    /// # Errors
    /// The node is gone, the request is over the ring's message limit, or the node refused.
    pub fn request(&self, call: Call) -> Result<Reply> {
        let body = wire::encode(&Envelope { release: self.take_released(), call });
        let m = self.with_link(|l| {
            l.send(&[&wire::request_header(), &body])?;
            l.recv(None)
        });
        let m = m.map_err(ring_failure)?;
        match wire::parse_request(&m).map_err(|e| Failure::new(ErrorKind::System, e))? {
            Request::Reply(b) => match wire::decode(b).map_err(|e| Failure::new(ErrorKind::System, e))? {
                Reply::Failed(f) => Err(f),
                r => Ok(r),
            },
            _ => Err(Failure::new(ErrorKind::System, "the node runtime sent a call while a request was outstanding")),
        }
    }

    /// Sends a call one-way: its result's id was made here, and a failure becomes that
    /// object's (raised by `get`). Calls on the ring are served in order, so a later request
    /// sees the object.
    ///
    /// # Errors
    /// The node is gone, or the call is over the ring's message limit.
    pub fn post(&self, call: Call) -> Result<()> {
        let body = wire::encode(&Envelope { release: self.take_released(), call });
        self.with_link(|l| l.send(&[&wire::post_header(), &body])).map_err(ring_failure)
    }

    /// A fresh id for a call's result.
    fn next_id(&self) -> ObjectId {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        rayhpc::ids::TaskId::new(self.ids.node, self.ids.worker, seq).object(0)
    }

    /// `options` as the call carries them: whole the first time options of that content
    /// are used, then by number (a loop of `f.options(...).remote()` sends them once); and
    /// whether a task with them was accepted.
    fn opts(&self, options: &CallOptions) -> (Opts, bool) {
        // By content, not by the `CallOptions` object: bindings make a new one for every
        // `.options()` call, and what is kept here (and at the node) must stay bounded by
        // the distinct options a program uses.
        let content = wire::encode(&options.wire);
        let mut sent = lock(&self.options);
        if let Some(&n) = sent.by_content.get(&content) {
            return (Opts::Known(n), sent.accepted.contains(&n));
        }
        let n = sent.by_content.len() as u64;
        sent.by_content.insert(content, n);
        (Opts::New(n, options.wire.clone()), false)
    }

    /// Sends a call that makes object `id`: one-way once calls of its kind were accepted
    /// (`accepted`), else as a request whose error is the caller's.
    fn make(&self, id: ObjectId, call: Call, accepted: bool) -> Result<()> {
        if accepted {
            return self.post(call);
        }
        match self.request(call)? {
            Reply::Ref(got) if got == id => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The node's store, as this process's client (connected on first use, for the life of
    /// the process: its views of objects are `'static`).
    ///
    /// # Errors
    /// The store cannot be reached.
    pub fn store(&self) -> Result<&'static Client> {
        store_client(&self.store_socket)
    }

    /// Seals `len` bytes written by `fill` into the node's store under a fresh key; this
    /// process holds one reference to it.
    ///
    /// # Errors
    /// The store refuses, or `fill` fails.
    pub fn store_new(&self, len: usize, fill: Fill<'_>) -> Result<u128> {
        let c = self.store()?;
        for _ in 0..4 {
            let key = fresh_key();
            let mut a = match c.create(key, len) {
                Ok(a) => a,
                Err(StoreError::Exists { .. }) => continue,
                Err(e) => return Err(store_failure(e)),
            };
            fill(a.as_mut_slice()).map_err(|m| Failure::new(ErrorKind::Value, m))?;
            a.seal().map_err(store_failure)?;
            return Ok(key);
        }
        Err(Failure::new(ErrorKind::System, "no free object key after 4 tries"))
    }

    fn wire_args(args: Vec<Arg>) -> Result<Vec<WireArg>> {
        args.into_iter()
            .map(|a| match a {
                Arg::Bytes(b) => Ok(WireArg::Value(b)),
                Arg::Ref(r) => match &r.inner {
                    super::RefInner::Remote(_) => Ok(WireArg::Ref(r.id())),
                    super::RefInner::Local(_) => Err(super::foreign("ObjectRef")),
                },
            })
            .collect()
    }

    fn ref_of(&self, reply: Reply, actor: bool) -> Result<Ref> {
        match reply {
            Reply::Ref(id) => Ok(Ref::remote(id, actor, &self.released)),
            other => Err(unexpected(other)),
        }
    }

    fn actor_of(&self, reply: Reply) -> Result<ActorRef> {
        match reply {
            Reply::Actor(id, key) => Ok(ActorRef::remote(id, key, &self.released)),
            other => Err(unexpected(other)),
        }
    }

    fn ids(refs: &[Ref]) -> Result<Vec<ObjectId>> {
        refs.iter()
            .map(|r| match &r.inner {
                super::RefInner::Remote(_) => Ok(r.id()),
                super::RefInner::Local(_) => Err(super::foreign("ObjectRef")),
            })
            .collect()
    }

    fn done(reply: Reply) -> Result<()> {
        match reply {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

/// What a [`RingClient`] sent of its calls' options.
#[derive(Default)]
struct Sent {
    by_content: std::collections::HashMap<Vec<u8>, u64>,
    accepted: HashSet<u64>,
}

fn unexpected(r: Reply) -> Failure {
    Failure::new(ErrorKind::System, format!("unexpected reply from the node runtime: {r:?}"))
}

fn ring_failure(e: RingError) -> Failure {
    match e {
        RingError::Closed => Failure::new(ErrorKind::Shutdown, "the rayhpc node runtime went away"),
        RingError::TooLarge { size, limit } => {
            Failure::new(ErrorKind::Value, format!("the request is {size} bytes, over the limit of {limit} bytes per message"))
        }
        e => Failure::new(ErrorKind::System, e.to_string()),
    }
}

fn store_failure(e: StoreError) -> Failure {
    let kind = if matches!(e, StoreError::TooLarge { .. } | StoreError::Full { .. }) { ErrorKind::Store } else { ErrorKind::System };
    Failure::new(kind, e.to_string())
}

/// This process's client of the store at `socket` (one per store, kept for the process's
/// life).
fn store_client(socket: &Path) -> Result<&'static Client> {
    static CLIENTS: OnceLock<Mutex<Vec<(PathBuf, &'static Client)>>> = OnceLock::new();
    let mut clients = lock(CLIENTS.get_or_init(Mutex::default));
    if let Some((_, c)) = clients.iter().find(|(p, _)| p == socket) {
        return Ok(c);
    }
    let c = Client::connect(socket).map_err(|e| Failure::new(ErrorKind::System, format!("cannot connect to the node's store: {e}")))?;
    let c: &'static Client = Box::leak(Box::new(c));
    clients.push((socket.to_path_buf(), c));
    Ok(c)
}

fn fresh_key() -> u128 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let hi = h.finish();
    h.write_u64(hi);
    ((hi as u128) << 64) | h.finish() as u128
}

fn secs(t: Option<Duration>) -> Option<f64> {
    t.map(|d| d.as_secs_f64())
}

impl Api for RingClient {
    fn define(&self, key: Key, blob: &[u8], class_name: Option<&str>) -> Result<()> {
        if lock(&self.defined).contains(&key) {
            return Ok(());
        }
        Self::done(self.request(Call::Define { key, blob: blob.to_vec(), class_name: class_name.map(str::to_string) })?)?;
        lock(&self.defined).insert(key);
        Ok(())
    }

    fn submit(&self, f: &Func, args: Vec<Arg>, options: &CallOptions) -> Result<Ref> {
        let func = match f {
            Func::Python(k) => WireFunc::Python(*k),
            Func::Native(n) => WireFunc::Native(n.clone()),
            Func::Raw(f) => {
                return Err(Failure::new(
                    ErrorKind::Value,
                    format!(
                        "function '{}' is registered in this process, which is attached to a node runtime: name it as library:symbol",
                        f.name()
                    ),
                ))
            }
        };
        let id = self.next_id();
        let (opts, accepted) = self.opts(options);
        let n = match &opts {
            Opts::New(n, _) | Opts::Known(n) => *n,
        };
        self.make(id, Call::Submit { id, func, options: opts, args: Self::wire_args(args)? }, accepted)?;
        lock(&self.options).accepted.insert(n);
        Ok(Ref::remote(id, false, &self.released))
    }

    fn create_actor(&self, class: Key, args: Vec<Arg>, options: &CallOptions) -> Result<ActorRef> {
        let reply = self.request(Call::CreateActor { key: class, options: options.wire.clone(), args: Self::wire_args(args)? })?;
        self.actor_of(reply)
    }

    fn call_actor(&self, actor: &ActorRef, method: &str, args: Vec<Arg>) -> Result<Ref> {
        // Always one-way: a call of a dead actor fails at `get`, as Ray's do.
        let id = self.next_id();
        self.make(id, Call::Method { id, actor: actor.id(), method: method.to_string(), args: Self::wire_args(args)? }, true)?;
        Ok(Ref::remote(id, true, &self.released))
    }

    fn kill(&self, actor: &ActorRef) -> Result<()> {
        Self::done(self.request(Call::Kill { actor: actor.id() })?)
    }

    fn get_actor(&self, name: &str) -> Result<ActorRef> {
        let reply = self.request(Call::GetActor { name: name.to_string() })?;
        self.actor_of(reply)
    }

    fn put(&self, len: usize, fill: Fill<'_>) -> Result<Ref> {
        if len <= RING_VALUE_MAX {
            let mut bytes = vec![0u8; len];
            fill(&mut bytes).map_err(|m| Failure::new(ErrorKind::Value, m))?;
            let reply = self.request(Call::Put { bytes })?;
            return self.ref_of(reply, false);
        }
        let key = self.store_new(len, fill)?;
        let r = self.request(Call::Adopt { key, as_ref: true });
        // The node holds its own reference now (or refused): this one goes either way.
        let _ = self.store()?.release(key);
        self.ref_of(r?, false)
    }

    fn get(&self, refs: &[Ref], timeout: Option<Duration>) -> Result<Vec<Result<Value>>> {
        let reply = self.request(Call::Get { ids: Self::ids(refs)?, timeout: secs(timeout) })?;
        let Reply::Values(vs) = reply else { return Err(unexpected(reply)) };
        if vs.len() != refs.len() {
            return Err(Failure::new(ErrorKind::System, format!("{} values for {} refs", vs.len(), refs.len())));
        }
        Ok(vs
            .into_iter()
            .map(|v| {
                let b = v?;
                match wire::parse_key_marker(&b) {
                    // Read in place; the node's ref keeps it until this process's pin holds.
                    Some((key, _)) => match self.store()?.get(key).map_err(store_failure)? {
                        Some(v) => Ok(Value::Mapped(v)),
                        None => Err(Failure::new(ErrorKind::ObjectLost, format!("object {key:032x} is not in the node's store"))),
                    },
                    None => Ok(Value::Bytes(b)),
                }
            })
            .collect())
    }

    fn wait(&self, refs: &[Ref], num_returns: usize, timeout: Option<Duration>) -> Result<Vec<u32>> {
        match self.request(Call::Wait { ids: Self::ids(refs)?, num_returns, timeout: secs(timeout) })? {
            Reply::Ready(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    fn cancel(&self, r: &Ref, force: bool) -> Result<()> {
        if r.from_actor() {
            return Err(Failure::new(ErrorKind::Value, "cancelling an actor call is not supported yet: kill the actor instead"));
        }
        Self::done(self.request(Call::Cancel { id: Self::ids(std::slice::from_ref(r))?[0], force })?)
    }

    fn items(&self, r: &Ref, n: u32) -> Result<Vec<Ref>> {
        match self.request(Call::Items { id: Self::ids(std::slice::from_ref(r))?[0], n })? {
            Reply::Refs(ids) => Ok(ids.into_iter().map(|id| Ref::remote(id, r.from_actor(), &self.released)).collect()),
            other => Err(unexpected(other)),
        }
    }

    fn escape(&self, r: &Ref) -> Result<()> {
        Self::done(self.request(Call::Escape { id: Self::ids(std::slice::from_ref(r))?[0] })?)
    }

    fn ref_from_id(&self, id: ObjectId, from_actor: bool) -> Result<Ref> {
        let reply = self.request(Call::RefFromId { id, from_actor })?;
        self.ref_of(reply, from_actor)
    }

    fn escape_actor(&self, actor: &ActorRef) -> Result<()> {
        Self::done(self.request(Call::EscapeActor { actor: actor.id() })?)
    }

    fn actor_from_id(&self, id: ActorId, key: Key) -> Result<ActorRef> {
        let reply = self.request(Call::ActorFromId { actor: id, key })?;
        self.actor_of(reply)
    }

    fn resources(&self) -> Result<Vec<ResourceInfo>> {
        match self.request(Call::Resources)? {
            Reply::Resources(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    fn nodes(&self) -> Result<Vec<NodeInfo>> {
        match self.request(Call::Nodes)? {
            Reply::Nodes(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    fn kv(&self, op: KvOp) -> Result<KvAnswer> {
        match self.request(Call::Kv(op))? {
            Reply::Kv(a) => Ok(a),
            other => Err(unexpected(other)),
        }
    }
}
