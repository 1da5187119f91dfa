//! Tasks forwarded to other nodes, and run here for them.
//!
//! A task (Python, native `library:symbol`, or a method of an actor of another node) is
//! submitted where its driver or worker runs; placement ([`crate::place`]) may send it to
//! another node. Forwarding is one-way messages, so that no thread waits per task: `Task`
//! owner → executor (the function, its arguments inline or as objects the owner exports for
//! the executor to pull, the options, the owner's number for it), `TaskDone` executor →
//! owner (the result inline, or an object the executor lends, or the failure); the owner's
//! ref is a [`rayhpc::Promise`] of the core. A node never forwards a task it got from another node
//! (no ping-pong).
//!
//! A task whose node dies, whose send fails, or whose worker process died over there is
//! placed again while its `max_retries` allows (another live node, or here), else fails as a
//! lost worker.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rayhpc::ids::ObjectId;
use rayhpc::raw::RawArg;
use rayhpc::{Error, FailureKind, ObjectRef, TaskError, Untyped};
use rayhpc_node::api::{Api, CallOptions, ErrorKind, Failure, Ref};
use rayhpc_node::router::TaskFn;
use rayhpc_node::wire::WireOptions;
use rayhpc_transport::{NodeId, Peer};

use crate::messages::{CancelMsg, CancelTarget, DoneMsg, Msg, MsgFn, Outcome, TaskMsg};
use crate::remote::{Candidate, Remote};
use crate::state::{next_attempt, Pending, Resend};
use crate::sync::lock;

/// How long the outcome of a task may wait to be written when its owner has more tasks here
/// (the last one's goes at once, and takes those waiting with it). A node busy with one
/// owner's many short tasks then writes their outcomes a few at a time instead of one
/// system call and one wake-up of the owner's reader each, which on loopback costs as much
/// as an empty task.
const OUTCOMES_LINGER: Duration = Duration::from_micros(200);

/// The function a task failure names.
fn function_name(f: &TaskFn) -> String {
    match f {
        TaskFn::Python(_) => "py.task".to_string(),
        TaskFn::Native(n) => n.clone(),
        TaskFn::Method { method, .. } => method.clone(),
    }
}

/// The failure of a task cancelled before it was sent.
fn cancelled(f: &TaskFn) -> Error {
    Error::Task(Box::new(TaskError {
        function: function_name(f).into(),
        kind: FailureKind::Cancelled,
        message: "the task was cancelled before it ran".into(),
        attempts: 0,
        payload: None,
    }))
}

impl Remote {
    /// Runs a task on this node through `here`, counting it in this node's load until it
    /// finishes.
    ///
    /// # Errors
    /// As `here`.
    pub(crate) fn run_here(
        self: &Arc<Self>,
        args: Vec<RawArg>,
        options: &WireOptions,
        here: &dyn Fn(Vec<RawArg>) -> Result<ObjectRef<Untyped>, Error>,
    ) -> Result<ObjectRef<Untyped>, Error> {
        let cpu = options.num_cpus.unwrap_or(1.0);
        let r = here(args)?;
        self.tasks.add(self.me, cpu);
        let me = Arc::downgrade(self);
        let node = self.me;
        r.on_ready(move || {
            if let Some(me) = me.upgrade() {
                me.tasks.done(node, cpu);
            }
        });
        Ok(r)
    }

    /// Sends the task (`args[0]` is the function key's bytes, as `py.task` takes them) to
    /// `peer`; the returned ref is completed when its outcome comes back.
    ///
    /// # Errors
    /// This runtime is shut down, or the function is unknown here.
    pub(crate) fn submit(
        self: &Arc<Self>,
        peer: &Peer,
        func: TaskFn,
        args: Vec<RawArg>,
        options: WireOptions,
    ) -> Result<ObjectRef<Untyped>, Error> {
        let service = self.service.upgrade().ok_or(Error::Shutdown)?;
        let (r, promise) = service.runtime().promise()?;
        let retries_left = options.max_retries.unwrap_or(rayhpc::DEFAULT_MAX_RETRIES);
        let cpus = options.num_cpus.unwrap_or(1.0);
        let p = Pending { node: peer.node(), func, args, options, promise, exported: Vec::new(), cpus, retries_left };
        self.send_when_ready(peer.clone(), p, false);
        Ok(r)
    }

    /// Waits (without a thread) for the arguments to be ready, then sends; `held`: it
    /// waited already (the task is among the unsent, which a cancel looks at).
    fn send_when_ready(self: &Arc<Self>, peer: Peer, p: Pending, held: bool) {
        let unready: Vec<ObjectRef<Untyped>> =
            p.args.iter().filter_map(|a| if let RawArg::Ref(r) = a { (!r.is_ready()).then(|| r.clone()) } else { None }).collect();
        let id = p.promise.id();
        if let Some(first) = unready.first() {
            if !held {
                lock(&self.tasks.unsent).insert(id, None);
            }
            let me = self.clone();
            first.on_ready(move || {
                let m = me.clone();
                me.defer(move || m.send_when_ready(peer, p, true));
            });
            return;
        }
        if !held {
            return self.send(&peer, p);
        }
        // Cancelled while it waited: it never runs.
        if lock(&self.tasks.unsent).get(&id).is_some_and(Option::is_some) {
            lock(&self.tasks.unsent).remove(&id);
            return p.promise.fail(cancelled(&p.func));
        }
        self.send(&peer, p);
        // Cancelled while it was being sent: the cancel follows it.
        if let Some(Some(force)) = lock(&self.tasks.unsent).remove(&id) {
            self.cancel_routed(id, force);
        }
    }

    /// Cancels task `id` if this node routed it to another node: held until its arguments
    /// are ready (it then never runs), or sent (the node running it is told). False when
    /// this node did not route it.
    pub(crate) fn cancel_routed(&self, id: ObjectId, force: bool) -> bool {
        if let Some(c) = lock(&self.tasks.unsent).get_mut(&id) {
            *c = Some(force);
            return true;
        }
        // Cancels are rare: a scan of the tasks in flight, not an index on every send.
        let sent = lock(&self.tasks.pending).iter().find(|(_, p)| p.promise.id() == id).map(|(seq, p)| (*seq, p.node));
        let Some((seq, node)) = sent else { return false };
        if let Some(peer) = self.peer(node) {
            let msg = CancelMsg { target: CancelTarget::Sent(seq), force };
            let _ = peer.send(Msg::Cancel.kind(), &postcard::to_allocvec(&msg).expect("serializes"));
        }
        true
    }

    /// `Cancel`: of a task this node made (`Result`: the canceller holds a copy of its
    /// ref on another node), or of one it runs for the sender (`Sent`).
    pub(crate) fn on_cancel(self: &Arc<Self>, peer: &Peer, payload: &[u8]) {
        let Ok(msg) = postcard::from_bytes::<CancelMsg>(payload) else {
            eprintln!("rayhpc node: a malformed cancel from node {}", peer.node());
            return;
        };
        let Some(service) = self.service.upgrade() else { return };
        let r = match msg.target {
            // Passed to that node, so escaped here: its ref is known by id.
            CancelTarget::Result(id) => service.ref_from_id(id, false).ok(),
            CancelTarget::Sent(seq) => lock(&self.tasks.running).get(peer.node(), seq).map(|r| Ref::local(r.clone(), false)),
        };
        // Gone already (done, or never known): nothing to cancel.
        if let Some(r) = r {
            if let Err(e) = service.cancel(&r, msg.force) {
                eprintln!("rayhpc node: a cancel from node {}: {e}", peer.node());
            }
        }
    }

    fn send(self: &Arc<Self>, peer: &Peer, mut p: Pending) {
        let Some(service) = self.service.upgrade() else { return };
        // The pickle goes with the first task of a function to a node; the function is
        // marked known there only once that frame is written, so a later frame without it
        // follows it on the connection (two first tasks may both carry it: harmless).
        let mut first_of = None;
        let (func, skip) = match &p.func {
            TaskFn::Python(key) if lock(&self.tasks.known).contains(&(peer.node(), *key)) => {
                (MsgFn::Python { key: *key, blob: Vec::new() }, 1)
            }
            TaskFn::Python(key) => match service.workers().blob(key) {
                Some(blob) => {
                    first_of = Some(*key);
                    (MsgFn::Python { key: *key, blob: blob.to_vec() }, 1)
                }
                None => {
                    p.promise.fail(Error::Invalid("unknown function (not registered in this runtime)".into()));
                    return;
                }
            },
            TaskFn::Native(name) => (MsgFn::Native(name.clone()), 0),
            TaskFn::Method { actor, method } => (MsgFn::Method { actor: *actor, method: method.clone() }, 0),
        };
        // A Python task's first argument is the key itself (`py.task` takes it as its first
        // input): the executor puts it back.
        let args = match self.outgoing(&p.args[skip.min(p.args.len())..]) {
            Ok((a, exported)) => {
                p.exported = exported;
                a
            }
            // Ray's propagation: a failed argument fails the task, which does not run.
            Err(e) => return p.promise.fail(e),
        };
        let seq = self.tasks.seq.fetch_add(1, Ordering::Relaxed);
        let msg = TaskMsg { seq, func, args, options: p.options.clone() };
        let bytes = match postcard::to_allocvec(&msg) {
            Ok(b) => b,
            Err(e) => {
                p.promise.fail(Error::Invalid(format!("cannot encode a task for another node: {e}")));
                return;
            }
        };
        if !peer.is_open() {
            return self.lost(p, peer.node(), "its connection is closed");
        }
        self.tasks.add(peer.node(), p.cpus);
        lock(&self.tasks.pending).insert(seq, p);
        self.tasks.sent.fetch_add(1, Ordering::Relaxed);
        let sent = peer.post(Msg::Task.kind(), &bytes);
        if let (Ok(()), Some(key)) = (&sent, first_of) {
            lock(&self.tasks.known).insert((peer.node(), key));
        }
        if let Err(e) = sent {
            // Taken back (unless the disconnect handler already did) and placed again.
            let back = lock(&self.tasks.pending).remove(&seq);
            if let Some(p) = back {
                self.tasks.done(peer.node(), p.cpus);
                self.lost(p, peer.node(), &e.to_string());
            }
        }
    }

    /// A task that could not run where it was sent: placed again while its retries allow
    /// (`max_retries = -1`: always), else failed as a lost worker.
    pub(crate) fn lost(self: &Arc<Self>, mut p: Pending, node: NodeId, reason: &str) {
        for id in p.exported.drain(..) {
            self.unexport(id);
        }
        if let Some(left) = next_attempt(p.retries_left) {
            p.retries_left = left;
            self.replace(Resend(p));
        } else {
            p.promise.fail(Error::Task(Box::new(TaskError {
                function: function_name(&p.func).into(),
                kind: FailureKind::WorkerDied,
                message: format!("node {node} could not run it ({reason})"),
                attempts: 1,
                payload: None,
            })));
        }
    }

    /// `Task`: a task from another node: pull its objects, run it here, answer when it is
    /// done (on the connection's reader thread, see [`Remote::now_or_later`]: it only
    /// queues work; pulls run on threads of their own).
    pub(crate) fn on_task(self: &Arc<Self>, peer: &Peer, payload: &[u8]) {
        let msg: TaskMsg = match postcard::from_bytes(payload) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("rayhpc node: a malformed task from node {}: {e}", peer.node());
                return;
            }
        };
        let Some(service) = self.service.upgrade() else { return };
        self.tasks.ran_for_others.fetch_add(1, Ordering::Relaxed);
        let seq = msg.seq;
        let answer = {
            let peer = peer.clone();
            // `more`: the owner has more tasks here, whose outcomes will follow this one.
            move |outcome: Outcome, more: bool| {
                if let Ok(b) = postcard::to_allocvec(&DoneMsg { seq, outcome }) {
                    let _ = match more {
                        // The owner waits on the lot, not this one alone: let the outcomes
                        // of a busy stretch share writes (and the owner's wake-ups).
                        true => peer.post_within(Msg::TaskDone.kind(), &b, OUTCOMES_LINGER),
                        false => peer.send(Msg::TaskDone.kind(), &b),
                    };
                }
            }
        };
        let requester = peer.node();
        let (f, mut args) = match &msg.func {
            MsgFn::Python { key, blob } if blob.is_empty() && service.workers().blob(key).is_none() => {
                let m = format!("node {} sent a task of a function it never sent here", peer.node());
                return answer(Outcome::Failed(Failure::new(ErrorKind::System, m)), false);
            }
            MsgFn::Python { key, blob } => {
                if !blob.is_empty() {
                    service.workers().define(*key, blob);
                }
                (service.python_task(), vec![RawArg::Bytes(key.to_vec())])
            }
            MsgFn::Native(name) => match service.native(name) {
                Ok(f) => (f, Vec::new()),
                Err(e) => return answer(Outcome::Failed(Failure::of(e, false)), false),
            },
            MsgFn::Method { actor, method } => {
                // The actor's own ordered mailbox takes it, as any call.
                let args = match self.received(peer, &service, msg.args, false) {
                    Ok(a) => a,
                    Err(e) => return answer(Outcome::Failed(Failure::of(e, true)), false),
                };
                let r = match service.call_actor_id(*actor, method, args) {
                    Ok(r) => r,
                    Err(e) => return answer(Outcome::Failed(Failure::of(e, true)), false),
                };
                let (me, held) = (self.clone(), r.clone());
                // Answered by the thread that completes it: a small frame, no hop.
                r.on_ready(move || answer(me.outcome_of(&held, requester), false));
                return;
            }
        };
        let rt = service.runtime().clone();
        // The owner lets its exports go when the task is done.
        match self.received(peer, &service, msg.args, false) {
            Ok(a) => args.extend(a),
            Err(e) => return answer(Outcome::Failed(Failure::of(e, false)), false),
        }
        let options = self.tasks.options(&msg.options);
        let r = match f.remote(&rt, args, &options) {
            Ok(r) => r,
            Err(e) => return answer(Outcome::Failed(Failure::of(e, false)), false),
        };
        let me = self.clone();
        let held = r.clone();
        // Known while it runs, for a cancel from the owner.
        lock(&self.tasks.running).insert(requester, seq, r.clone());
        // Answered by the thread that completes it (an executor, mostly): the outcome is a
        // small frame (inline bytes up to the inline threshold, or an object's id), and the
        // owner's reader always drains its connection, so the write does not wait.
        r.on_ready(move || {
            let more = lock(&me.tasks.running).remove(requester, seq) > 0;
            answer(me.outcome_of(&held, requester), more)
        });
    }

    /// `TaskDone`: the outcome of a task this node sent (on the connection's reader thread,
    /// see [`Remote::now_or_later`]: completing the promise runs what waited on it, which
    /// only queues work).
    pub(crate) fn on_done(self: &Arc<Self>, peer: &Peer, payload: &[u8]) {
        let Ok(msg) = postcard::from_bytes::<DoneMsg>(payload) else {
            eprintln!("rayhpc node: a malformed task outcome from node {}", peer.node());
            return;
        };
        let Some(mut p) = lock(&self.tasks.pending).remove(&msg.seq) else { return };
        self.tasks.done(p.node, p.cpus);
        match msg.outcome {
            // Its worker process died over there: a system failure, retried like here.
            // Placed again on the service thread (placing may dial another node).
            Outcome::Failed(f) if f.kind == ErrorKind::WorkerDied && p.retries_left != 0 => {
                let (me, node) = (self.clone(), peer.node());
                self.defer(move || me.lost(p, node, &f.message));
            }
            outcome => {
                for id in p.exported.drain(..) {
                    self.unexport(id);
                }
                match outcome {
                    Outcome::Inline(b) => {
                        let _ = p.promise.fulfill(&b);
                    }
                    Outcome::Failed(f) => p.promise.fail(f.into_error()),
                    Outcome::Stored { id, len } => self.pull(peer.clone(), id, len, p.promise, true),
                }
            }
        }
    }

    /// Places a task that could not run where it was sent again: on the node placement
    /// picks among the live ones already connected (no dialing from here), else here (also
    /// once the cluster is gone).
    pub(crate) fn replace(self: &Arc<Self>, p: Resend) {
        let Some(members) = self.members() else { return self.resend(p, None) };
        let nodes = members.candidates();
        let peer = self.place_for(&p, &nodes).and_then(|c| members.connected(c.node));
        self.resend(p, peer);
    }

    /// Where a task to place again should go (as [`Remote::place`]).
    pub(crate) fn place_for(&self, p: &Resend, nodes: &[Candidate]) -> Option<Candidate> {
        self.place(&p.0.options, nodes)
    }

    /// Places a task again: on `peer` (a live node the cluster chose), else here.
    pub(crate) fn resend(self: &Arc<Self>, p: Resend, peer: Option<Peer>) {
        let mut p = p.0;
        p.options.max_retries = Some(p.retries_left);
        match peer {
            Some(peer) => {
                p.node = peer.node();
                self.send_when_ready(peer, p, false);
            }
            None => self.run_local(p),
        }
    }

    /// Runs a task here; its promise completes with the local result (a copy: the result
    /// object is read into the promised one).
    fn run_local(self: &Arc<Self>, p: Pending) {
        let Some(service) = self.service.upgrade() else { return };
        let f = match &p.func {
            TaskFn::Python(_) => Ok(service.python_task()),
            TaskFn::Native(name) => service.native(name),
            TaskFn::Method { actor, method } => {
                // Its node is gone, and the actor with it.
                return p.promise.fail(Error::ActorDied {
                    class: "?".into(),
                    actor: format!("{:032x}", actor.0),
                    reason: format!("the node that held it is gone (method {method})").into(),
                });
            }
        };
        match f.and_then(|f| f.remote(service.runtime(), p.args, &CallOptions::new(p.options.clone()).task)) {
            Ok(r) => {
                let (held, promise) = (r.clone(), p.promise);
                r.on_ready(move || match held.try_view() {
                    Some(Ok(v)) => {
                        let _ = promise.fulfill(&v);
                    }
                    Some(Err(e)) => promise.fail(e),
                    None => {}
                });
            }
            Err(e) => p.promise.fail(e),
        }
    }
}
