//! Several processes share one store: they put, get (verifying every byte of every read
//! against the content its key defines), pin and release objects of random sizes, from bytes
//! to hundreds of MiB, in a store smaller than what they hold (so it spills and restores). One
//! of them is killed with SIGKILL midway while it pins objects and writes an unsealed buffer:
//! its pins and buffer are reclaimed, the others carry on, and at the end the store is empty.
//!
//! The client processes are this test binary again, running the ignored `stress_client`
//! test with the socket path in the environment.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayhpc_objstore::{Client, ClientView, Hugepages, Store, StoreConfig, StoreError};

const CLIENTS: u64 = 4;
const ENV_SOCKET: &str = "RAYHPC_STRESS_SOCKET";
const ENV_ID: &str = "RAYHPC_STRESS_ID";
const ENV_SECS: &str = "RAYHPC_STRESS_SECS";

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Word `i` of object `key`: the content every reader can recompute.
fn word(key: u128, i: usize) -> u64 {
    mix((key as u64) ^ ((key >> 64) as u64).rotate_left(17) ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn fill(key: u128, buf: &mut [u8]) {
    let n = buf.len() / 8;
    let mut chunks = buf.chunks_exact_mut(8);
    for (i, c) in (&mut chunks).enumerate() {
        c.copy_from_slice(&word(key, i).to_le_bytes());
    }
    let tail = word(key, n).to_le_bytes();
    let rest = chunks.into_remainder();
    let k = rest.len();
    rest.copy_from_slice(&tail[..k]);
}

/// A checksum of the bytes read against the one the key defines: equal or the read is bad.
fn verify(key: u128, len: usize, bytes: &[u8]) -> bool {
    if bytes.len() != len {
        return false;
    }
    let mut chunks = bytes.chunks_exact(8);
    let mut got = 0u64;
    let mut want = 0u64;
    for (i, c) in (&mut chunks).enumerate() {
        got = got.rotate_left(5) ^ u64::from_le_bytes(c.try_into().unwrap());
        want = want.rotate_left(5) ^ word(key, i);
    }
    let tail = word(key, bytes.len() / 8).to_le_bytes();
    let rest = chunks.remainder();
    got == want && rest == &tail[..rest.len()]
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Log-uniform from 1 byte to 2^max_log2 bytes.
    fn size(&mut self, max_log2: u32) -> usize {
        let bits = self.below(max_log2 as u64 + 1) as u32;
        (1usize << bits) + self.below(1 << bits) as usize
    }
}

fn key(client: u64, seq: u64) -> u128 {
    ((client as u128 + 1) << 64) | seq as u128
}

/// Lengths are part of the key's content: the object `key(c, s)` has length `len_of(...)`,
/// so that any process can verify any object.
fn len_of(k: u128) -> usize {
    let mut r = Rng(mix(k as u64 ^ (k >> 64) as u64));
    // Mostly small and medium; one in 24 is 64..=256 MiB.
    if r.below(24) == 0 {
        (64 << 20) + r.below(192 << 20) as usize
    } else {
        r.size(24)
    }
}

#[test]
#[ignore = "a client process of `several_processes_share_the_store_and_a_crash_loses_nothing`"]
fn stress_client() {
    let (Ok(path), Ok(id), Ok(secs)) = (std::env::var(ENV_SOCKET), std::env::var(ENV_ID), std::env::var(ENV_SECS)) else {
        panic!("run by the multi-process test only");
    };
    let me: u64 = id.parse().unwrap();
    let c = Client::connect(std::path::Path::new(&path)).unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(secs.parse().unwrap());
    let mut rng = Rng(me * 7919 + 1);
    let mut mine: Vec<u128> = Vec::new();
    let mut held: Vec<(ClientView<'_>, u128)> = Vec::new();
    let mut seq = 0u64;
    let (mut reads, mut foreign, mut full) = (0u64, 0u64, 0u64);
    // The victim also holds an unsealed buffer and a pin for its whole (short) life.
    let victim = me == 0;
    let mut unsealed = None;
    if victim {
        let k = key(me, u64::MAX);
        let mut a = c.create(k, 4 << 20).unwrap();
        a.as_mut_slice()[..4].copy_from_slice(b"half");
        unsealed = Some(a);
    }
    println!("ready {}", c.index());
    while Instant::now() < deadline {
        match rng.below(10) {
            0..=3 => {
                let k = key(me, seq);
                seq += 1;
                let len = len_of(k);
                match c.create(k, len) {
                    Ok(mut a) => {
                        fill(k, a.as_mut_slice());
                        a.seal().unwrap();
                        mine.push(k);
                    }
                    Err(StoreError::Full { .. }) => full += 1,
                    Err(e) => panic!("put of {len} bytes: {e}"),
                }
            }
            4..=6 if !mine.is_empty() => {
                let k = mine[rng.below(mine.len() as u64) as usize];
                // A spilled object may not fit back while others pin theirs: a clear refusal.
                let v = match c.get(k) {
                    Ok(v) => v.expect("an object this client holds is there"),
                    Err(StoreError::Full { .. }) => {
                        full += 1;
                        continue;
                    }
                    Err(e) => panic!("get of {k:x}: {e}"),
                };
                assert!(verify(k, len_of(k), &v), "bad read of own object {k:x}");
                reads += 1;
                if held.len() < 2 && rng.below(3) == 0 {
                    held.push((v, k));
                }
            }
            7 => {
                // Another process's object, if it exists now.
                let k = key(rng.below(CLIENTS), seq.saturating_sub(rng.below(24)));
                if let Ok(Some(v)) = c.get(k) {
                    // (absent, not sealed yet, or no room to restore it now: all fine here)
                    assert!(verify(k, len_of(k), &v), "bad read of object {k:x} of another process");
                    foreign += 1;
                }
            }
            _ if !mine.is_empty() => {
                let i = rng.below(mine.len() as u64) as usize;
                c.release(mine.swap_remove(i)).unwrap();
                if !held.is_empty() && !victim {
                    let (v, k) = held.remove(0);
                    assert!(verify(k, len_of(k), &v), "a pinned object changed under its view");
                }
            }
            _ => {}
        }
        while mine.len() > 24 {
            c.release(mine.remove(0)).unwrap();
        }
    }
    for (v, k) in held.drain(..) {
        assert!(verify(k, len_of(k), &v), "a pinned object changed under its view");
    }
    for k in mine.drain(..) {
        c.release(k).unwrap();
    }
    drop(unsealed);
    println!("done reads={reads} foreign={foreign} full={full} puts={seq}");
}

fn spawn(path: &std::path::Path, id: u64, secs: f64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["stress_client", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(ENV_SOCKET, path)
        .env(ENV_ID, id.to_string())
        .env(ENV_SECS, secs.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(30), "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn several_processes_share_the_store_and_a_crash_loses_nothing() {
    let secs: f64 = std::env::var("RAYHPC_STRESS_TOTAL_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(8.0);
    let dir = std::env::temp_dir().join(format!("rayhpc-mp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = StoreConfig::new(256 << 20);
    cfg.hugepages = Hugepages::Never;
    cfg.spill_dir = Some(dir.join("spill"));
    cfg.full_wait = Duration::from_millis(500);
    let store: Arc<Store> = Store::new(&cfg).unwrap();
    let sock: PathBuf = dir.join("store.sock");
    let server = store.serve(&sock).unwrap();

    // The victim runs "forever"; the others for `secs`.
    let mut victim = spawn(&sock, 0, 3600.0);
    let others: Vec<Child> = (1..CLIENTS).map(|i| spawn(&sock, i, secs)).collect();
    let mut out = BufReader::new(victim.stdout.take().unwrap());
    // libtest may print "test stress_client ... " on the same line, before the test's output.
    let mut line = String::new();
    let victim_index: u32 = loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the victim ended before it was ready");
        if let Some(i) = line.find("ready ") {
            break line[i + 6..].trim().parse().unwrap();
        }
    };
    std::thread::sleep(Duration::from_secs_f64(secs / 2.0));
    assert!(store.client_connected(victim_index));
    victim.kill().unwrap(); // SIGKILL
    let status = victim.wait().unwrap();
    assert!(!status.success());
    wait_until("the killed client is reclaimed", || !store.client_connected(victim_index));
    assert_eq!(store.pins_of(victim_index), 0, "the killed process's pins are gone");

    for mut child in others {
        let mut report = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut report).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "a client failed: {status}\n{report}");
        let done = report.lines().find_map(|l| l.find("done ").map(|i| &l[i..])).unwrap_or_else(|| panic!("no report: {report}"));
        eprintln!("client: {done}");
        let reads: u64 = done.split_whitespace().find_map(|w| w.strip_prefix("reads=")).unwrap().parse().unwrap();
        assert!(reads > 0, "the client read something: {done}");
    }
    wait_until("every client is reclaimed", || (1..8).all(|c| !store.client_connected(c)));
    store.sweep();
    let stats = store.stats();
    eprintln!("store: {stats:?}");
    assert_eq!((store.used(), store.objects(), store.spilled_bytes()), (0, 0, 0), "the store is empty at the end");
    assert!(stats.spilled > 0 && stats.restored > 0, "the workload overflowed the store: {stats:?}");
    drop(server);
    drop(store);
    assert_eq!(std::fs::read_dir(dir.join("spill")).map(|d| d.count()).unwrap_or(0), 0, "spill files are gone");
    let _ = std::fs::remove_dir_all(&dir);
}
