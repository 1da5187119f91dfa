//! [`RingClient`]: the [`Api`] over a ring channel to a node runtime, for a worker process
//! and an attached driver. Each call is one request and its reply ([`crate::wire`]); the
//! node's server makes the call on its [`crate::service::Service`]. Handles the process drops are
//! told with its next request. Large values go through the node's store: a `put` writes
//! the object into the shared arena itself; a `get` maps it in place (zero-copy).
//!
//! **Many threads at once.** A worker has one link (its node also sends it calls on it). An
//! attached driver has a link *per thread* that calls the API (up to [`MAX_LINKS`], then
//! threads share them, each always the same one), each served by a thread of the node: a
//! thread blocked in `get` holds up no other thread's calls. Chosen over one link whose
//! replies are told apart by request ids: that would need the node to serve one link's
//! requests out of order (a blocked `get` handed to another thread) and a demultiplexer
//! here, where separate links keep every link's protocol what it is. A thread's calls all go
//! on its own link, so they are served in the order it made them (a thread's submit, then
//! its get, sees its own submit). The links of a driver share its handles at the node
//! ([`crate::session`]): a ref made by one thread is good on another's link; the node waits
//! the moment it takes for a result another link is bringing. A link is attached when a
//! thread first calls, and given back to the client when the thread ends (its next user
//! continues after everything the ended thread sent).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use rayhpc::ids::{ActorId, ObjectId};
use rayhpc::objstore::ring::RingError;
use rayhpc::objstore::{Client, StoreError};

use crate::api::{
    lock, ActorRef, Api, Arg, CallContext, CallOptions, Class, ErrorKind, Failure, Fill, Func, NodeInfo, Ref, Released, ResourceInfo,
    Result, Value,
};
use crate::client::Link;
use crate::kv::{KvAnswer, KvOp};
use crate::wire::{self, Call, Envelope, IdGen, Key, Opts, Release, Reply, Request, WireArg, WireClass, WireFunc};

/// Values up to this size travel in the ring's messages; larger ones through the store.
pub const RING_VALUE_MAX: usize = 1 << 20;

/// The most links a driver opens (each costs a thread of the node and a channel); threads
/// past it share them.
pub const MAX_LINKS: usize = 64;

/// The API over a ring channel (see the module's docs).
pub struct RingClient {
    links: Links,
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

/// A client's links to its node (see the module's docs).
struct Links {
    /// The first link: a worker's only one.
    first: Arc<Slot>,
    /// Where a driver's further links attach (`None`: a worker, one link).
    dir: Option<PathBuf>,
    /// This client, as threads' leases name it.
    serial: u64,
    pool: Arc<Mutex<Pool>>,
}

#[derive(Default)]
struct Pool {
    all: Vec<Arc<Slot>>,
    /// Links no thread uses now.
    idle: Vec<Arc<Slot>>,
    closed: bool,
    /// The next link a thread past [`MAX_LINKS`] shares.
    next: usize,
}

/// One link, and how many threads use it (one, but past [`MAX_LINKS`]).
struct Slot {
    link: Mutex<Option<Link>>,
    leases: AtomicUsize,
    /// The handles the link's posts named since its last request (a driver's).
    named: Mutex<Named>,
}

impl Slot {
    fn new(link: Link) -> Arc<Slot> {
        Arc::new(Slot { link: Mutex::new(Some(link)), leases: AtomicUsize::new(0), named: Mutex::default() })
    }
}

/// Handles a call names, kept alive until the node served it: for a request, until its
/// reply; for a post of a driver's, until a later request on the same link is answered (the
/// node serves a link in order). A release of them, which goes with whatever message any
/// thread sends next, may reach the node on another link and be served first: it must find
/// the call already served.
#[derive(Default)]
struct Named {
    refs: Vec<Ref>,
    actors: Vec<ActorRef>,
}

/// How many handles a link's posts may keep named before the client asks the node whether it
/// served them ([`Call::Sync`]).
const NAMED_MAX: usize = 1024;

/// A thread's use of a link of a client, given back when the thread ends.
struct Lease {
    serial: u64,
    slot: Arc<Slot>,
    pool: Weak<Mutex<Pool>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.slot.leases.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(pool) = self.pool.upgrade() {
                let mut p = lock(&pool);
                if !p.closed {
                    p.idle.push(self.slot.clone());
                }
            }
        }
    }
}

thread_local! {
    /// The links this thread uses, one per client.
    static LEASES: RefCell<Vec<Lease>> = const { RefCell::new(Vec::new()) };
}

impl RingClient {
    /// A client over `link`, its only link (a worker's).
    pub fn new(link: Link) -> RingClient {
        RingClient::with_links(link, None)
    }

    /// A client whose first link is `link`; with `dir`, threads attach links of their own
    /// there.
    fn with_links(link: Link, dir: Option<PathBuf>) -> RingClient {
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let first = Slot::new(link);
        let (store_socket, worker, ids) = {
            let l = lock(&first.link);
            let l = l.as_ref().expect("just made");
            (l.store_socket().to_path_buf(), l.is_worker(), l.ids())
        };
        let pool = Pool { all: vec![first.clone()], idle: vec![first.clone()], ..Pool::default() };
        RingClient {
            links: Links { first, dir, serial: SERIAL.fetch_add(1, Ordering::Relaxed), pool: Arc::new(Mutex::new(pool)) },
            store_socket,
            worker,
            ids,
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
        Link::attach(dir).map(|l| RingClient::with_links(l, Some(dir.to_path_buf()))).map_err(|m| Failure::new(ErrorKind::Shutdown, m))
    }

    /// The link of the calling thread: a worker's only one; a driver thread's own (attached
    /// on its first call, or one given back by a thread that ended).
    fn slot(&self) -> std::result::Result<Arc<Slot>, RingError> {
        let Some(dir) = &self.links.dir else { return Ok(self.links.first.clone()) };
        let serial = self.links.serial;
        let mine = LEASES.try_with(|l| l.borrow().iter().find(|l| l.serial == serial).map(|l| l.slot.clone()));
        if let Ok(Some(slot)) = mine {
            return Ok(slot);
        }
        let slot = self.free_slot(dir)?;
        slot.leases.fetch_add(1, Ordering::AcqRel);
        let lease = Lease { serial, slot: slot.clone(), pool: Arc::downgrade(&self.links.pool) };
        // A thread whose thread-locals are gone (it is ending) uses the link for this call
        // only: the lease, dropped at once, gives it back.
        let _ = LEASES.try_with(move |l| {
            let mut l = l.borrow_mut();
            l.retain(|l| l.pool.strong_count() > 0);
            l.push(lease);
        });
        Ok(slot)
    }

    /// A link for a thread that has none: an idle one, a new one, or past [`MAX_LINKS`]
    /// (or when no new one can be had) one that other threads use.
    fn free_slot(&self, dir: &Path) -> std::result::Result<Arc<Slot>, RingError> {
        let shared = |p: &mut Pool| {
            p.next = p.next.wrapping_add(1);
            p.all.get(p.next % p.all.len().max(1)).cloned().ok_or(RingError::Closed)
        };
        {
            let mut p = lock(&self.links.pool);
            if p.closed {
                return Err(RingError::Closed);
            }
            if let Some(s) = p.idle.pop() {
                return Ok(s);
            }
            if p.all.len() >= MAX_LINKS {
                return shared(&mut p);
            }
        }
        // Attached and joined without the pool's lock (a round trip to the node).
        let made = Link::attach(dir).and_then(|mut l| match exchange(&mut l, Call::Join { worker: self.ids.worker }, Release::default()) {
            Ok(Reply::Done) => Ok(l),
            Ok(other) => Err(unexpected(other).message),
            Err(f) => Err(f.message),
        });
        let mut p = lock(&self.links.pool);
        match made {
            Ok(l) if p.closed => {
                l.close();
                Err(RingError::Closed)
            }
            Ok(l) => {
                let s = Slot::new(l);
                p.all.push(s.clone());
                Ok(s)
            }
            // This thread's calls then wait for another's: slower, still correct.
            Err(_) => shared(&mut p),
        }
    }

    /// Whether this process is a worker of its node.
    pub fn is_worker(&self) -> bool {
        self.worker
    }

    /// The node this client talks to: its number (the rank in a launch).
    pub fn node(&self) -> u32 {
        self.ids.node
    }

    /// Runs `f` on the calling thread's link (a worker's only one; none once detached).
    ///
    /// # Errors
    /// Detached ([`RingError::Closed`]), or `f`'s.
    pub fn with_link<R>(&self, f: impl FnOnce(&mut Link) -> std::result::Result<R, RingError>) -> std::result::Result<R, RingError> {
        let slot = self.slot()?;
        let mut g = lock(&slot.link);
        f(g.as_mut().ok_or(RingError::Closed)?)
    }

    /// Closes the channels: the node lets go of this process's handles. (A link whose
    /// thread is waiting for a reply closes once the reply came.)
    pub fn detach(&self) {
        let slots = {
            let mut p = lock(&self.links.pool);
            p.closed = true;
            p.idle.clear();
            std::mem::take(&mut p.all)
        };
        for s in slots.iter().chain([&self.links.first]) {
            if let Some(l) = lock(&s.link).take() {
                l.close();
            }
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
        let slot = self.slot().map_err(ring_failure)?;
        let (reply, served) = {
            let mut g = lock(&slot.link);
            let l = g.as_mut().ok_or_else(|| ring_failure(RingError::Closed))?;
            // What the link's earlier posts named: served once this request is answered.
            let served = std::mem::take(&mut *lock(&slot.named));
            (exchange(l, call, self.take_released()), served)
        };
        drop(served);
        reply
    }

    /// Sends a call one-way: its result's id was made here, and a failure becomes that
    /// object's (raised by `get`). Calls on the ring are served in order, so a later request
    /// sees the object.
    ///
    /// # Errors
    /// The node is gone, or the call is over the ring's message limit.
    pub fn post(&self, call: Call) -> Result<()> {
        self.post_naming(call, Named::default())
    }

    /// [`RingClient::post`] of a call that names `named` (kept until the node served it).
    fn post_naming(&self, call: Call, named: Named) -> Result<()> {
        let slot = self.slot().map_err(ring_failure)?;
        let body = wire::encode(&Envelope { release: self.take_released(), call });
        let pending = {
            let mut g = lock(&slot.link);
            let l = g.as_mut().ok_or_else(|| ring_failure(RingError::Closed))?;
            l.send(&[&wire::post_header(), &body]).map_err(ring_failure)?;
            if self.links.dir.is_none() || named.refs.is_empty() && named.actors.is_empty() {
                // Nothing named, or one link: a release comes after the post on it.
                return Ok(());
            }
            let mut n = lock(&slot.named);
            n.refs.extend(named.refs);
            n.actors.extend(named.actors);
            n.refs.len() + n.actors.len()
        };
        if pending > NAMED_MAX {
            Self::done(self.request(Call::Sync)?)?;
        }
        Ok(())
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
        let n = sent.next;
        sent.next += 1;
        sent.by_content.insert(content, n);
        (Opts::New(n, options.wire.clone()), false)
    }

    /// Forgets options `n`, whose call could not be sent: the next call with them sends
    /// them whole again (under a new number).
    fn unsent(&self, n: u64) {
        lock(&self.options).by_content.retain(|_, v| *v != n);
    }

    /// Sends a call that makes object `id`: one-way once calls of its kind were accepted
    /// (`accepted`), else as a request whose error is the caller's.
    fn make(&self, id: ObjectId, call: Call, accepted: bool, named: Named) -> Result<()> {
        if accepted {
            return self.post_naming(call, named);
        }
        let reply = self.request(call);
        drop(named);
        match reply? {
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

    /// The arguments as a call carries them; the refs they name go to `named`.
    fn wire_args(args: Vec<Arg>, named: &mut Named) -> Result<Vec<WireArg>> {
        args.into_iter()
            .map(|a| match a {
                Arg::Bytes(b) => Ok(WireArg::Value(b)),
                Arg::Ref(r) => match &r.inner {
                    crate::api::RefInner::Remote(_) | crate::api::RefInner::RemoteOfActor(_) => {
                        let id = r.id();
                        named.refs.push(r);
                        Ok(WireArg::Ref(id))
                    }
                    crate::api::RefInner::Local(_) | crate::api::RefInner::LocalOfActor(_) => Err(crate::api::foreign("ObjectRef")),
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
            Reply::Actor(id, key, methods) => Ok(ActorRef::remote(id, key, &self.released).with_methods(methods.map(Arc::new))),
            other => Err(unexpected(other)),
        }
    }

    fn ids(refs: &[Ref]) -> Result<Vec<ObjectId>> {
        refs.iter()
            .map(|r| match &r.inner {
                crate::api::RefInner::Remote(_) | crate::api::RefInner::RemoteOfActor(_) => Ok(r.id()),
                crate::api::RefInner::Local(_) | crate::api::RefInner::LocalOfActor(_) => Err(crate::api::foreign("ObjectRef")),
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

impl Drop for RingClient {
    fn drop(&mut self) {
        // Threads' leases may outlive the client: its links close with it.
        self.detach();
    }
}

/// What a [`RingClient`] sent of its calls' options.
#[derive(Default)]
struct Sent {
    by_content: HashMap<Vec<u8>, u64>,
    accepted: HashSet<u64>,
    /// The next number.
    next: u64,
}

/// One round trip on `l`: the request (with the handles dropped since the last one), its
/// reply. A reply that failed as a whole is the `Err`.
fn exchange(l: &mut Link, call: Call, release: Release) -> Result<Reply> {
    let body = wire::encode(&Envelope { release, call });
    l.send(&[&wire::request_header(), &body]).map_err(ring_failure)?;
    let m = l.recv(None).map_err(ring_failure)?;
    match wire::parse_request(&m).map_err(|e| Failure::new(ErrorKind::System, e))? {
        Request::Reply(b) => match wire::decode(b).map_err(|e| Failure::new(ErrorKind::System, e))? {
            Reply::Failed(f) => Err(f),
            r => Ok(r),
        },
        _ => Err(Failure::new(ErrorKind::System, "the node runtime sent a call while a request was outstanding")),
    }
}

/// What a function or class registered in this process is, to a client of a node runtime:
/// a function the node does not have ([`ErrorKind::Unknown`]), a class it cannot be given
/// ([`ErrorKind::Value`]).
fn registered_here(kind: ErrorKind, what: &str, name: &str) -> Failure {
    Failure::new(
        kind,
        format!("{what} '{name}' is registered in this process, which is attached to a node runtime: name it as library:symbol"),
    )
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
            Func::Raw(f) => return Err(registered_here(ErrorKind::Unknown, "function", f.name())),
        };
        let id = self.next_id();
        let mut named = Named::default();
        let args = Self::wire_args(args, &mut named)?;
        let (opts, accepted) = self.opts(options);
        let (n, new) = match &opts {
            Opts::New(n, _) => (*n, true),
            Opts::Known(n) => (*n, false),
        };
        if let Err(f) = self.make(id, Call::Submit { id, func, options: opts, args }, accepted, named) {
            if new {
                self.unsent(n);
            }
            return Err(f);
        }
        lock(&self.options).accepted.insert(n);
        Ok(Ref::remote(id, false, &self.released))
    }

    fn check_submit(&self, f: &Func, _options: Option<&CallOptions>) -> Result<()> {
        match f {
            Func::Raw(f) => Err(registered_here(ErrorKind::Unknown, "function", f.name())),
            _ => Ok(()),
        }
    }

    fn create_actor(&self, class: &Class, args: Vec<Arg>, options: &CallOptions) -> Result<ActorRef> {
        let class = match class {
            Class::Python(k) => WireClass::Python(*k),
            Class::Native(n) => WireClass::Native(n.clone()),
            Class::Registered(c) => return Err(registered_here(ErrorKind::Value, "actor class", c.name())),
        };
        let mut named = Named::default();
        let args = Self::wire_args(args, &mut named)?;
        let reply = self.request(Call::CreateActor { class, options: options.wire.clone(), args });
        drop(named);
        self.actor_of(reply?)
    }

    fn call_actor(&self, actor: &ActorRef, method: &str, args: Vec<Arg>) -> Result<Ref> {
        actor.check_call(method, args.len())?;
        // Always one-way: a call of a dead actor fails at `get`, as Ray's do.
        let id = self.next_id();
        let mut named = Named { refs: Vec::new(), actors: vec![actor.clone()] };
        let args = Self::wire_args(args, &mut named)?;
        self.make(id, Call::Method { id, actor: actor.id(), method: method.to_string(), args }, true, named)?;
        Ok(Ref::remote(id, true, &self.released))
    }

    fn kill(&self, actor: &ActorRef, no_restart: bool) -> Result<()> {
        Self::done(self.request(Call::Kill { actor: actor.id(), no_restart })?)
    }

    fn actor_names(&self) -> Result<Vec<String>> {
        match self.request(Call::ActorNames)? {
            Reply::Names(n) => Ok(n),
            other => Err(unexpected(other)),
        }
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

    fn context(&self) -> Result<CallContext> {
        match self.request(Call::Context)? {
            Reply::Context(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Node, NodeConfig};
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    /// A native task of no argument use and an empty result, from libc (`sched_yield`
    /// ignores the task signature's arguments and returns 0).
    const EMPTY: &str = "libc.so.6:sched_yield";

    #[test]
    fn threads_wait_for_no_other_threads_request_and_handles_are_good_across_links() {
        let cfg = NodeConfig { num_cpus: Some(2.0), object_store_memory: Some(64 << 20), ..NodeConfig::default() };
        let node = Arc::new(Node::start(cfg).unwrap());
        let dir = node.listen().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let serving = {
            let (node, stop) = (node.clone(), stop.clone());
            std::thread::spawn(move || node.serve(|| !stop.load(Ordering::Acquire)))
        };
        let c = Arc::new(RingClient::attach(&dir).unwrap());

        // One thread waits 5 s in a request of its own (a watch of keys nobody writes).
        let t0 = Instant::now();
        let watcher = {
            let c = c.clone();
            std::thread::spawn(move || c.kv(KvOp::Watch { prefix: b"nobody/".to_vec(), since: 0, timeout: 5.0 }).map(|_| t0.elapsed()))
        };
        std::thread::sleep(Duration::from_millis(100));
        let f = Func::Native(EMPTY.into());
        let o = CallOptions::default();
        // Results posted on this thread's link, for other threads to get on theirs.
        let handed: Vec<Ref> = (0..200).map(|_| c.submit(&f, vec![], &o).unwrap()).collect();
        let workers: Vec<_> = handed
            .chunks(50)
            .map(|mine| {
                let (c, f, o, mine) = (c.clone(), f.clone(), o.clone(), mine.to_vec());
                std::thread::spawn(move || {
                    for r in &mine {
                        assert!(c.get(std::slice::from_ref(r), None).unwrap().pop().unwrap().unwrap().is_empty());
                    }
                    for i in 0..100u64 {
                        // An argument whose last handle goes with the call that names it: its
                        // release (sent by whichever thread sends next) must not overtake it.
                        let x = c
                            .put(8, &mut |b| {
                                b.copy_from_slice(&i.to_le_bytes());
                                Ok(())
                            })
                            .unwrap();
                        let r = c.submit(&f, vec![Arg::Ref(x)], &o).unwrap();
                        let got = c.get(std::slice::from_ref(&r), None).unwrap().pop().unwrap();
                        assert!(got.unwrap().is_empty());
                    }
                })
            })
            .collect();
        drop(handed);
        for w in workers {
            w.join().unwrap();
        }
        let took = t0.elapsed();
        assert!(!watcher.is_finished() && took < Duration::from_secs(5), "the threads waited for the watch ({took:?})");
        eprintln!("4 threads' 1400 calls while another thread waited: {took:?}");
        assert!(watcher.join().unwrap().unwrap() >= Duration::from_secs(5));
        c.detach();
        stop.store(true, Ordering::Release);
        serving.join().unwrap().unwrap();
        node.shutdown();
    }
}
