//! Spill files: one file per object, written and read whole.
//!
//! Plain positioned writes and reads (`pwrite`/`pread` through `std`), which reach the disk's
//! speed for objects this large; the files are not synced (spilling is for capacity, not
//! durability: the directory goes with the job).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

/// Writes `bytes` to a new file at `path`.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    Ok(())
}

/// Reads the file at `path` into `buf`, which must be exactly its size.
pub fn read(path: &Path, buf: &mut [u8]) -> io::Result<()> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len != buf.len() as u64 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("spill file holds {len} bytes, the object {}", buf.len())));
    }
    f.read_exact(buf)
}
