//! How the nodes of a launch find the head without a hand-assigned port: the head binds an
//! ephemeral port, then writes the job's secret (mode 0600) and its address into a directory
//! of the launch on a path every node sees; the other nodes wait for the address, read the
//! secret and connect.
//!
//! The directory is `<base>/job-<job id>[.<step>]`: per job and per Slurm step, so that two
//! launches (two steps, two jobs) never read each other's files. `<base>` is
//! `$RAYHPC_RENDEZVOUS_DIR`, else `$SLURM_SUBMIT_DIR/.rayhpc` (the submit directory is on a
//! shared file system on a cluster), else `$HOME/.rayhpc`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes of a job secret.
pub const SECRET_LEN: usize = 32;

/// The base directory of rendezvous directories (see the module's docs).
pub fn base() -> PathBuf {
    if let Some(d) = std::env::var_os("RAYHPC_RENDEZVOUS_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("SLURM_SUBMIT_DIR") {
        return PathBuf::from(d).join(".rayhpc");
    }
    std::env::var_os("HOME").map_or_else(|| std::env::temp_dir().join(".rayhpc"), |h| PathBuf::from(h).join(".rayhpc"))
}

/// The rendezvous directory of launch `name` (a job id, with the step when there is one).
pub fn dir(base: &Path, name: &str) -> PathBuf {
    base.join(format!("job-{name}"))
}

/// A fresh secret: [`SECRET_LEN`] bytes from the kernel's random source.
///
/// # Errors
/// `/dev/urandom` cannot be read.
pub fn new_secret() -> std::io::Result<Vec<u8>> {
    let mut s = vec![0u8; SECRET_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut s)?;
    Ok(s)
}

/// The head's side: writes the secret (0600, first) and the address (renamed into place,
/// so a reader sees all of it or nothing) into `dir`, removing what a previous launch of the
/// same name left.
///
/// # Errors
/// The directory or files cannot be written.
pub fn publish(dir: &Path, addr: &str, secret: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let _ = std::fs::remove_dir_all(dir);
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
    }
    // Made here, now (not one that someone else made): fails if it exists.
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dir.join("secret"))?;
    f.write_all(secret)?;
    f.sync_all()?;
    let tmp = dir.join(format!("head.{}", std::process::id()));
    std::fs::write(&tmp, addr)?;
    std::fs::rename(tmp, dir.join("head"))
}

/// The other nodes' side: waits (polling) until `dir` holds the head's address, then reads
/// it and the secret.
///
/// # Errors
/// Nothing appeared within `timeout`, or the secret is not [`SECRET_LEN`] bytes or is
/// readable by others than its owner.
pub fn find(dir: &Path, timeout: Duration) -> std::io::Result<(String, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Ok(addr) = std::fs::read_to_string(dir.join("head")) {
            check_private(dir)?;
            let secret = read_secret(&dir.join("secret"))?;
            return Ok((addr.trim().to_string(), secret));
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no head published its address in {} within {timeout:?}", dir.display()),
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Fails unless `path` belongs to this user and nobody else may read or write it.
fn check_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let me = std::fs::metadata("/proc/self")?.uid();
    let m = std::fs::metadata(path)?;
    let mode = m.permissions().mode();
    if m.uid() != me {
        return Err(std::io::Error::other(format!("{} belongs to uid {}, not to this user ({me}): refused", path.display(), m.uid())));
    }
    if mode & 0o077 != 0 {
        return Err(std::io::Error::other(format!("{} is open to others (mode {:o}): refused", path.display(), mode & 0o777)));
    }
    Ok(())
}

/// Reads a job secret: a file of this user's, private, of [`SECRET_LEN`] bytes.
///
/// # Errors
/// It cannot be read, or is not private or not a secret.
pub fn read_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    check_private(path)?;
    let secret = std::fs::read(path)?;
    if secret.len() != SECRET_LEN {
        return Err(std::io::Error::other(format!("{} is not a job secret ({} bytes, not {SECRET_LEN})", path.display(), secret.len())));
    }
    Ok(secret)
}

/// Removes the rendezvous directory (the head, when the launch ends).
pub fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_publishes_and_the_others_find_it_or_time_out() {
        let base = std::env::temp_dir().join(format!("rayhpc-rdv-{}", std::process::id()));
        let d = dir(&base, "7.0");
        let e = find(&d, Duration::from_millis(30)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        let secret = new_secret().unwrap();
        assert_eq!(secret.len(), SECRET_LEN);
        assert_ne!(secret, new_secret().unwrap());
        let waiter = {
            let d = d.clone();
            std::thread::spawn(move || find(&d, Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(20));
        publish(&d, "10.0.0.1:4242", &secret).unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), ("10.0.0.1:4242".to_string(), secret.clone()));
        // A secret others can read is refused.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("secret"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(find(&d, Duration::ZERO).unwrap_err().to_string().contains("open to others"));
        // A second publish of the same name replaces the first.
        publish(&d, "10.0.0.2:1", &secret).unwrap();
        assert_eq!(find(&d, Duration::ZERO).unwrap().0, "10.0.0.2:1");
        remove(&d);
        assert!(!d.exists());
        let _ = std::fs::remove_dir_all(&base);
    }
}
