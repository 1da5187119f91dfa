//! The exporter's side of reads ([`crate::read`]): the object a request names, as this
//! node serves it (an export, or a complete copy: see `Objects::served`), answered as
//! `Pull` chunks, `BulkTicket` tickets for the bulk listener ([`crate::bulk::BulkServer`]),
//! and `Locate` pins for fabric reads, let go at `Unpin`. A request for an object this node
//! does not serve, or for bytes outside it, is refused (the reader's
//! [`crate::ReadError::Refused`]).

use rayhpc::ids::ObjectId;
use rayhpc_transport::Peer;

use crate::messages::{object_id, Msg, PullMsg, Ticket};
use crate::remote::Remote;
use crate::sync::lock;

impl Remote {
    /// `BulkTicket`: a ticket for a bulk stream of an exported object.
    pub(crate) fn on_ticket(&self, peer: &Peer, id: u64, payload: &[u8]) {
        let Some(obj) = object_id(peer, id, payload, "ticket request") else { return };
        let r = self.objects.served(obj);
        let Some(r) = r else {
            let _ = peer.refuse(id, &format!("object {:032x} is not exported here", obj.0));
            return;
        };
        let server = &self.objects.bulk;
        let len = match r.try_view() {
            Some(Ok(v)) => v.len() as u64,
            _ => {
                let _ = peer.refuse(id, "the object cannot be read");
                return;
            }
        };
        match server.ticket(r) {
            Ok(ticket) => {
                let t = Ticket { ticket, addr: server.addr(), len };
                let _ = peer.respond(id, Msg::BulkTicket.kind(), &postcard::to_allocvec(&t).expect("a ticket serializes"));
            }
            Err(e) => {
                let _ = peer.refuse(id, &format!("no ticket: {e}"));
            }
        }
    }

    /// `Locate`: where an exported object lies in this node's arena, for `peer`'s fabric
    /// read: pinned there for it until it says `Unpin` (or its connection ends).
    pub(crate) fn on_locate(&self, peer: &Peer, id: u64, payload: &[u8]) {
        let Some(obj) = object_id(peer, id, payload, "locate") else { return };
        let r = self.objects.served(obj);
        let (Some(r), Some(service)) = (r, self.service.upgrade()) else {
            let _ = peer.refuse(id, &format!("object {:032x} is not exported here", obj.0));
            return;
        };
        let Some(Ok(view)) = r.try_view() else {
            let _ = peer.refuse(id, "the object cannot be read");
            return;
        };
        let (base, len) = service.runtime().object_store().region();
        let offset = (view.as_ptr() as usize).wrapping_sub(base as usize);
        if view.stored_key().is_none() || (view.as_ptr() as usize) < base as usize || offset + view.len() > len {
            let _ = peer.refuse(id, "the object is not in the arena");
            return;
        }
        let answer = (offset as u64, view.len() as u64);
        lock(&self.objects.pins).entry(peer.node()).or_default().push((obj, view));
        let _ = peer.respond(id, Msg::Locate.kind(), &postcard::to_allocvec(&answer).expect("a location serializes"));
    }

    /// `Unpin`: `peer` read what `Locate` pinned for it.
    pub(crate) fn on_unpin(&self, peer: &Peer, payload: &[u8]) {
        let Ok(obj) = postcard::from_bytes::<ObjectId>(payload) else { return };
        let mut pins = lock(&self.objects.pins);
        if let Some(list) = pins.get_mut(&peer.node()) {
            if let Some(i) = list.iter().position(|(x, _)| *x == obj) {
                list.swap_remove(i);
            }
        }
    }

    /// `Pull`: serves a chunk of an exported object.
    pub(crate) fn on_pull(&self, peer: &Peer, id: u64, payload: &[u8]) {
        let Ok(m) = postcard::from_bytes::<PullMsg>(payload) else {
            let _ = peer.refuse(id, "a malformed pull");
            return;
        };
        let Some(r) = self.objects.served(m.id) else {
            let _ = peer.refuse(id, &format!("object {:032x} is not exported here", m.id.0));
            return;
        };
        match r.try_view() {
            Some(Ok(v)) => {
                let a = usize::try_from(m.offset).unwrap_or(usize::MAX);
                let b = a.saturating_add(m.len as usize);
                match v.get(a..b) {
                    Some(chunk) => {
                        let _ = peer.respond(id, Msg::Pull.kind(), chunk);
                    }
                    None => {
                        let _ = peer.refuse(id, &format!("bytes {a}..{b} of a {}-byte object", v.len()));
                    }
                }
            }
            _ => {
                let _ = peer.refuse(id, "the object cannot be read");
            }
        }
    }
}
