//! Another process's way into the store: connect to its socket, map the arena and the table
//! it sends, then read objects in place (lock-free pins) and create objects by writing them
//! straight into the arena. Only what changes the allocator or the table's entries (create,
//! seal, release, restore of a spilled object) is a request to the store.

use std::io::{self, Read, Write};
use std::ops::Deref;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use crate::proto::{self, FRAME};
use crate::shm::{Arena, Backing};
use crate::store::StoreError;
use crate::table::{self, Pin, Pins, State, Table};

/// A connection to a node's store.
pub struct Client {
    sock: Mutex<UnixStream>,
    arena: Arena,
    table: Table,
    pins: Pins,
    writable: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({} of a {} byte store)", self.pins.client(), self.capacity())
    }
}

fn lost(e: io::Error) -> StoreError {
    StoreError::Disconnected(e.to_string())
}

impl Client {
    /// Connects, mapping the arena read-write (this client may create objects).
    ///
    /// # Errors
    /// No store at `path`, a version mismatch, or the mappings failed.
    pub fn connect(path: &Path) -> io::Result<Client> {
        Self::open(path, true)
    }

    /// Connects, mapping the arena read-only (gets only).
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub fn connect_readonly(path: &Path) -> io::Result<Client> {
        Self::open(path, false)
    }

    fn open(path: &Path, writable: bool) -> io::Result<Client> {
        let mut sock = UnixStream::connect(path)?;
        sock.write_all(&proto::encode([proto::HELLO, proto::VERSION, std::process::id() as u64, 0]))?;
        let mut buf = [0u8; FRAME];
        let (n, fds) = crate::fdpass::recv(&sock, &mut buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, "the store closed the connection"));
        }
        sock.read_exact(&mut buf[n..])?;
        let answer = proto::decode(&buf);
        if let Some(e) = proto::error_of(answer) {
            return Err(io::Error::other(e));
        }
        let [_, client, backing, _] = answer;
        let mut fds = fds.into_iter();
        let (Some(arena_fd), Some(table_fd)) = (fds.next(), fds.next()) else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the store sent no descriptors"));
        };
        let backing = Backing::from_code(backing).unwrap_or(Backing::Small);
        let arena = Arena::attach(arena_fd, writable, backing)?;
        let table = Table::attach(Arena::attach(table_fd, true, Backing::Small)?)?;
        Ok(Client { sock: Mutex::new(sock), arena, table, pins: Pins::new(client as u32), writable })
    }

    fn call(&self, req: [u64; 4]) -> Result<[u64; 4], StoreError> {
        // A failed call leaves the socket unusable either way; the guard's state is not shared.
        let mut s = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        s.write_all(&proto::encode(req)).map_err(lost)?;
        let mut b = [0u8; FRAME];
        s.read_exact(&mut b).map_err(lost)?;
        let answer = proto::decode(&b);
        match proto::error_of(answer) {
            Some(e) => Err(e),
            None => Ok(answer),
        }
    }

    /// Reserves a buffer of `len` bytes for `key` in the arena, to write in place and seal.
    ///
    /// # Errors
    /// What the store refused ([`StoreError::TooLarge`], [`StoreError::Full`], ...), or a
    /// read-only client.
    pub fn create(&self, key: u128, len: usize) -> Result<ClientAllocation<'_>, StoreError> {
        if !self.writable {
            return Err(StoreError::Protocol("a read-only client cannot create objects".into()));
        }
        let (lo, hi) = proto::split(key);
        let [_, slot, off, _] = self.call([proto::CREATE, lo, hi, len as u64])?;
        let (slot, off) = (slot as u32, off as usize);
        if off.checked_add(len).is_none_or(|end| end > self.arena.len()) {
            return Err(StoreError::Protocol(format!("the store placed {len} bytes at {off}, outside its arena")));
        }
        Ok(ClientAllocation { client: self, slot, off, len, done: false })
    }

    /// Copies `bytes` into a new object and seals it; the client holds one reference.
    ///
    /// # Errors
    /// As [`Client::create`].
    pub fn put(&self, key: u128, bytes: &[u8]) -> Result<(), StoreError> {
        let mut a = self.create(key, bytes.len())?;
        a.as_mut_slice().copy_from_slice(bytes);
        a.seal()
    }

    /// Drops one of this client's references to `key`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the client holds none.
    pub fn release(&self, key: u128) -> Result<(), StoreError> {
        let (lo, hi) = proto::split(key);
        self.call([proto::RELEASE, lo, hi, 0]).map(drop)
    }

    /// Takes one more reference to a sealed `key` (it then stays until released).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when absent or unsealed.
    pub fn add_ref(&self, key: u128) -> Result<(), StoreError> {
        let (slot, _) = self.table.lookup(key).ok_or(StoreError::NotFound { key })?;
        let (lo, hi) = proto::split(key);
        self.call([proto::ADDREF, lo, hi, slot as u64]).map(drop)
    }

    /// A read-only view of the sealed object `key`, in place; `None` when absent or not
    /// sealed yet. A spilled object is restored by the store first.
    ///
    /// # Errors
    /// The store could not restore it, or is gone.
    pub fn get(&self, key: u128) -> Result<Option<ClientView<'_>>, StoreError> {
        for _ in 0..64 {
            let Some((slot, word)) = self.table.lookup(key) else { return Ok(None) };
            match table::state_of(word) {
                State::Sealed => match self.pins.pin(&self.table, slot, word) {
                    Pin::Pinned => return self.view(slot).map(Some),
                    Pin::Stale => continue,
                    Pin::Busy => {}
                },
                State::Spilled => {}
                _ => return Ok(None),
            }
            // Held by the store or on disk: it restores and pins for us, while this process
            // cannot unpin the entry (its shard is locked by `pin_with`).
            let (lo, hi) = proto::split(key);
            match self.pins.pin_with(slot, || self.call([proto::GET, lo, hi, slot as u64]).map(|[_, w, _, _]| w)) {
                // This process may already have pinned the slot for another key (the entry
                // was reused since the lookup): the pin holds the key still, so check it.
                Ok(_) if self.table.key(slot) != key => {
                    self.pins.unpin(&self.table, slot);
                    continue;
                }
                Ok(_) => return self.view(slot).map(Some),
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Protocol(format!("object {key:032x} kept changing while being looked up")))
    }

    /// The view of a slot this process has pinned. The range is checked against the arena:
    /// the table is shared memory, and a range past the mapping must be an error, not a read.
    fn view(&self, slot: u32) -> Result<ClientView<'_>, StoreError> {
        let (off, len) = self.table.place(slot);
        if off.checked_add(len).is_none_or(|end| end > self.arena.len()) {
            self.pins.unpin(&self.table, slot);
            return Err(StoreError::Protocol(format!("object range {off}+{len} lies outside the arena")));
        }
        Ok(ClientView { client: self, slot, off, len })
    }

    /// This client's index (1 and up; 0 is the store's process).
    pub fn index(&self) -> u32 {
        self.pins.client()
    }
    /// The store's capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.table.h(table::H_CAPACITY).load(Ordering::Relaxed) as usize
    }
    /// Bytes of objects in memory, as last published by the store.
    pub fn used(&self) -> usize {
        self.table.h(table::H_USED).load(Ordering::Relaxed) as usize
    }
    /// Objects held, as last published by the store.
    pub fn objects(&self) -> usize {
        self.table.h(table::H_OBJECTS).load(Ordering::Relaxed) as usize
    }
    /// What backs the arena.
    pub fn backing(&self) -> Backing {
        self.arena.backing()
    }
}

/// A buffer this client is writing; dropped unsealed, it goes back to the store.
#[derive(Debug)]
pub struct ClientAllocation<'a> {
    client: &'a Client,
    slot: u32,
    off: usize,
    len: usize,
    done: bool,
}

impl ClientAllocation<'_> {
    /// The buffer, in the shared arena.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the store reserved this range for this client's entry, which stays held
        // (no reader can pin it) until sealed; the arena is mapped writable (checked at
        // create) and the range was checked against its length; `&mut self` makes this the
        // only slice of it in this process.
        unsafe { self.client.arena.bytes_mut(self.off, self.len) }
    }

    /// Seals the object: readable by everyone, one reference held by this client.
    ///
    /// # Errors
    /// The store is gone.
    pub fn seal(mut self) -> Result<(), StoreError> {
        self.done = true;
        self.client.call([proto::SEAL, self.slot as u64, 0, 0]).map(drop)
    }
}

impl Drop for ClientAllocation<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.client.call([proto::ABORT, self.slot as u64, 0, 0]);
        }
    }
}

/// Read-only bytes of a sealed object, in the store's arena, pinned while the view lives.
pub struct ClientView<'a> {
    client: &'a Client,
    slot: u32,
    off: usize,
    len: usize,
}

impl Deref for ClientView<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the entry is sealed and pinned by this view: the store neither frees, moves
        // nor rewrites it until the pin goes. Its range was published with the seal.
        unsafe { self.client.arena.bytes(self.off, self.len) }
    }
}

impl Drop for ClientView<'_> {
    fn drop(&mut self) {
        self.client.pins.unpin(&self.client.table, self.slot);
    }
}

impl std::fmt::Debug for ClientView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientView({} bytes at {})", self.len, self.off)
    }
}
