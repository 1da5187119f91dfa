//! The store's socket protocol: fixed 32-byte frames of four little-endian `u64`s, a request
//! `[op, a, b, c]` answered by `[status, a, b, c]`. The first request of a connection is
//! [`HELLO`]; its answer carries the arena and table descriptors (`SCM_RIGHTS`). Anything
//! malformed is answered with [`E_PROTOCOL`]; the connection and the store carry on.

use crate::store::StoreError;

/// Bytes per frame.
pub const FRAME: usize = 32;
/// Protocol version, checked at [`HELLO`].
pub const VERSION: u64 = 1;

/// `[HELLO, version, pid, 0]` → `[OK, client index, backing code, 0]` + fds (arena, table).
pub const HELLO: u64 = 1;
/// `[CREATE, key lo, key hi, len]` → `[OK, slot, offset, 0]`.
pub const CREATE: u64 = 2;
/// `[SEAL, slot, cached, 0]` → `[OK, 0, 0, 0]`; the client then holds one reference.
pub const SEAL: u64 = 3;
/// `[ABORT, slot, 0, 0]` → `[OK, ..]`: drops an unsealed buffer.
pub const ABORT: u64 = 4;
/// `[RELEASE, key lo, key hi, 0]` → `[OK, ..]`: drops one of the client's references.
pub const RELEASE: u64 = 5;
/// `[GET, key lo, key hi, slot]` → `[OK, state word, offset, len]`: restores a spilled object
/// and pins it for the client.
pub const GET: u64 = 6;
/// `[ADDREF, key lo, key hi, slot]` → `[OK, ..]`: the client holds one more reference.
pub const ADDREF: u64 = 7;

/// Success.
pub const OK: u64 = 0;
/// `[E_TOO_LARGE, size, capacity, 0]`.
pub const E_TOO_LARGE: u64 = 1;
/// `[E_FULL, size, used, capacity]`.
pub const E_FULL: u64 = 2;
/// `[E_TABLE_FULL, objects, 0, 0]`.
pub const E_TABLE_FULL: u64 = 3;
/// `[E_EXISTS, key lo, key hi, 0]`.
pub const E_EXISTS: u64 = 4;
/// `[E_NOT_FOUND, key lo, key hi, 0]`.
pub const E_NOT_FOUND: u64 = 5;
/// `[E_SPILL, ..]`.
pub const E_SPILL: u64 = 6;
/// `[E_PROTOCOL, ..]`: malformed or out-of-order request.
pub const E_PROTOCOL: u64 = 7;
/// `[E_BUSY, ..]`: every client index is taken.
pub const E_BUSY: u64 = 8;

/// Encodes a frame.
pub fn encode(w: [u64; 4]) -> [u8; FRAME] {
    let mut b = [0u8; FRAME];
    for (i, x) in w.iter().enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&x.to_le_bytes());
    }
    b
}

/// Decodes a frame.
pub fn decode(b: &[u8; FRAME]) -> [u64; 4] {
    std::array::from_fn(|i| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes")))
}

/// A key from two words.
pub fn key(lo: u64, hi: u64) -> u128 {
    lo as u128 | ((hi as u128) << 64)
}

/// Two words from a key.
pub fn split(key: u128) -> (u64, u64) {
    (key as u64, (key >> 64) as u64)
}

/// The answer frame of an error.
pub fn error_frame(e: &StoreError) -> [u64; 4] {
    match *e {
        StoreError::TooLarge { size, capacity } => [E_TOO_LARGE, size as u64, capacity as u64, 0],
        StoreError::Full { size, used, capacity, .. } => [E_FULL, size as u64, used as u64, capacity as u64],
        StoreError::TableFull { objects } => [E_TABLE_FULL, objects as u64, 0, 0],
        StoreError::Exists { key } => [E_EXISTS, split(key).0, split(key).1, 0],
        StoreError::NotFound { key } => [E_NOT_FOUND, split(key).0, split(key).1, 0],
        StoreError::Spill(_) => [E_SPILL, 0, 0, 0],
        _ => [E_PROTOCOL, 0, 0, 0],
    }
}

/// The error an answer frame names (`None` for success).
pub fn error_of(f: [u64; 4]) -> Option<StoreError> {
    let [status, a, b, c] = f;
    Some(match status {
        OK => return None,
        E_TOO_LARGE => StoreError::TooLarge { size: a as usize, capacity: b as usize },
        E_FULL => StoreError::Full { size: a as usize, used: b as usize, capacity: c as usize, largest: 0, pinned: 0 },
        E_TABLE_FULL => StoreError::TableFull { objects: a as usize },
        E_EXISTS => StoreError::Exists { key: key(a, b) },
        E_NOT_FOUND => StoreError::NotFound { key: key(a, b) },
        E_SPILL => StoreError::Spill("the store could not spill or restore (see its log)".into()),
        E_BUSY => StoreError::Protocol(format!("every client slot of the store is taken ({})", crate::table::MAX_CLIENTS - 1)),
        _ => StoreError::Protocol(format!("the store refused the request (status {status})")),
    })
}
