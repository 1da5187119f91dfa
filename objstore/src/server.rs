//! The store's Unix socket: clients connect, receive the arena and the table (`SCM_RIGHTS`),
//! and ask for what needs the writer (create, seal, release, restore). One thread per client;
//! when a client's connection ends (exit or crash), its pins, unsealed buffers and references
//! are reclaimed.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::proto::{self, FRAME};
use crate::store::{Store, StoreError};

/// Live connections: a clone of each stream (to shut it down) and its thread.
type Conns = Arc<Mutex<Vec<(UnixStream, JoinHandle<()>)>>>;

/// A running socket server; dropping it stops accepting and disconnects every client.
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    conns: Conns,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Server({})", self.path.display())
    }
}

impl Store {
    /// Serves clients on a Unix socket at `path` (replacing a stale socket file).
    ///
    /// # Errors
    /// The socket could not be bound.
    pub fn serve(self: &Arc<Self>, path: &Path) -> io::Result<Server> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Conns = Arc::default();
        let (store, stop2, conns2) = (self.clone(), stop.clone(), conns.clone());
        let accept = std::thread::Builder::new().name("rayhpc-store-accept".into()).spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::Acquire) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let Ok(keep) = stream.try_clone() else { continue };
                let store = store.clone();
                let spawned = std::thread::Builder::new().name("rayhpc-store-client".into()).spawn(move || serve_client(&store, stream));
                if let Ok(h) = spawned {
                    let mut c = conns2.lock().unwrap_or_else(|e| e.into_inner());
                    c.retain(|(_, h)| !h.is_finished());
                    c.push((keep, h));
                }
            }
        })?;
        Ok(Server { path: path.to_path_buf(), stop, accept: Some(accept), conns })
    }
}

impl Server {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = UnixStream::connect(&self.path); // wakes the accept loop
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for (s, _) in &conns {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        for (_, h) in conns {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn read_frame(s: &mut UnixStream) -> Option<[u64; 4]> {
    let mut b = [0u8; FRAME];
    s.read_exact(&mut b).ok()?;
    Some(proto::decode(&b))
}

fn serve_client(store: &Arc<Store>, mut s: UnixStream) {
    serve_connection(store, &mut s);
    // The server keeps a clone of every stream (to cut them at stop): close this end for the
    // peer now, not when the clone goes.
    let _ = s.shutdown(std::net::Shutdown::Both);
}

fn serve_connection(store: &Arc<Store>, s: &mut UnixStream) {
    let Some([op, version, _pid, _]) = read_frame(s) else { return };
    if op != proto::HELLO || version != proto::VERSION {
        let _ = s.write_all(&proto::encode([proto::E_PROTOCOL, proto::VERSION, 0, 0]));
        return;
    }
    let Some(client) = store.register_client() else {
        let _ = s.write_all(&proto::encode([proto::E_BUSY, 0, 0, 0]));
        return;
    };
    // References this client holds, by slot: dropped if it goes away.
    let mut refs: HashMap<u32, u32> = HashMap::new();
    let hello = proto::encode([proto::OK, client as u64, store.backing().code(), 0]);
    if crate::fdpass::send(s, &hello, &[store.arena().fd(), store.table().arena().fd()]).is_ok() {
        while let Some(req) = read_frame(s) {
            let answer = match handle(store, client, &mut refs, req) {
                Ok(a) => a,
                Err(e) => proto::error_frame(&e),
            };
            if s.write_all(&proto::encode(answer)).is_err() {
                break;
            }
        }
    }
    store.reclaim_client(client, &refs);
}

fn slot_of(x: u64, store: &Store) -> Result<u32, StoreError> {
    u32::try_from(x)
        .ok()
        .filter(|&s| (s as usize) < store.table().slots())
        .ok_or_else(|| StoreError::Protocol(format!("slot {x} out of range")))
}

fn handle(store: &Store, client: u32, refs: &mut HashMap<u32, u32>, [op, a, b, c]: [u64; 4]) -> Result<[u64; 4], StoreError> {
    match op {
        proto::CREATE => {
            let len = usize::try_from(c).map_err(|_| StoreError::TooLarge { size: usize::MAX, capacity: store.capacity() })?;
            let (slot, off) = store.create_for(proto::key(a, b), len, client)?;
            store.prefault(off, len);
            Ok([proto::OK, slot as u64, off as u64, 0])
        }
        proto::SEAL => {
            let slot = slot_of(a, store)?;
            store.seal_for(slot, client, b != 0)?;
            if b == 0 {
                *refs.entry(slot).or_default() += 1;
            }
            Ok([proto::OK, 0, 0, 0])
        }
        proto::ABORT => {
            store.abort_for(slot_of(a, store)?, client)?;
            Ok([proto::OK, 0, 0, 0])
        }
        proto::RELEASE => {
            let key = proto::key(a, b);
            let slot = store.table().lookup(key).map(|(s, _)| s).ok_or(StoreError::NotFound { key })?;
            let n = refs.get_mut(&slot).filter(|n| **n > 0).ok_or(StoreError::NotFound { key })?;
            *n -= 1;
            if *n == 0 {
                refs.remove(&slot);
            }
            store.unref(slot);
            store.sweep();
            Ok([proto::OK, 0, 0, 0])
        }
        proto::ADDREF => {
            let slot = slot_of(c, store)?;
            store.add_ref(slot, proto::key(a, b))?;
            *refs.entry(slot).or_default() += 1;
            Ok([proto::OK, 0, 0, 0])
        }
        proto::GET => {
            let (word, off, len) = store.pin_for(slot_of(c, store)?, proto::key(a, b), client)?;
            Ok([proto::OK, word, off as u64, len as u64])
        }
        _ => Err(StoreError::Protocol(format!("unknown request {op}"))),
    }
}
