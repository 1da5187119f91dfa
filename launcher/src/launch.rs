//! `rayhpc launch`: one node runtime as a process of its own (`python -m rayhpc.node`), and
//! optionally a driver command run once it is up, with the node's address in its
//! environment (`RAYHPC_ADDRESS`, which `rayhpc.init()` and `init(address="auto")` use).
//! When the command exits, the node is stopped and `launch` exits with the command's code.
//!
//! The node is stopped by closing its standard input (it runs with `--stop-on-stdin-eof`):
//! so it also stops if `launch` itself is killed, and no signal needs sending.
//!
//! Single node for now: under Slurm or MPI every rank would start its own node runtime; the
//! many-node bootstrap (head on rank 0, the others joining it) is the next stage.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// What to start.
pub struct LaunchArgs {
    pub python: String,
    pub num_cpus: Option<f64>,
    pub num_gpus: Option<f64>,
    pub resources: Option<String>,
    pub object_store_memory: Option<u64>,
    pub startup_timeout: Duration,
    pub command: Vec<String>,
}

/// The exit code for a status (128 + signal for a command killed by a signal, as a shell).
fn code_of(s: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

pub fn launch(a: LaunchArgs) -> Result<i32> {
    let mut node_cmd = Command::new(&a.python);
    node_cmd.args(["-m", "rayhpc.node", "--stop-on-stdin-eof"]);
    if let Some(n) = a.num_cpus {
        node_cmd.args(["--num-cpus", &n.to_string()]);
    }
    if let Some(n) = a.num_gpus {
        node_cmd.args(["--num-gpus", &n.to_string()]);
    }
    if let Some(r) = &a.resources {
        node_cmd.args(["--resources", r]);
    }
    if let Some(m) = a.object_store_memory {
        node_cmd.args(["--object-store-memory", &m.to_string()]);
    }
    let mut node = node_cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().with_context(|| {
        format!("cannot start the node runtime with {} (set RAYHPC_PYTHON or --python to a Python with rayhpc installed)", a.python)
    })?;
    let stdin = node.stdin.take().expect("piped");
    let stdout = node.stdout.take().expect("piped");

    // The first line is the address; the rest of the node's output is passed through.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        let _ = tx.send(first);
        for line in lines.map_while(Result::ok) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
        }
    });
    let address = match rx.recv_timeout(a.startup_timeout) {
        Ok(Some(Ok(line))) if line.starts_with("RAYHPC_ADDRESS=") => line["RAYHPC_ADDRESS=".len()..].to_string(),
        other => {
            let _ = node.kill();
            let status = node.wait().ok();
            bail!("the node runtime did not come up (first line {other:?}, exit {status:?})");
        }
    };
    eprintln!("rayhpc launch: node runtime up at {address}");

    if a.command.is_empty() {
        // Serve until the node stops (SIGINT/SIGTERM to it, or the job's end).
        let status = node.wait()?;
        drop(stdin);
        return Ok(code_of(status));
    }
    let status = Command::new(&a.command[0])
        .args(&a.command[1..])
        .env("RAYHPC_ADDRESS", &address)
        .status()
        .with_context(|| format!("cannot run {:?}", a.command[0]));
    // Stop the node whatever happened to the command: closing its stdin.
    drop(stdin);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if node.try_wait()?.is_some() {
            break;
        }
        if std::time::Instant::now() >= deadline {
            eprintln!("rayhpc launch: the node runtime did not stop within 10 s; killing it");
            let _ = node.kill();
            let _ = node.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(code_of(status?))
}
