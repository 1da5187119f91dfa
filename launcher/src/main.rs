//! The `rayhpc` command.
#![forbid(unsafe_code)]

mod bench;
mod bootstrap;
mod launch;

/// The runtime allocates a task spec and a result slot per task on the submitting thread and
/// frees them on an executor; glibc's malloc serialises such cross-thread frees on its arena
/// locks. mimalloc's per-thread free lists do not (measured: see docs/ARCHITECTURE.md and
/// `rayhpc_node::alloc`).
#[global_allocator]
static GLOBAL: rayhpc_node::alloc::Allocator = rayhpc_node::alloc::Allocator;

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rayhpc", version, about = "rayhpc: Ray's programming model as a native HPC runtime")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a node runtime (Python tasks and actors); with a command, run it once the node is
    /// up (`RAYHPC_ADDRESS` in its environment), then stop the node and exit with its code.
    Launch {
        /// The Python that runs the node's Python workers, with rayhpc installed (default:
        /// $RAYHPC_PYTHON, else python3; without one, native tasks only).
        #[arg(long)]
        python: Option<String>,
        /// Logical CPUs of the node (default: Slurm's CPUs on this node, else the CPUs of
        /// the affinity mask).
        #[arg(long)]
        num_cpus: Option<f64>,
        /// Be the head (rank 0) whatever the launcher says.
        #[arg(long, conflicts_with = "address")]
        head: bool,
        /// Join the head at HOST:PORT instead of finding it in the rendezvous directory.
        #[arg(long)]
        address: Option<String>,
        /// The job secret's file, with --address (default: the rendezvous directory's).
        #[arg(long)]
        secret_file: Option<std::path::PathBuf>,
        /// The interface address to listen on (default: the head, its host name's address;
        /// the others, the address that routes to the head).
        #[arg(long)]
        interface: Option<std::net::IpAddr>,
        /// How many nodes the head waits for before it runs the command (default: the
        /// launch's hosts).
        #[arg(long)]
        nodes: Option<u32>,
        /// Seconds the head waits for the nodes, and the nodes for the head.
        #[arg(long, default_value_t = 60.0)]
        startup_timeout: f64,
        /// Where launches meet: a directory every node sees (default:
        /// $RAYHPC_RENDEZVOUS_DIR, else $SLURM_SUBMIT_DIR/.rayhpc, else $HOME/.rayhpc).
        #[arg(long)]
        rendezvous_dir: Option<std::path::PathBuf>,
        /// GPUs of the node.
        #[arg(long)]
        num_gpus: Option<f64>,
        /// Custom resources, as JSON: '{"disk": 2}'.
        #[arg(long)]
        resources: Option<String>,
        /// How objects move between nodes: "auto" (the best RDMA fabric offered, else TCP),
        /// "off" (TCP), or a libfabric provider that must open ("verbs;ofi_rxm",
        /// "tcp;ofi_rxm", ...). Default: $RAYHPC_FABRIC, else auto.
        #[arg(long)]
        fabric: Option<String>,
        /// Object store size in bytes.
        #[arg(long)]
        object_store_memory: Option<u64>,
        /// The driver command (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Whether this build can pull objects over an RDMA fabric, and which libfabric
    /// providers this machine offers.
    Fabric,
    /// Show the cluster of a running launch: per node, resources used/total, the object
    /// store's use and backing, the transport.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Stop the cluster of a running launch (every node, then the head).
    Stop {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Measure the runtime like `ray microbenchmark`, on an embedded single-node runtime.
    Bench {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Empty tasks (and actor calls) per batch.
        #[arg(long, default_value_t = 200_000)]
        tasks: usize,
        /// Round trips measured for the latency figures.
        #[arg(long, default_value_t = 20_000)]
        round_trips: usize,
        /// Batches per rate figure, after half a second of untimed ones; the median is reported.
        #[arg(long, default_value_t = 5)]
        trials: usize,
        /// Seconds the idle runtime is watched.
        #[arg(long, default_value_t = 2.0)]
        idle_secs: f64,
        /// Executor threads (default: one per CPU of the affinity mask).
        #[arg(long)]
        executors: Option<usize>,
        /// Size of the large object for the bandwidth figures, in MiB (0 skips them).
        #[arg(long, default_value_t = 1024)]
        object_mib: usize,
        /// Object store size in MiB (default: twice the large object, plus 512).
        #[arg(long)]
        store_mib: Option<usize>,
        /// MiB spilled through a store a quarter that size for the spill figures (0 skips them).
        #[arg(long, default_value_t = 1024)]
        spill_mib: usize,
        /// Directory for the spill figures' files (default: the temporary directory).
        #[arg(long)]
        spill_dir: Option<std::path::PathBuf>,
        /// Measure between the nodes of a launch instead (run it as `srun -N2 rayhpc bench
        /// --across-nodes`): the cluster's start time, a raw TCP stream and an object pull of
        /// --object-mib between the head and every other node, best of --trials.
        #[arg(long)]
        across_nodes: bool,
        /// With --across-nodes: the interface address to listen on.
        #[arg(long)]
        interface: Option<std::net::IpAddr>,
        /// With --across-nodes: MiB of the object broadcast to every other node at once, from
        /// the head alone and then as a tree (0 skips it).
        #[arg(long, default_value_t = 256)]
        broadcast_mib: u64,
        /// How objects move between nodes: "auto" (the best RDMA fabric offered, else TCP),
        /// "off" (TCP), or a libfabric provider that must open ("verbs;ofi_rxm",
        /// "tcp;ofi_rxm", ...). Default: $RAYHPC_FABRIC, else auto.
        #[arg(long)]
        fabric: Option<String>,
    },
}

/// What `rayhpc fabric` prints: whether this build has the RDMA fabric backend, which
/// libfabric providers are offered here, and what `--fabric auto` would take.
fn fabric_report() {
    use rayhpc_cluster::fabric::{offered, RDMA_PROVIDERS};
    match offered() {
        None => println!("fabric: not built (cargo feature `fabric`): objects move over TCP"),
        Some(list) => {
            println!("fabric: built with libfabric");
            println!("providers offering one-sided reads here: {}", if list.is_empty() { "none".into() } else { list.join(", ") });
            match RDMA_PROVIDERS.iter().find(|p| list.iter().any(|o| o == *p)) {
                Some(p) => println!("--fabric auto takes: {p}"),
                None => println!("--fabric auto takes: none (no RDMA provider): objects move over TCP unless one is named"),
            }
            if !rayhpc_cluster::fabric::rdma_devices() {
                println!("no RDMA device here (nothing in /sys/class/infiniband or /sys/class/cxi): --fabric auto does not look further");
            }
        }
    }
}

/// Which launch `status` and `stop` address.
#[derive(clap::Args)]
struct TargetArgs {
    /// The head's HOST:PORT (with --secret-file), instead of the job's rendezvous directory.
    #[arg(long)]
    address: Option<String>,
    /// The job secret's file.
    #[arg(long)]
    secret_file: Option<std::path::PathBuf>,
    /// The job id (default: this environment's: $SLURM_JOB_ID..., else "local").
    #[arg(long)]
    job: Option<String>,
    /// The rendezvous base directory (as given to launch).
    #[arg(long)]
    rendezvous_dir: Option<std::path::PathBuf>,
}

impl TargetArgs {
    fn target(self) -> launch::Target {
        launch::Target { address: self.address, secret_file: self.secret_file, job: self.job, rendezvous_dir: self.rendezvous_dir }
    }
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Launch {
            python,
            num_cpus,
            head,
            address,
            secret_file,
            interface,
            nodes,
            startup_timeout,
            rendezvous_dir,
            num_gpus,
            resources,
            object_store_memory,
            fabric,
            command,
        } => {
            anyhow::ensure!(startup_timeout.is_finite() && startup_timeout > 0.0, "--startup-timeout must be a positive number");
            let code = launch::launch(launch::LaunchArgs {
                python,
                head,
                address,
                secret_file,
                interface,
                nodes,
                startup_timeout: Duration::from_secs_f64(startup_timeout),
                rendezvous_dir,
                bench: None,
                num_cpus,
                num_gpus,
                resources,
                object_store_memory,
                fabric: launch::fabric_mode(fabric),
                command,
            })?;
            std::process::exit(code);
        }
        Cmd::Status { json, target } => launch::status(&target.target(), json)?,
        Cmd::Fabric => fabric_report(),
        Cmd::Stop { target } => launch::stop(&target.target())?,
        Cmd::Bench { json, object_mib, trials, store_mib, across_nodes: true, interface, fabric, broadcast_mib, .. } => {
            let code = launch::launch(launch::LaunchArgs {
                python: None,
                head: false,
                address: None,
                secret_file: None,
                interface,
                nodes: None,
                startup_timeout: Duration::from_secs(60),
                rendezvous_dir: None,
                bench: Some(launch::BenchAcross { bytes: (object_mib as u64) << 20, trials, json, broadcast: broadcast_mib << 20 }),
                num_cpus: None,
                num_gpus: None,
                resources: None,
                // The pulled object and its copy, the broadcast's two objects and their copies
                // (a quarter of the store keeps copies), and room.
                object_store_memory: Some(store_mib.map_or_else(|| 2 * object_mib as u64 + 8 * broadcast_mib + 512, |m| m as u64) << 20),
                fabric: launch::fabric_mode(fabric),
                command: Vec::new(),
            })?;
            std::process::exit(code);
        }
        Cmd::Bench { json, tasks, round_trips, trials, idle_secs, executors, object_mib, store_mib, spill_mib, spill_dir, .. } => {
            anyhow::ensure!(tasks > 0 && round_trips > 0 && trials > 0, "--tasks, --round-trips and --trials must be positive");
            anyhow::ensure!(idle_secs.is_finite() && idle_secs > 0.0, "--idle-secs must be a positive number");
            let store = store_mib.unwrap_or(2 * object_mib + 512) << 20;
            let config = rayhpc::Config { executors, object_store_memory: Some(store), ..rayhpc::Config::default() };
            let params = bench::BenchParams {
                tasks,
                round_trips,
                trials,
                idle_window: Duration::from_secs_f64(idle_secs),
                object_bytes: object_mib << 20,
                spill_bytes: spill_mib << 20,
                spill_dir,
            };
            let report = bench::run(config, &params)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", bench::table(&report));
            }
        }
    }
    Ok(())
}
