//! The libfabric RMA backend (feature `fabric`), over `tcp;ofi_rxm` and `shm`: exact bytes
//! for reads of many sizes and offsets, from another process and within one, concurrent
//! readers, and errors (bounds, unknown provider, garbage address, exited or stopped peer).
//!
//! A provider that fi_getinfo does not offer is skipped with a note on stderr. The peer
//! process is this test binary again, running the ignored `child_target` test. TCP binds
//! to 127.0.0.1. Timeouts are generous upper bounds; no test asserts a speed.
#![cfg(feature = "fabric")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rayhpc_transport::fabric::{providers, Fabric, FabricError, FabricOptions, Region, RemoteRegion, PREFERRED_PROVIDERS, PROVIDER_ENV};

const PROVIDERS: [&str; 2] = ["tcp;ofi_rxm", "shm"];
const MIB: usize = 1 << 20;
/// The target's region: room for a 64 MiB read at an odd offset.
const TARGET_LEN: usize = 64 * MIB + 64 * 1024;
/// (remote offset, local offset, length): 1 byte, across 4 KiB pages, across 4 MiB chunks,
/// 64 MiB.
const READS: [(u64, usize, usize); 6] =
    [(0, 0, 1), (12_345, 7, 1), (4093, 1, 4096 + 3), (3 * MIB as u64 + 11, 5, 5 * MIB + 7), (0, 0, TARGET_LEN), (777, 333, 64 * MIB)];

/// The byte at `i` of every target region: no period a misplaced chunk could hide in.
fn pattern(i: usize) -> u8 {
    ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (i >> 20) as u8
}

fn offered(provider: &str) -> bool {
    let all = providers();
    if all.iter().any(|p| p == provider) {
        true
    } else {
        eprintln!("note: libfabric offers no `{provider}` here (offered: {all:?}): skipped");
        false
    }
}

fn options(provider: &str, timeout: Duration) -> FabricOptions {
    FabricOptions { provider: Some(provider.into()), source: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), timeout, ..FabricOptions::default() }
}

fn open(provider: &str) -> Fabric {
    Fabric::open(&options(provider, Duration::from_secs(60))).unwrap()
}

/// Memory and its registration; the registration is dropped first (field order).
struct Mem {
    region: Region,
    buf: Vec<u8>,
}

fn mem(fabric: &Fabric, len: usize, fill: impl Fn(usize) -> u8) -> Mem {
    let mut buf: Vec<u8> = (0..len).map(fill).collect();
    // SAFETY: the Vec's heap buffer outlives the region (dropped first, see Mem) and moving
    // the Vec does not move it; nothing touches it while a read is in flight.
    let region = unsafe { fabric.register(buf.as_mut_ptr(), len) }.unwrap();
    Mem { region, buf }
}

/// Checks the `len` bytes at `local` of `m` against the target's pattern from `remote`.
fn check(m: &Mem, local: usize, remote: u64, len: usize) {
    let got = &m.buf[local..local + len];
    if let Some(i) = (0..len).find(|&i| got[i] != pattern(remote as usize + i)) {
        panic!("byte {i} of a {len}-byte read at remote offset {remote} is {} instead of {}", got[i], pattern(remote as usize + i));
    }
}

fn read_all(reader: &Fabric, peer_address: &[u8], remote: RemoteRegion) {
    let peer = reader.connect(peer_address).unwrap();
    let mut local = mem(reader, TARGET_LEN + 4096, |_| 0xEE);
    for (roff, loff, len) in READS {
        local.buf.fill(0xEE);
        reader.read(peer, remote, roff, &local.region, loff, len).unwrap();
        check(&local, loff, roff, len);
        // Nothing outside the range was written.
        if let Some(after) = local.buf.get(loff + len) {
            assert_eq!(*after, 0xEE, "a byte after the range was written");
        }
        if loff > 0 {
            assert_eq!(local.buf[loff - 1], 0xEE, "a byte before the range was written");
        }
    }
}

// ---- the target process -------------------------------------------------------------------

const CHILD_ENV: &str = "RAYHPC_FABRIC_TEST_CHILD";

/// Not a test of its own: the target process of the tests below (run with the provider in
/// the environment). Serves its region until its standard input closes.
#[test]
#[ignore]
fn child_target() {
    let Ok(provider) = std::env::var(CHILD_ENV) else { return };
    let fabric = open(&provider);
    let target = mem(&fabric, TARGET_LEN, pattern);
    let r = target.region.remote();
    let address: String = fabric.address().iter().map(|b| format!("{b:02x}")).collect();
    println!("\nfabric target {address} {} {} {}", r.base, r.key, r.len);
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

struct Target {
    child: Child,
    address: Vec<u8>,
    remote: RemoteRegion,
    _stdout: std::io::Lines<BufReader<ChildStdout>>,
}

impl Drop for Target {
    /// Closes the target's stdin so that it exits and libfabric removes its files (a shm
    /// endpoint has one of 16 MiB in /dev/shm); kills it if it does not within 10 s.
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_shm_files(self.child.id());
    }
}

/// Removes what the shm provider of a killed process `pid` left in /dev/shm ("<pid>:...").
fn remove_shm_files(pid: u32) {
    let prefix = format!("{pid}:");
    for entry in std::fs::read_dir("/dev/shm").into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn spawn_target(provider: &str) -> Target {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_target", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, provider)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = loop {
        let line = lines.next().expect("the target exited before serving").unwrap();
        if let Some(rest) = line.strip_prefix("fabric target ") {
            break rest.to_owned();
        }
    };
    let f: Vec<&str> = line.split(' ').collect();
    let address = (0..f[0].len()).step_by(2).map(|i| u8::from_str_radix(&f[0][i..i + 2], 16).unwrap()).collect();
    let remote = RemoteRegion { base: f[1].parse().unwrap(), key: f[2].parse().unwrap(), len: f[3].parse().unwrap() };
    Target { child, address, remote, _stdout: lines }
}

/// CPU time (user + system, in clock ticks) a process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}

/// Stops process `pid` and returns once every one of its threads is stopped: `kill` returns
/// when the signal is sent, and a busy machine may let the target serve a read after that.
fn stop(pid: u32) {
    signal(pid, "-STOP");
    let stopped = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
        tasks.flatten().all(|t| {
            // The state is the field after the command's closing parenthesis.
            std::fs::read_to_string(t.path().join("stat"))
                .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T')))
        })
    };
    let give_up = Instant::now() + Duration::from_secs(60);
    while !stopped() {
        assert!(Instant::now() < give_up, "process {pid} never stopped");
        thread::sleep(Duration::from_millis(1));
    }
}

// ---- conformance ----------------------------------------------------------------------------

#[test]
fn providers_are_listed_and_one_is_picked() {
    let all = providers();
    eprintln!("libfabric providers with RMA reads on RDM endpoints: {all:?}");
    assert!(!all.is_empty());
    let opts = FabricOptions { source: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), ..FabricOptions::default() };
    let f = Fabric::open(&opts).unwrap();
    let expected = std::env::var(PROVIDER_ENV).ok().filter(|p| !p.is_empty());
    match expected {
        Some(p) => assert_eq!(f.provider(), p),
        None => assert!(PREFERRED_PROVIDERS.contains(&f.provider()), "{}", f.provider()),
    }
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Fabric>();
    send_sync::<Region>();
}

#[test]
fn reads_from_another_process_are_exact() {
    for provider in PROVIDERS.into_iter().filter(|p| offered(p)) {
        let target = spawn_target(provider);
        let reader = open(provider);
        eprintln!("{provider}: {:?}", reader.mr_mode());
        read_all(&reader, &target.address, target.remote);
    }
}

#[test]
fn reads_within_one_process_are_exact() {
    for provider in PROVIDERS.into_iter().filter(|p| offered(p)) {
        let (a, b) = (open(provider), open(provider));
        let target = mem(&b, TARGET_LEN, pattern);
        read_all(&a, &b.address(), target.region.remote());
        // And back: b reads from a's region.
        let source = mem(&a, 4 * MIB, pattern);
        let mut local = mem(&b, 4 * MIB, |_| 0);
        let peer = b.connect(&a.address()).unwrap();
        b.read(peer, source.region.remote(), 100, &local.region, 0, 4 * MIB - 100).unwrap();
        check(&local, 0, 100, 4 * MIB - 100);
        local.buf[0] = 0;
    }
}

#[test]
fn the_remote_region_base_follows_the_mr_mode() {
    for provider in PROVIDERS.into_iter().filter(|p| offered(p)) {
        let f = open(provider);
        let m = mem(&f, 4096, |_| 0);
        let r = m.region.remote();
        let expected = if f.mr_mode().virt_addr { m.region.as_ptr() as u64 } else { 0 };
        assert_eq!(r.base, expected, "{provider}: {:?}", f.mr_mode());
        assert_eq!(r.len, 4096);
        assert_eq!(f.provider(), provider);
    }
}

#[test]
fn four_threads_read_disjoint_ranges_concurrently() {
    const PART: usize = 6 * MIB + 5;
    for provider in PROVIDERS.into_iter().filter(|p| offered(p)) {
        let target = spawn_target(provider);
        let reader = Arc::new(open(provider));
        let peer = reader.connect(&target.address).unwrap();
        let local = Arc::new(mem(&reader, 4 * PART, |_| 0));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (reader, local, remote) = (Arc::clone(&reader), Arc::clone(&local), target.remote);
                thread::spawn(move || {
                    for round in 0..3 {
                        let roff = (t * PART + round * 4099) as u64;
                        reader.read(peer, remote, roff, &local.region, t * PART, PART).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for t in 0..4 {
            check(&local, t * PART, (t * PART + 2 * 4099) as u64, PART);
        }
    }
}

// ---- errors ---------------------------------------------------------------------------------

#[test]
fn reads_out_of_bounds_fail() {
    for provider in PROVIDERS.into_iter().filter(|p| offered(p)) {
        let (a, b) = (open(provider), open(provider));
        let target = mem(&b, MIB, pattern);
        let local = mem(&a, MIB, |_| 0);
        let peer = a.connect(&b.address()).unwrap();
        let r = target.region.remote();
        for (roff, loff, len) in [(MIB as u64 - 10, 0, 11), (1, 0, MIB), (u64::MAX, 0, 2), (0, 1, MIB), (0, usize::MAX, 2)] {
            let e = a.read(peer, r, roff, &local.region, loff, len).unwrap_err();
            assert!(matches!(e, FabricError::OutOfBounds { .. }), "{e}");
        }
        // A region from another fabric is refused too.
        let foreign = mem(&b, 16, |_| 0);
        assert!(a.read(peer, r, 0, &foreign.region, 0, 16).is_err());
        a.read(peer, r, MIB as u64 - 10, &local.region, 0, 10).unwrap();
    }
}

#[test]
fn a_forged_remote_region_fails_on_tcp() {
    // The TCP provider checks the key's range; the read must end in an error completion,
    // not a crash or a hang. (shm in libfabric 1.17 does not check, see the module docs.)
    let provider = "tcp;ofi_rxm";
    if !offered(provider) {
        return;
    }
    let (a, b) = (open(provider), open(provider));
    let target = mem(&b, MIB, pattern);
    let local = mem(&a, 2 * MIB, |_| 0);
    let peer = a.connect(&b.address()).unwrap();
    let forged = RemoteRegion { len: 4 * MIB as u64, ..target.region.remote() };
    let e = a.read(peer, forged, 0, &local.region, 0, 2 * MIB).unwrap_err();
    assert!(matches!(e, FabricError::Failed(_)), "{e}");
    eprintln!("forged region: {e}");
    let bad_key = RemoteRegion { key: target.region.remote().key + 1000, ..target.region.remote() };
    let e = a.read(peer, bad_key, 0, &local.region, 0, 64).unwrap_err();
    eprintln!("bad key: {e}");
    // The endpoint and the peer still work (over a new connection).
    a.read(peer, target.region.remote(), 5, &local.region, 0, 1000).unwrap();
    check(&local, 0, 5, 1000);
}

#[test]
fn an_unknown_provider_is_a_clear_error() {
    let e = Fabric::open(&FabricOptions { provider: Some("no-such-provider".into()), ..FabricOptions::default() }).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, FabricError::NoProvider(_)), "{e:?}");
    assert!(text.contains("no-such-provider") && text.contains("offered"), "{text}");
    eprintln!("{text}");
}

#[test]
fn a_garbage_peer_address_is_refused() {
    for provider in PROVIDERS.into_iter().filter(|p| offered(p)) {
        let f = open(provider);
        for garbage in [&b""[..], b"garbage", &[0xFF; 16], &[0u8; 300], b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10"]
        {
            let e = f.connect(garbage).unwrap_err();
            assert!(matches!(e, FabricError::BadAddress(_)), "{provider}: {e}");
        }
    }
}

#[test]
fn a_read_from_an_exited_peer_fails_in_bounded_time() {
    for provider in PROVIDERS.into_iter().filter(|p| offered(p)) {
        let reader = Fabric::open(&options(provider, Duration::from_secs(3))).unwrap();
        let local = mem(&reader, MIB, |_| 0);
        // One peer read before it exits, one never read.
        for read_first in [true, false] {
            let mut target = spawn_target(provider);
            let peer = reader.connect(&target.address).unwrap();
            if read_first {
                reader.read(peer, target.remote, 0, &local.region, 0, MIB).unwrap();
            }
            target.child.kill().unwrap();
            target.child.wait().unwrap();
            let start = Instant::now();
            let e = reader.read(peer, target.remote, 0, &local.region, 0, MIB).unwrap_err();
            eprintln!("{provider}, read before exit {read_first}: {e} after {:?}", start.elapsed());
            assert!(start.elapsed() < Duration::from_secs(20));
        }
    }
}

#[test]
fn a_stopped_peer_times_out_then_can_be_reconnected() {
    for provider in PROVIDERS.into_iter().filter(|p| offered(p)) {
        let timeout = Duration::from_secs(2);
        let reader = Fabric::open(&options(provider, timeout)).unwrap();
        let local = mem(&reader, 8 * MIB, |_| 0);
        let target = spawn_target(provider);
        let peer = reader.connect(&target.address).unwrap();
        reader.read(peer, target.remote, 0, &local.region, 0, 8 * MIB).unwrap();
        stop(target.child.id());
        let start = Instant::now();
        // shm reads the target's memory directly (CMA): a stopped target may still serve.
        let result = reader.read(peer, target.remote, 0, &local.region, 0, 8 * MIB);
        eprintln!("{provider}, stopped peer: {result:?} after {:?}", start.elapsed());
        assert!(start.elapsed() < Duration::from_secs(20));
        match result {
            Err(FabricError::Timeout { .. }) => {}
            Ok(()) if provider == "shm" => check(&local, 0, 0, 8 * MIB),
            other => panic!("{provider}: {other:?}"),
        }
        signal(target.child.id(), "-CONT");
        // The same PeerAddr works again (a new connection).
        reader.read(peer, target.remote, 1, &local.region, 0, 8 * MIB).unwrap();
        check(&local, 0, 1, 8 * MIB);
    }
}

#[test]
fn an_idle_fabric_uses_no_cpu() {
    for provider in PROVIDERS.into_iter().filter(|p| offered(p)) {
        let target = spawn_target(provider);
        // Served once, then idle.
        let reader = open(provider);
        let local = mem(&reader, 4096, |_| 0);
        reader.read(reader.connect(&target.address).unwrap(), target.remote, 0, &local.region, 0, 4096).unwrap();
        thread::sleep(Duration::from_millis(300));
        let before = cpu_ticks(target.child.id());
        thread::sleep(Duration::from_secs(2));
        let used = cpu_ticks(target.child.id()) - before;
        eprintln!("{provider}: an idle target used {used} clock ticks of CPU in 2 s");
        // 10 ticks (usually 100 ms) in 2 s: 5% of a core, far above the expected ~0.
        assert!(used <= 10, "{provider}: {used} ticks in 2 s");
    }
}
