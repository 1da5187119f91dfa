//! The messages between the node runtime and a Python worker process, carried by a ring
//! channel (`rayhpc::objstore::ring`). Little-endian, 8-byte headers:
//!
//! | message | layout |
//! |---|---|
//! | define (runtime → worker) | `[1, 0 × 7][key: 16][pickled function]` |
//! | call (runtime → worker) | `[2, 0 × 3][n: u32][key: 16][len: u32 × n][argument bytes …]` |
//! | ok (worker → runtime) | `[1, 0 × 7][result bytes]` |
//! | error (worker → runtime) | `[2, 0 × 3][m: u32][message: m bytes, UTF-8][payload]` |
//!
//! The first argument of a call is the call's layout (how the rest map onto positional and
//! keyword parameters, pickled by the driver; empty for positional-only calls); every other
//! argument is one pickled value. Parsing checks every length: a malformed message is an
//! error, never a read past its end.

/// A function's key: a 16-byte hash of its pickled bytes.
pub type Key = [u8; 16];

pub const DEFINE: u8 = 1;
pub const CALL: u8 = 2;
pub const OK: u8 = 1;
pub const ERR: u8 = 2;

/// A request as the worker reads it.
pub enum Request<'a> {
    Define { key: Key, blob: &'a [u8] },
    Call { key: Key, args: Vec<&'a [u8]> },
}

/// A response as the runtime reads it.
pub enum Response<'a> {
    Ok(&'a [u8]),
    Err { message: &'a str, payload: &'a [u8] },
}

pub fn define_header(key: &Key) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0] = DEFINE;
    h[8..].copy_from_slice(key);
    h
}

/// The header of a call with `args` (the layout first): op, count, key and lengths.
pub fn call_header(key: &[u8], args: &[&[u8]]) -> Result<Vec<u8>, String> {
    let key: &Key = key.try_into().map_err(|_| format!("function key of {} bytes, not 16", key.len()))?;
    let n = u32::try_from(args.len()).map_err(|_| "too many arguments".to_string())?;
    let mut h = Vec::with_capacity(24 + 4 * args.len());
    h.extend_from_slice(&[CALL, 0, 0, 0]);
    h.extend_from_slice(&n.to_le_bytes());
    h.extend_from_slice(key);
    for a in args {
        let len = u32::try_from(a.len()).map_err(|_| format!("argument of {} bytes is over 4 GiB", a.len()))?;
        h.extend_from_slice(&len.to_le_bytes());
    }
    Ok(h)
}

pub fn ok_header() -> [u8; 8] {
    [OK, 0, 0, 0, 0, 0, 0, 0]
}

pub fn err_header(message: &str) -> [u8; 8] {
    let mut h = [ERR, 0, 0, 0, 0, 0, 0, 0];
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
        Some(&CALL) => {
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
            Ok(Request::Call { key, args })
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
            Ok(Response::Err { message, payload: &m[end..] })
        }
        other => Err(format!("unknown response {other:?}")),
    }
}
