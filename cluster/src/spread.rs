//! The broadcast tree: objects from [`TREE_FROM`] up spread as a tree when several nodes
//! pull them. The puller first asks the node it would pull from which node to pull from
//! (`Where`); that owner names the free source nearest to it (itself, or a node that
//! reported a complete copy with `Pulled`), each source serving [`FANOUT`] pull at a time,
//! and queues the asker when none is free. So copies double every round (a binomial tree: N
//! nodes in ⌈log2(N+1)⌉ rounds); a node serves its complete copies like exports. A source
//! that fails is reported and the owner pulled from instead; a node that dies leaves the
//! tree.

use std::time::Duration;

use rayhpc::ids::ObjectId;
use rayhpc_transport::{NodeId, Peer};

use crate::error::ReadError;
use crate::messages::object_id;
use crate::messages::{Msg, PulledMsg, Source};
use crate::pull::Via;
use crate::remote::Remote;
use crate::sync::lock;

/// Objects from this size up spread as a tree when several nodes pull them at once.
pub const TREE_FROM: u64 = 8 << 20;
/// Pulls one node serves at once of an object that spreads as a tree (1: a binomial tree,
/// the nodes that have the object doubling every round).
pub const FANOUT: u32 = 1;

fn source_bytes(s: &Source) -> Vec<u8> {
    postcard::to_allocvec(s).expect("a source serializes")
}

impl Remote {
    /// `Where`: `peer` asks where to pull export `id` from: the free source nearest to this
    /// node (it, or a node that pulled the object already), now or once one is free.
    pub(crate) fn on_where(&self, peer: &Peer, id: u64, payload: &[u8]) {
        let Some(obj) = object_id(peer, id, payload, "where") else { return };
        // Under the exports' lock, so that an unexport cannot slip in between (it forgets the
        // spread after taking that lock).
        let queued = self.objects.if_exported(obj, || lock(&self.spreads).entry(obj).or_default().waiting.push_back((peer.clone(), id)));
        if !queued {
            // Not this node's to spread (a copy it serves, or nothing): pull from it.
            let _ = peer.respond(id, Msg::Where.kind(), &source_bytes(&Source { node: self.me, round: 0 }));
            return;
        }
        self.answer_waiting(obj);
    }

    /// Answers the waiting pullers of `obj` while a source is free.
    fn answer_waiting(&self, obj: ObjectId) {
        let mut answers = Vec::new();
        {
            let mut spreads = lock(&self.spreads);
            let Some(sp) = spreads.get_mut(&obj) else { return };
            while !sp.waiting.is_empty() {
                let sources = std::iter::once((self.me, 0)).chain(sp.have.iter().copied());
                let free = sources.filter(|(n, _)| sp.busy.get(n).copied().unwrap_or(0) < FANOUT).min_by_key(|(_, round)| *round);
                let Some((node, round)) = free else { break };
                let Some((peer, rid)) = sp.waiting.pop_front() else { break };
                *sp.busy.entry(node).or_default() += 1;
                sp.assigned.push((peer.node(), node));
                answers.push((peer, rid, Source { node, round }));
            }
        }
        let mut undo = false;
        for (peer, rid, source) in answers {
            if peer.respond(rid, Msg::Where.kind(), &source_bytes(&source)).is_err() {
                // That puller is gone: its source is free.
                if let Some(sp) = lock(&self.spreads).get_mut(&obj) {
                    undo |= sp.release(peer.node(), source.node);
                }
            }
        }
        if undo {
            self.answer_waiting(obj);
        }
    }

    /// `Pulled`: a pull of an export from a source this node named ended.
    pub(crate) fn on_pulled(&self, peer: &Peer, payload: &[u8]) {
        let Ok(m) = postcard::from_bytes::<PulledMsg>(payload) else { return };
        {
            let mut spreads = lock(&self.spreads);
            let Some(sp) = spreads.get_mut(&m.id) else { return };
            if !sp.release(peer.node(), m.source) {
                return; // not a pull this spread named (a stale report)
            }
            if m.ok {
                let round = if m.source == self.me { 0 } else { sp.have.iter().find(|(n, _)| *n == m.source).map_or(0, |(_, r)| *r) };
                if !sp.have.iter().any(|(n, _)| *n == peer.node()) {
                    sp.have.push((peer.node(), round.saturating_add(1)));
                }
            } else if m.source != self.me {
                // That copy failed (evicted, or its node is going): no longer a source.
                sp.have.retain(|(n, _)| *n != m.source);
            }
        }
        self.answer_waiting(m.id);
    }

    /// Forgets how `obj` spread (it is no longer exported): pullers still waiting pull from
    /// this node, and fail there as any pull of an object gone.
    pub(crate) fn forget_spread(&self, obj: ObjectId) {
        let Some(sp) = lock(&self.spreads).remove(&obj) else { return };
        for (peer, rid) in sp.waiting {
            let _ = peer.respond(rid, Msg::Where.kind(), &source_bytes(&Source { node: self.me, round: 0 }));
        }
    }

    /// Node `node` is gone: it leaves every tree, whose waiting pullers may then be answered.
    pub(crate) fn spreads_lose(&self, node: NodeId) {
        let objs: Vec<ObjectId> = {
            let mut spreads = lock(&self.spreads);
            for sp in spreads.values_mut() {
                sp.lose(node);
            }
            spreads.keys().copied().collect()
        };
        for obj in objs {
            self.answer_waiting(obj);
        }
    }

    /// The node `peer`'s export `id` should be pulled from (asked of `peer` for objects from
    /// [`TREE_FROM`] up), and the connection to it.
    pub(crate) fn source_for(&self, peer: &Peer, id: ObjectId, len: u64) -> (Peer, Option<Source>) {
        if len < TREE_FROM {
            return (peer.clone(), None);
        }
        let ask = postcard::to_allocvec(&id).expect("an id serializes");
        // A source may take a while to be free: as long as the pulls before (a day at most).
        let answer = peer
            .request(Msg::Where.kind(), &ask, Duration::from_secs(86400))
            .ok()
            .and_then(|f| postcard::from_bytes::<Source>(&f.payload).ok());
        let Some(source) = answer else { return (peer.clone(), None) };
        if source.node == peer.node() {
            return (peer.clone(), Some(source));
        }
        match self.peer(source.node) {
            Some(p) => (p, Some(source)),
            None => {
                // Unreachable: tell the owner, pull from it.
                self.report_pulled(peer, id, source, false);
                (peer.clone(), None)
            }
        }
    }

    /// Pulls `peer`'s export `id` into `buf` from the source `peer` names (see
    /// [`Remote::on_where`]); a source other than `peer` that fails is reported and `peer`
    /// pulled from instead. The source it came from, when `peer` named one: the caller
    /// reports the pull's end with [`Remote::report_pulled`] once the copy is complete (so
    /// that it can serve others by then).
    pub(crate) fn pull_spread(
        &self,
        peer: &Peer,
        (from, source): (Peer, Option<Source>),
        id: ObjectId,
        buf: &mut [u8],
        via: Via,
    ) -> Result<Option<Source>, ReadError> {
        let r = self.pull_into(&from, id, buf, via);
        let Some(source) = source else { return r.map(|()| None) };
        match r {
            Ok(()) => Ok(Some(source)),
            Err(e) => {
                self.report_pulled(peer, id, source, false);
                if from.node() == peer.node() {
                    return Err(e);
                }
                eprintln!("rayhpc node: pull of {:032x} from node {} (a copy): {e}; pulling from its owner", id.0, from.node());
                self.pull_into(peer, id, buf, via).map(|()| None)
            }
        }
    }

    /// Tells `peer` (the owner of `id`) that a pull from `source` ended.
    pub(crate) fn report_pulled(&self, peer: &Peer, id: ObjectId, source: Source, ok: bool) {
        let _ = peer.send(Msg::Pulled.kind(), &postcard::to_allocvec(&PulledMsg { id, source: source.node, ok }).expect("serializes"));
    }
}
