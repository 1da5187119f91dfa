//! The `rayhpc` binary as a user runs it.

use std::process::Command;

fn rayhpc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rayhpc"))
}

#[test]
fn bench_json_reports_every_figure() {
    let out = rayhpc()
        .args([
            "bench",
            "--json",
            "--tasks",
            "5000",
            "--round-trips",
            "200",
            "--trials",
            "1",
            "--idle-secs",
            "0.2",
            "--object-mib",
            "2",
            "--spill-mib",
            "128",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in [
        "tasks_async_per_s",
        "tasks_sync_us",
        "actor_calls_async_per_s",
        "actor_calls_sync_us",
        "put_small_per_s",
        "get_small_per_s",
        "tree_reduce_1024_ms",
        "wait_1k_refs_us",
        "memcpy_gib_per_s",
        "put_gib_per_s",
        "put_cold_gib_per_s",
        "get_gib_per_s",
        "put_inline_per_s",
        "get_inline_per_s",
        "spill_gib_per_s",
        "restore_gib_per_s",
        "spill_direct_gib_per_s",
        "restore_direct_gib_per_s",
    ] {
        let x = v[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {v}"));
        assert!(x.is_finite() && x > 0.0, "{key} = {x}");
    }
    let idle = v["idle_cpu_percent"].as_f64().unwrap();
    assert!((0.0..=200.0).contains(&idle), "idle_cpu_percent = {idle}");
    assert!(v["executors"].as_u64().unwrap() >= 1);
    assert_eq!(v["object_bytes"].as_u64(), Some(2 << 20));
    let backing = v["store_backing"].as_str().unwrap();
    assert!(["hugetlb", "thp", "4k"].iter().any(|b| backing.contains(b)), "{backing}");
    assert!(v["spilled_bytes"].as_u64().unwrap() >= 64 << 20, "a 32 MiB store holding 128 MiB spills");
    assert!(v["spill_direct_io"].as_str().unwrap().contains("direct") || v["spill_direct_io"].as_str().unwrap().contains("buffered"));
}

#[test]
fn bench_table_is_readable() {
    let out = rayhpc()
        .args([
            "bench",
            "--tasks",
            "2000",
            "--round-trips",
            "100",
            "--trials",
            "1",
            "--idle-secs",
            "0.1",
            "--object-mib",
            "4",
            "--spill-mib",
            "0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("tasks/s") && text.contains("idle runtime CPU use"), "{text}");
}

#[test]
fn bad_flags_are_refused_with_a_message() {
    let out = rayhpc().args(["bench", "--tasks", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be positive"));
    let out = rayhpc().args(["bench", "--idle-secs", "nan"]).output().unwrap();
    assert!(!out.status.success());
    let out = rayhpc().arg("frobnicate").output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn executors_follow_the_affinity_mask() {
    // `taskset` (util-linux) narrows the mask the way a Slurm cpuset does.
    let Ok(out) = Command::new("taskset")
        .args([
            "-c",
            "0",
            env!("CARGO_BIN_EXE_rayhpc"),
            "bench",
            "--json",
            "--tasks",
            "1000",
            "--round-trips",
            "50",
            "--trials",
            "1",
            "--idle-secs",
            "0.1",
            "--object-mib",
            "4",
            "--spill-mib",
            "0",
        ])
        .output()
    else {
        panic!("taskset (util-linux) is needed for this test");
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["executors"].as_u64(), Some(1), "{v}");
}

/// A fresh runtime directory for one test (so that tests never share address files).
fn runtime_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rayhpc-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn launch_without_python_runs_a_native_node_the_command_sees_and_exits_with_its_code() {
    let dir = runtime_dir("native");
    // No python3 on this PATH: the node says it runs native tasks only, and still serves.
    let out = rayhpc()
        .args([
            "launch",
            "--num-cpus",
            "1",
            "--",
            "/bin/sh",
            "-c",
            r#"test -S "$RAYHPC_ADDRESS/node.sock" && read -r a < "$RAYHPC_RUNTIME_DIR/job-local/address"; echo "$a"; exit 7"#,
        ])
        .env("RAYHPC_RUNTIME_DIR", &dir)
        .env("PATH", "/nonexistent")
        .env_remove("RAYHPC_PYTHON")
        .env_remove("SLURM_JOB_ID")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.contains("native tasks only"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("/session-"), "the address file names the session: {stdout:?} {err}");
    // Stopped in order: no session directory, no address file.
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().starts_with("session-")), "{left:?}");
    assert!(!dir.join("job-local/address").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn launch_with_a_python_that_cannot_run_fails_clearly() {
    let dir = runtime_dir("nopython");
    let out = rayhpc().args(["launch", "--python", "/nonexistent/python", "--", "true"]).env("RAYHPC_RUNTIME_DIR", &dir).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot start the node runtime") && err.contains("/nonexistent/python"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn launch_without_a_command_serves_until_sigterm_then_cleans_up() {
    let dir = runtime_dir("serve");
    let mut child = rayhpc()
        .args(["launch", "--num-cpus", "1"])
        .env("RAYHPC_RUNTIME_DIR", &dir)
        .env("PATH", "/nonexistent")
        .env_remove("SLURM_JOB_ID")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let address = dir.join("job-local/address");
    let t = std::time::Instant::now();
    while !address.exists() {
        assert!(t.elapsed() < std::time::Duration::from_secs(30), "the node never published its address");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(child.try_wait().unwrap().is_none(), "it serves");
    let kill = Command::new("/bin/kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "an orderly stop");
    assert!(!address.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_an_rdma_fabric_objects_move_over_tcp_and_the_launch_says_so() {
    let dir = runtime_dir("fabric");
    let launch = |fabric: &str| {
        rayhpc()
            .args(["launch", "--head", "--nodes", "1", "--interface", "127.0.0.1", "--num-cpus", "1", "--fabric", fabric])
            .arg("--rendezvous-dir")
            .arg(dir.join("rdv"))
            .args(["--", "/bin/true"])
            .env("RAYHPC_RUNTIME_DIR", &dir)
            .env("PATH", "/nonexistent")
            .env_remove("RAYHPC_PYTHON")
            .env_remove("SLURM_JOB_ID")
            .output()
            .unwrap()
    };
    // auto: no RDMA provider on this machine (or none built in): TCP, said once.
    let out = launch("auto");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("objects move over TCP"), "{err}");
    let why = if cfg!(feature = "fabric") { "no RDMA device here" } else { "built without the `fabric` feature" };
    assert!(err.contains(why), "{err}");
    // A provider that is named must open, or the node does not start.
    let out = launch("no-such-provider");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("cannot open the fabric asked for"), "{err}");
    // What the build and the machine offer.
    let out = rayhpc().arg("fabric").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(if cfg!(feature = "fabric") { text.contains("built with libfabric") } else { text.contains("not built") }, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
