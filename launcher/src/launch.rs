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
//! Many nodes: under `srun`, `mpirun` (Open MPI, MPICH) or PMIx, each rank reads its place
//! in the launch ([`crate::bootstrap`]). One node runtime per host (a rank that is not the
//! first of its host starts none and exits 0). Rank 0 is the head: it binds an ephemeral
//! port on `--interface` (default: the address its host name resolves to), publishes that
//! address and a fresh job secret in the launch's rendezvous directory
//! (`rayhpc_cluster::rendezvous`), waits for every host's node to join, and only then
//! runs the command. The other ranks find the head there, join it from the interface that
//! routes to it, and serve until the head stops them (when the command exits) or is lost.
//! `--head` and `--address HOST:PORT` (with `--secret-file`) do the same by hand.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rayhpc_cluster::fabric::FabricMode;
use rayhpc_cluster::{rendezvous, Cluster, ClusterConfig, Role};
use rayhpc_node::{Node, NodeConfig};

use crate::bootstrap::{self, Placement};

/// What to start.
pub struct LaunchArgs {
    pub python: Option<String>,
    /// Be the head whatever the launcher says.
    pub head: bool,
    /// Join the head at this address instead of finding it.
    pub address: Option<String>,
    /// The job secret's file, with `address`.
    pub secret_file: Option<PathBuf>,
    /// The interface address to bind.
    pub interface: Option<IpAddr>,
    /// How many nodes the head waits for (default: the launch's hosts).
    pub nodes: Option<u32>,
    /// How long the head waits for them, and the others for the head.
    pub startup_timeout: Duration,
    /// Where the rendezvous directory lives (default: see `rendezvous::base`).
    pub rendezvous_dir: Option<PathBuf>,
    /// Instead of a command, the head measures the links to the other nodes (`rayhpc bench
    /// --across-nodes`).
    pub bench: Option<BenchAcross>,
    pub num_cpus: Option<f64>,
    pub num_gpus: Option<f64>,
    pub resources: Option<String>,
    pub object_store_memory: Option<u64>,
    /// How objects move between nodes.
    pub fabric: FabricMode,
    pub command: Vec<String>,
}

/// The fabric mode of `--fabric`, else `$RAYHPC_FABRIC`, else auto.
pub fn fabric_mode(flag: Option<String>) -> FabricMode {
    FabricMode::from(flag.or_else(|| std::env::var("RAYHPC_FABRIC").ok()).unwrap_or_default().as_str())
}

/// What `rayhpc bench --across-nodes` measures.
pub struct BenchAcross {
    /// Bytes of the object pulled and of the raw stream.
    pub bytes: u64,
    /// Best of this many.
    pub trials: usize,
    /// One JSON object instead of text.
    pub json: bool,
    /// Bytes of the object broadcast to every node (0: none).
    pub broadcast: u64,
}

/// The head's bench: cluster start time, then per node the raw TCP stream's rate and the
/// object pull rate.
fn bench_across(c: &Cluster, b: &BenchAcross, start_ms: f64) -> Result<i32> {
    let rows = c.bench_pull(b.bytes, b.trials)?;
    let broadcast = if b.broadcast > 0 { Some(c.bench_broadcast(b.broadcast)?) } else { None };
    let gib = |x: f64| x / (1u64 << 30) as f64;
    let transport = c.fabric().map_or_else(|| "tcp".to_string(), |p| format!("fabric:{p}"));
    if b.json {
        let nodes: Vec<_> = rows
            .iter()
            .map(|f| {
                serde_json::json!({
                    "rank": f.rank, "raw_tcp_gib_per_s": gib(f.raw_tcp), "pull_gib_per_s": gib(f.pull_tcp), "pull_over_raw": f.pull_tcp / f.raw_tcp,
                    "fabric_pull_gib_per_s": f.pull_fabric.map(gib), "fabric_pull_over_raw": f.pull_fabric.map(|x| x / f.raw_tcp),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "nodes": c.view().len(), "cluster_start_ms": start_ms, "object_bytes": b.bytes, "transport": transport,
                "fabric_provider": c.fabric(), "pull_streams": rayhpc_cluster::bulk::streams_for(b.bytes), "links": nodes,
                "copies_verified": true,
                "broadcast": broadcast.map(|(n, d, t)| serde_json::json!({
                    "bytes": b.broadcast, "to_nodes": n,
                    "from_head": {"secs": d.secs, "rounds": d.rounds}, "tree": {"secs": t.secs, "rounds": t.rounds},
                })),
            })
        );
    } else {
        println!("cluster of {} nodes up in {start_ms:.0} ms (objects move over {transport})", c.view().len());
        for f in rows {
            let fabric = f.pull_fabric.map_or_else(
                || ", no fabric pull (no fabric on both nodes)".to_string(),
                |x| format!(", fabric pull ({}) {:.2} GiB/s = {:.2} x raw", c.fabric().unwrap_or_default(), gib(x), x / f.raw_tcp),
            );
            println!(
                "head -> rank {}: raw TCP stream {:.2} GiB/s, TCP object pull ({} MiB, {} stream(s)) {:.2} GiB/s = {:.2} x raw{fabric}",
                f.rank,
                gib(f.raw_tcp),
                b.bytes >> 20,
                rayhpc_cluster::bulk::streams_for(b.bytes),
                gib(f.pull_tcp),
                f.pull_tcp / f.raw_tcp
            );
        }
        if let Some((n, d, t)) = broadcast {
            println!(
                "broadcast of {} MiB to {n} nodes at once: from the head alone {:.2} s ({} pulls from the head); as a tree {:.2} s in {} round(s)",
                b.broadcast >> 20,
                d.secs,
                n,
                t.secs,
                t.rounds
            );
        }
        println!("every pulled copy was byte-exact (its digest checked against the original's)");
    }
    Ok(0)
}

/// Runs the driver command with the node's address; while it runs, a stop of this launch
/// (SIGINT/SIGTERM, `rayhpc stop`) is passed on to it as SIGTERM, and SIGKILL follows after
/// 10 s. Its exit code.
fn run_driver(command: &[String], address: &std::path::Path, stop: &dyn Fn() -> bool) -> Result<i32> {
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .env("RAYHPC_ADDRESS", address)
        .spawn()
        .with_context(|| format!("cannot run {:?}", command[0]))?;
    let mut asked: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(code_of(status));
        }
        match asked {
            None if stop() => {
                eprintln!("rayhpc launch: stopping: passing SIGTERM on to the driver");
                let _ = rayhpc_node::signal::send(child.id(), rayhpc_node::signal::TERMINATE);
                asked = Some(Instant::now());
            }
            Some(t) if t.elapsed() > Duration::from_secs(10) => {
                eprintln!("rayhpc launch: the driver did not end within 10 s of SIGTERM: killing it");
                let _ = child.kill();
                return Ok(code_of(child.wait()?));
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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

/// The cluster's resources: every live node's, summed.
fn cluster_sum(view: &[rayhpc_cluster::control::NodeInfo]) -> Vec<(String, f64, f64)> {
    let mut sum: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for n in view.iter().filter(|n| n.alive) {
        for (k, (t, a)) in &n.resources {
            let e = sum.entry(k.clone()).or_default();
            e.0 += t;
            e.1 += a;
        }
    }
    sum.into_iter().map(|(k, (t, a))| (k, t, a)).collect()
}

/// Joins (or heads) the cluster of this launch, when it spans more than one node.
fn join(a: &LaunchArgs, place: &Placement, rank: u32, node: &Arc<Node>, t0: Instant) -> Result<Option<(Arc<Cluster>, Option<PathBuf>)>> {
    let expected = a.nodes.unwrap_or(place.hosts);
    if expected <= 1 && !a.head && a.address.is_none() {
        // A lone node, named as its service names it in `nodes()`.
        node.name_address("127.0.0.1", true);
        return Ok(None);
    }
    let rdv = rendezvous::dir(&a.rendezvous_dir.clone().unwrap_or_else(rendezvous::base), &place.job_id);
    let is_head = a.head || (a.address.is_none() && place.is_head());
    if is_head {
        let secret = rendezvous::new_secret().context("cannot make the job secret")?;
        let cluster = Cluster::start(
            node.clone(),
            ClusterConfig { role: Role::Head, rank: 0, bind: a.interface, secret: secret.clone(), fabric: a.fabric.clone() },
        )
        .context("cannot start the head")?;
        let cluster = Arc::new(cluster);
        rendezvous::publish(&rdv, &cluster.address().to_string(), &secret)
            .with_context(|| format!("cannot publish the head's address in {}", rdv.display()))?;
        eprintln!("rayhpc launch: head at {} (rendezvous {}), waiting for {expected} nodes", cluster.address(), rdv.display());
        match cluster.wait_nodes(expected as usize, a.startup_timeout) {
            Ok(view) => eprintln!(
                "rayhpc launch: cluster up: {} nodes, {} CPUs, in {:.0} ms; objects move over {}",
                view.iter().filter(|n| n.alive).count(),
                cluster_sum(&view).iter().find(|r| r.0 == "CPU").map_or(0.0, |r| r.1),
                t0.elapsed().as_secs_f64() * 1e3,
                transports(&view)
            ),
            Err(e) => {
                cluster.shutdown(Duration::from_secs(2));
                rendezvous::remove(&rdv);
                bail!("the cluster did not come up: {e}");
            }
        }
        return Ok(Some((cluster, Some(rdv))));
    }
    // A member: the head's address by hand, or from the rendezvous directory. A stale
    // directory (a head of an earlier launch that died) is retried until the timeout.
    let deadline = Instant::now() + a.startup_timeout;
    loop {
        let (addr, secret) = match &a.address {
            Some(addr) => {
                let file = a.secret_file.clone().unwrap_or_else(|| rdv.join("secret"));
                let secret = rendezvous::read_secret(&file).with_context(|| format!("cannot read the job secret {}", file.display()))?;
                (addr.clone(), secret)
            }
            None => rendezvous::find(&rdv, deadline.saturating_duration_since(Instant::now()))
                .with_context(|| format!("rank {} cannot find the head", place.rank))?,
        };
        let head: SocketAddr = addr.parse().with_context(|| format!("the head's address {addr:?} is not ip:port"))?;
        let cfg = ClusterConfig {
            role: Role::Member { head },
            rank: rank.max(1),
            bind: a.interface,
            secret: secret.clone(),
            fabric: a.fabric.clone(),
        };
        match Cluster::start(node.clone(), cfg) {
            Ok(c) => return Ok(Some((Arc::new(c), None))),
            Err(e) if Instant::now() < deadline => {
                eprintln!("rayhpc launch: rank {}: {e}; retrying", place.rank);
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => bail!("rank {} cannot join the head at {head}: {e}", place.rank),
        }
    }
}

pub fn launch(a: LaunchArgs) -> Result<i32> {
    let t0 = Instant::now();
    let env: HashMap<String, String> = std::env::vars().collect();
    let place = bootstrap::placement(&env)?;
    if place.local_rank > 0 && a.address.is_none() && !a.head {
        eprintln!(
            "rayhpc launch: rank {} is rank {} of its host; one node runtime per host (its first rank's): this rank starts none",
            place.rank, place.local_rank
        );
        return Ok(0);
    }
    let explicit = a.python.clone().or_else(|| std::env::var("RAYHPC_PYTHON").ok());
    let python = explicit.clone().unwrap_or_else(|| "python3".into());
    // Python starts in parallel with the node (it takes tens of milliseconds).
    let probe = {
        let python = python.clone();
        std::thread::spawn(move || python_path(&python))
    };
    let resources = resources_of(a.resources.as_deref())?;
    // This node's rank: the launcher's; by hand, 0 for the head and a random one above every
    // launcher rank for a member (its transport id and id prefix must be its own).
    let rank = if a.head {
        0
    } else if a.address.is_some() && place.source == "none" {
        let r = rendezvous::new_secret().context("cannot draw a rank")?;
        (1 << 20) | (u32::from_le_bytes([r[0], r[1], r[2], 0]) & 0xf_ffff)
    } else {
        place.rank
    };
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
        Err(_) if a.bench.is_some() => String::new(), // the bench runs no Python
        Err(e) => {
            eprintln!("rayhpc launch: no Python workers ({e:#}); native tasks only. Set --python or RAYHPC_PYTHON.");
            String::new()
        }
    };
    let node = Node::start(NodeConfig {
        python: python.into(),
        sys_path,
        num_cpus: a.num_cpus.or(place.cpus_on_node.map(f64::from)),
        // The GPUs the allocation names (Slurm, CUDA_VISIBLE_DEVICES), unless told.
        num_gpus: a.num_gpus.or(place.gpus.as_ref().map(|g| g.len() as f64)),
        resources,
        object_store_memory: a.object_store_memory.map(|m| m as usize),
        node_id: rank,
    })
    .context("cannot start the node runtime")?;
    let node = Arc::new(node);
    let address = node.listen().context("cannot start the node runtime")?;
    let published = rayhpc_node::publish_address(&address).context("cannot record the node's address")?;
    eprintln!("rayhpc launch: node runtime up at {} in {:.0} ms", address.display(), t0.elapsed().as_secs_f64() * 1e3);

    let cluster = match join(&a, &place, rank, &node, t0) {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&published);
            node.shutdown();
            return Err(e);
        }
    };
    let is_member = cluster.as_ref().is_some_and(|(_, rdv)| rdv.is_none());
    let start_ms = t0.elapsed().as_secs_f64() * 1e3;
    let stop = {
        let c = cluster.as_ref().map(|(c, _)| Arc::downgrade(c));
        move || rayhpc_node::signal::termination().is_some() || c.as_ref().and_then(|c| c.upgrade()).is_some_and(|c| c.stopped().is_some())
    };

    let server = {
        let node = node.clone();
        std::thread::Builder::new()
            .name("rayhpc-accept".into())
            .spawn({
                let stop = stop.clone();
                move || node.serve(|| !stop())
            })
            .context("cannot start the accept thread")?
    };
    let code = if let (Some(b), Some((c, _)), false) = (&a.bench, &cluster, is_member) {
        bench_across(c, b, start_ms)
    } else if a.command.is_empty() || is_member {
        // Serve until SIGINT or SIGTERM, or (a member) until the head stops the cluster.
        // (The command runs on the head's host only.)
        while !stop() && !server.is_finished() {
            std::thread::sleep(Duration::from_millis(20));
        }
        match cluster.as_ref().and_then(|(c, _)| c.stopped()) {
            Some(why) if is_member && why != "the head stopped the cluster" => {
                eprintln!("rayhpc launch: rank {}: stopping: {why}", place.rank);
                Ok(1)
            }
            _ => Ok(0),
        }
    } else {
        run_driver(&a.command, &address, &stop)
    };
    // Stop whatever happened to the command (a stale address must not outlive the node).
    let _ = std::fs::remove_file(&published);
    if let Some((c, rdv)) = &cluster {
        c.shutdown(Duration::from_secs(5));
        if let Some(rdv) = rdv {
            rendezvous::remove(rdv);
        }
    }
    node.shutdown();
    match server.join() {
        Ok(Err(e)) => eprintln!("rayhpc launch: the node stopped accepting drivers: {e}"),
        Err(_) => eprintln!("rayhpc launch: the accept thread panicked"),
        Ok(Ok(())) => {}
    }
    code
}

/// Where `status` and `stop` find the head: `--address` with `--secret-file`, else the
/// rendezvous directory of the job (`--job`, else this environment's job id).
pub struct Target {
    pub address: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub job: Option<String>,
    pub rendezvous_dir: Option<PathBuf>,
}

fn head_of(t: &Target) -> Result<(SocketAddr, Vec<u8>)> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let job = t.job.clone().unwrap_or_else(|| bootstrap::job_id(&env));
    let rdv = rendezvous::dir(&t.rendezvous_dir.clone().unwrap_or_else(rendezvous::base), &job);
    let (addr, secret) = match &t.address {
        Some(a) => {
            let file = t.secret_file.clone().unwrap_or_else(|| rdv.join("secret"));
            (a.clone(), rendezvous::read_secret(&file).with_context(|| format!("cannot read the job secret {}", file.display()))?)
        }
        None => rendezvous::find(&rdv, Duration::ZERO).with_context(|| format!("no running launch of job {job} found"))?,
    };
    Ok((addr.parse().with_context(|| format!("the head's address {addr:?} is not ip:port"))?, secret))
}

/// How objects move between the nodes of `view`: the fabric if every live node has the
/// same one, else TCP (and which nodes lack it).
fn transports(view: &[rayhpc_cluster::control::NodeInfo]) -> String {
    let live: Vec<_> = view.iter().filter(|n| n.alive).collect();
    let kinds: std::collections::BTreeSet<&str> = live.iter().map(|n| n.transport.as_str()).collect();
    match kinds.len() {
        1 => kinds.into_iter().next().unwrap_or("tcp").to_string(),
        _ => format!("a mix ({}): a fabric between nodes that both have it, else TCP", kinds.into_iter().collect::<Vec<_>>().join(", ")),
    }
}

/// `rayhpc status`: the head's node table, as a table or JSON.
pub fn status(t: &Target, json: bool) -> Result<()> {
    use rayhpc_cluster::control::{Request, Response};
    let (head, secret) = head_of(t)?;
    let nodes = match rayhpc_cluster::query(head, &secret, &Request::View)? {
        Response::View { nodes, .. } => nodes,
        other => bail!("the head answered {other:?}"),
    };
    if json {
        let v: Vec<_> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "id": n.id, "rank": n.rank, "host": n.host, "address": n.addr, "alive": n.alive,
                    "resources": n.resources.iter().map(|(k, (t, a))| (k.clone(), serde_json::json!({"total": t, "used": t - a}))).collect::<serde_json::Map<_, _>>(),
                    "store": {"used": n.store_used, "capacity": n.store_capacity, "objects": n.store_objects, "backing": n.store_backing},
                    "pulled": {"objects": n.pulled.0, "bytes": n.pulled.1},
                    "transport": n.transport,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    let sum = cluster_sum(&nodes);
    println!("cluster of {} nodes ({} alive), head {head}", nodes.len(), nodes.iter().filter(|n| n.alive).count());
    for (k, t, a) in &sum {
        if *t > 0.0 {
            println!("  {k}: {:.1}/{:.1} used", t - a, t);
        }
    }
    println!(
        "{:<4} {:<5} {:<16} {:<22} {:<6} {:>11} {:>9} {:>24}  {:<20} {:>18}  transport",
        "id", "rank", "host", "address", "state", "CPU", "GPU", "store used/capacity", "backing", "pulled"
    );
    for n in &nodes {
        let used = |k: &str| n.resources.get(k).map_or("-".into(), |(t, a)| format!("{:.1}/{:.1}", t - a, t));
        println!(
            "{:<4} {:<5} {:<16} {:<22} {:<6} {:>11} {:>9} {:>24}  {:<20} {:>18}  {}",
            n.id,
            n.rank,
            n.host,
            n.addr,
            if n.alive { "alive" } else { "dead" },
            used("CPU"),
            used("GPU"),
            format!("{} MiB/{} MiB ({} obj)", n.store_used >> 20, n.store_capacity >> 20, n.store_objects),
            n.store_backing,
            format!("{} obj, {} MiB", n.pulled.0, n.pulled.1 >> 20),
            n.transport
        );
    }
    Ok(())
}

/// `rayhpc stop`: asks the head to stop the cluster.
pub fn stop(t: &Target) -> Result<()> {
    use rayhpc_cluster::control::{Request, Response};
    let (head, secret) = head_of(t)?;
    match rayhpc_cluster::query(head, &secret, &Request::Shutdown)? {
        Response::Ok => {
            eprintln!("rayhpc stop: the head at {head} is stopping the cluster");
            Ok(())
        }
        other => bail!("the head answered {other:?}"),
    }
}
