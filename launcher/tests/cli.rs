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
