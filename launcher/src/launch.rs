//! `rayhpc launch`: a node runtime in this process (the `rayhpc-node` crate: runtime, object
//! store socket, Python worker pool, the socket drivers attach to), and optionally a driver
//! command run once it is up, with the node's address in its environment
//! (`RAYHPC_ADDRESS`, which `rayhpc.init()` and `init(address="auto")` use). When the command
//! exits, the node stops and `launch` exits with the command's code. Without a command it
//! serves until SIGINT or SIGTERM (`scancel`, the end of the job).
//!
//! Python workers are run by `--python` (else `$RAYHPC_PYTHON`, else `python3`), which must
//! import rayhpc; their `sys.path` is that Python's plus the directory `launch` runs in, so
//! that modules beside the driver import. When no such Python is found, the node still runs
//! native tasks, and says so.
//!
//! Single node for now: under Slurm or MPI every rank would start its own node runtime; the
//! many-node bootstrap (head on rank 0, the others joining it) is the next stage.

use std::collections::HashMap;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rayhpc_node::{Node, NodeConfig};

/// What to start.
pub struct LaunchArgs {
    pub python: Option<String>,
    pub num_cpus: Option<f64>,
    pub num_gpus: Option<f64>,
    pub resources: Option<String>,
    pub object_store_memory: Option<u64>,
    pub command: Vec<String>,
}

/// The exit code for a status (128 + signal for a command killed by a signal, as a shell).
fn code_of(s: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

/// The `sys.path` of `python`, checked to import rayhpc (its workers must).
fn python_path(python: &str) -> Result<String> {
    let out = Command::new(python)
        .args(["-c", "import os, sys, rayhpc; print(os.pathsep.join(p for p in sys.path if p))"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {python}"))?;
    if !out.status.success() {
        bail!("{python} cannot import rayhpc: {}", String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or(""));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Custom resources given as JSON: `{"disk": 2}`.
fn resources_of(json: Option<&str>) -> Result<HashMap<String, f64>> {
    match json {
        None => Ok(HashMap::new()),
        Some(s) => serde_json::from_str(s).with_context(|| format!("--resources must be a JSON object of numbers, got {s:?}")),
    }
}

pub fn launch(a: LaunchArgs) -> Result<i32> {
    let t0 = Instant::now();
    let explicit = a.python.clone().or_else(|| std::env::var("RAYHPC_PYTHON").ok());
    let python = explicit.clone().unwrap_or_else(|| "python3".into());
    // Python starts in parallel with the node (it takes tens of milliseconds).
    let probe = {
        let python = python.clone();
        std::thread::spawn(move || python_path(&python))
    };
    let resources = resources_of(a.resources.as_deref())?;
    rayhpc_node::signal::catch_termination().context("cannot catch SIGINT and SIGTERM")?;
    let sys_path = match probe.join().expect("the probe does not panic") {
        Ok(p) => {
            let cwd = std::env::current_dir().map(|d| d.to_string_lossy().into_owned()).unwrap_or_default();
            if cwd.is_empty() {
                p
            } else {
                format!("{cwd}:{p}")
            }
        }
        Err(e) if explicit.is_some() => return Err(e.context("cannot start the node runtime's Python workers")),
        Err(e) => {
            eprintln!("rayhpc launch: no Python workers ({e:#}); native tasks only. Set --python or RAYHPC_PYTHON.");
            String::new()
        }
    };
    let node = Node::start(NodeConfig {
        python: python.into(),
        sys_path,
        num_cpus: a.num_cpus,
        num_gpus: a.num_gpus,
        resources,
        object_store_memory: a.object_store_memory.map(|m| m as usize),
    })
    .context("cannot start the node runtime")?;
    let node = Arc::new(node);
    let address = node.listen().context("cannot start the node runtime")?;
    let published = rayhpc_node::publish_address(&address).context("cannot record the node's address")?;
    eprintln!("rayhpc launch: node runtime up at {} in {:.0} ms", address.display(), t0.elapsed().as_secs_f64() * 1e3);

    let server = {
        let node = node.clone();
        std::thread::Builder::new()
            .name("rayhpc-accept".into())
            .spawn(move || node.serve(|| rayhpc_node::signal::termination().is_none()))
            .context("cannot start the accept thread")?
    };
    let code = if a.command.is_empty() {
        // Serve until SIGINT or SIGTERM.
        while rayhpc_node::signal::termination().is_none() && !server.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(0)
    } else {
        Command::new(&a.command[0])
            .args(&a.command[1..])
            .env("RAYHPC_ADDRESS", &address)
            .status()
            .map(code_of)
            .with_context(|| format!("cannot run {:?}", a.command[0]))
    };
    // Stop whatever happened to the command (a stale address must not outlive the node).
    let _ = std::fs::remove_file(&published);
    node.shutdown();
    match server.join() {
        Ok(Err(e)) => eprintln!("rayhpc launch: the node stopped accepting drivers: {e}"),
        Err(_) => eprintln!("rayhpc launch: the accept thread panicked"),
        Ok(Ok(())) => {}
    }
    code
}
