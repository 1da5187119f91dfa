//! What arrives from the other nodes: every frame to its handler ([`dispatch`], one `match`
//! naming every kind of [`Msg`]), and the end of a connection ([`disconnected`]). Above
//! every handler: the membership's, the bench's, and the cross-node service's.

use std::sync::Arc;

use rayhpc_transport::{Frame, NodeId, Peer};

use crate::bench;
use crate::membership::Membership;
use crate::messages::Msg;
use crate::remote::Remote;
use crate::sync::lock;

/// Hands a frame from `peer` to its handler. Control and stop are the membership's; the
/// bench's are answered on threads of their own; every other kind is handled on the
/// cross-node service's thread, off the connection's reader (the handling may write answers
/// and chunks).
pub(crate) fn dispatch(m: &Membership, peer: &Peer, frame: Frame) {
    let Some(msg) = Msg::of(frame.kind) else {
        eprintln!("rayhpc node: a message of unknown {} from node {}: dropped", frame.kind, peer.node());
        if frame.id != 0 {
            let _ = peer.refuse(frame.id, &format!("unknown message {}", frame.kind));
        }
        return;
    };
    let (id, payload, remote) = (frame.id, frame.payload, &m.remote);
    match msg {
        Msg::Control => m.on_control(peer, id, &payload),
        Msg::Stop => m.set_stop("the head stopped the cluster"),
        Msg::BenchRaw => bench::on_raw(peer, id, &payload),
        Msg::BenchPull => bench::on_pull(remote, peer, id, &payload),
        Msg::Task => remote.now_or_later(peer, id, payload, |r, p, _, b| r.on_task(p, b)),
        Msg::TaskDone => remote.now_or_later(peer, id, payload, |r, p, _, b| r.on_done(p, b)),
        Msg::Pull => remote.later(peer, id, payload, |r, p, id, b| r.on_pull(p, id, b)),
        Msg::Unexport => remote.later(peer, id, payload, |r, p, _, b| r.on_unexport(p, b)),
        Msg::BulkTicket => remote.later(peer, id, payload, |r, p, id, b| r.on_ticket(p, id, b)),
        Msg::Fetch => remote.later(peer, id, payload, |r, p, id, b| r.on_fetch(p, id, b)),
        Msg::ActorNew => remote.later(peer, id, payload, |r, p, id, b| r.on_actor_new(p, id, b)),
        Msg::ActorKill => remote.later(peer, id, payload, |r, _, _, b| r.on_actor_kill(b)),
        Msg::Locate => remote.later(peer, id, payload, |r, p, id, b| r.on_locate(p, id, b)),
        Msg::Unpin => remote.later(peer, id, payload, |r, p, _, b| r.on_unpin(p, b)),
        Msg::Where => remote.later(peer, id, payload, |r, p, id, b| r.on_where(p, id, b)),
        Msg::Pulled => remote.later(peer, id, payload, |r, p, _, b| r.on_pulled(p, b)),
        // After the `Task` it names (frames of a node are handled in order).
        Msg::Cancel => remote.now_or_later(peer, id, payload, |r, p, _, b| r.on_cancel(p, b)),
    }
}

/// `peer`'s connection ended: what went to that node is placed again and what was lent to
/// it let go (the cross-node service), then the membership hears of it (the head counts it
/// dead, a member that lost the head stops).
pub(crate) fn disconnected(m: &Membership, peer: &Peer, reason: &str) {
    m.remote.on_disconnect(peer.node(), reason);
    m.on_disconnect(peer);
}

impl Remote {
    /// A node's connection ended: its tasks go elsewhere (or fail), what was lent to it goes.
    pub(crate) fn on_disconnect(self: &Arc<Self>, node: NodeId, reason: &str) {
        let lost = self.tasks.take_node(node);
        // On the service thread, after the frames that node sent before it went (a LOCATE
        // or WHERE still queued would pin or wait for it again).
        let me = self.clone();
        self.defer(move || {
            lock(&me.objects.pins).remove(&node);
            me.spreads_lose(node);
        });
        let lent = lock(&self.objects.lent).remove(&node).unwrap_or_default();
        for id in lent {
            self.unexport(id);
        }
        let (me, reason) = (self.clone(), reason.to_string());
        self.defer(move || {
            for p in lost {
                me.lost(p, node, &format!("node {node} died while running it ({reason})"));
            }
        });
    }
}
