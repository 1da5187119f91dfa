//! Where this `rayhpc launch` stands in its job: its rank among the launched processes, how
//! many there are, which of them share its host, the job's id and node list, read from the
//! launcher that started it: Slurm (`srun`), Open MPI (`mpirun`), MPICH/Hydra (PMI) or PMIx,
//! or nothing (a single process, or explicit `--head`/`--address` flags).
//!
//! Rank 0 is the head. Exactly one node runtime runs per host: a rank that is not the first
//! on its host (`SLURM_LOCALID`, `OMPI_COMM_WORLD_LOCAL_RANK`, `MPI_LOCALRANKID`,
//! `PMIX_LOCAL_RANK` > 0) starts none and exits at once (with a line saying so), so that
//! `srun -n 8` on 2 nodes still gives 2 node runtimes.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};

/// This process's place in its job.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Which launcher told us: "slurm", "openmpi", "pmi", "pmix" or "none".
    pub source: &'static str,
    /// Rank among the launched processes (0: the head).
    pub rank: u32,
    /// How many processes were launched.
    pub size: u32,
    /// Rank among the processes on this host (0: this host's node runtime).
    pub local_rank: u32,
    /// How many hosts (node runtimes) the launch spans: what the head waits for.
    pub hosts: u32,
    /// The job id (names the job's directories), "local" outside a batch system.
    pub job_id: String,
    /// The job's hosts, expanded, when the launcher says (Slurm).
    pub nodes: Vec<String>,
    /// CPUs the allocation gives this node (Slurm's `SLURM_CPUS_ON_NODE`).
    pub cpus_on_node: Option<u32>,
    /// GPUs the allocation gives this node, by index (`SLURM_JOB_GPUS`, or
    /// `CUDA_VISIBLE_DEVICES` when set by the launcher).
    pub gpus: Option<Vec<String>>,
}

impl Placement {
    /// The head is rank 0.
    pub fn is_head(&self) -> bool {
        self.rank == 0
    }
}

fn num<T: std::str::FromStr>(env: &HashMap<String, String>, key: &str) -> Result<Option<T>> {
    match env.get(key) {
        None => Ok(None),
        Some(v) => v.trim().parse::<T>().map(Some).map_err(|_| anyhow::anyhow!("{key}={v:?} is not a number")),
    }
}

fn need<T: std::str::FromStr>(env: &HashMap<String, String>, key: &str, source: &str) -> Result<T> {
    num(env, key)?.with_context(|| format!("{source} set some of its variables but not {key}"))
}

/// The placement described by `env` (the process environment, as a map for testing).
///
/// # Errors
/// A launcher's variables that are present but malformed or contradictory (rank ≥ size).
pub fn placement(env: &HashMap<String, String>) -> Result<Placement> {
    let job_id = job_id(env);
    let gpus = env
        .get("SLURM_JOB_GPUS")
        .or_else(|| env.get("SLURM_STEP_GPUS"))
        .or_else(|| env.get("CUDA_VISIBLE_DEVICES"))
        .map(|s| s.split(',').map(str::trim).filter(|g| !g.is_empty()).map(String::from).collect());
    // MPI launchers first: inside a Slurm allocation they start their daemons with srun,
    // whose variables (SLURM_PROCID=0 on every rank of a node) the ranks inherit.
    let mut p = if env.contains_key("OMPI_COMM_WORLD_RANK") {
        Placement {
            source: "openmpi",
            rank: need(env, "OMPI_COMM_WORLD_RANK", "Open MPI")?,
            size: need(env, "OMPI_COMM_WORLD_SIZE", "Open MPI")?,
            local_rank: num(env, "OMPI_COMM_WORLD_LOCAL_RANK")?.unwrap_or(0),
            hosts: per_host(env, "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE")?,
            job_id,
            nodes: Vec::new(),
            cpus_on_node: None,
            gpus,
        }
    } else if env.contains_key("PMI_RANK") {
        Placement {
            source: "pmi",
            rank: need(env, "PMI_RANK", "PMI")?,
            size: need(env, "PMI_SIZE", "PMI")?,
            local_rank: num(env, "MPI_LOCALRANKID")?.unwrap_or(0),
            hosts: per_host(env, "PMI_SIZE", "MPI_LOCALNRANKS")?,
            job_id,
            nodes: Vec::new(),
            cpus_on_node: None,
            gpus,
        }
    } else if env.contains_key("SLURM_PROCID") && env.contains_key("SLURM_STEP_ID") {
        // A task of a job step (`srun`). (SLURM_PROCID alone is also set in a batch script,
        // where `rayhpc launch` runs once, not as a step.)
        let nodes = match env.get("SLURM_STEP_NODELIST").or_else(|| env.get("SLURM_JOB_NODELIST")) {
            Some(l) => expand_hostlist(l)?,
            None => Vec::new(),
        };
        Placement {
            source: "slurm",
            rank: need(env, "SLURM_PROCID", "Slurm")?,
            size: num(env, "SLURM_STEP_NUM_TASKS")?.or(num(env, "SLURM_NTASKS")?).unwrap_or(1),
            local_rank: num(env, "SLURM_LOCALID")?.unwrap_or(0),
            hosts: num(env, "SLURM_STEP_NUM_NODES")?.or(num(env, "SLURM_JOB_NUM_NODES")?).unwrap_or(nodes.len().max(1) as u32),
            job_id,
            nodes,
            cpus_on_node: num(env, "SLURM_CPUS_ON_NODE")?,
            gpus,
        }
    } else if env.contains_key("PMIX_RANK") {
        Placement {
            source: "pmix",
            rank: need(env, "PMIX_RANK", "PMIx")?,
            size: num(env, "PMIX_SIZE")?.or(num(env, "PMI_SIZE")?).unwrap_or(0),
            local_rank: num(env, "PMIX_LOCAL_RANK")?.unwrap_or(0),
            hosts: per_host(env, "PMIX_SIZE", "PMIX_LOCAL_SIZE")?,
            job_id,
            nodes: Vec::new(),
            cpus_on_node: None,
            gpus,
        }
    } else {
        Placement { source: "none", rank: 0, size: 1, local_rank: 0, hosts: 1, job_id, nodes: Vec::new(), cpus_on_node: None, gpus }
    };
    if p.size == 0 {
        p.size = p.rank + 1; // PMIx without a size: at least as many as our rank says
    }
    p.hosts = p.hosts.clamp(1, p.size);
    if p.rank >= p.size {
        bail!("{} says rank {} of {}: a rank must be below the size", p.source, p.rank, p.size);
    }
    Ok(p)
}

/// Hosts of an MPI launch: its size over the ranks per host (the launcher's local size,
/// taken as the same on every host), or the size when it does not say.
fn per_host(env: &HashMap<String, String>, size: &str, local: &str) -> Result<u32> {
    let n: u32 = num(env, size)?.unwrap_or(0);
    Ok(match num::<u32>(env, local)? {
        Some(l) if l > 0 => n.div_ceil(l),
        _ => n,
    })
}

/// The job's id: Slurm's, then PBS's, LSF's, Flux's; else Open MPI's or PMIx's namespace
/// (an `mpirun` outside a batch system); else "local". Only `[A-Za-z0-9._-]` are kept.
pub fn job_id(env: &HashMap<String, String>) -> String {
    let keys = ["SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "FLUX_JOB_ID", "OMPI_MCA_ess_base_jobid", "PMIX_NAMESPACE"];
    for k in keys {
        if let Some(v) = env.get(k).filter(|v| !v.is_empty()) {
            return v.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
        }
    }
    "local".into()
}

/// Expands a Slurm host list: `node[1-3,5],gpu[08-10]x,login` →
/// `node1 node2 node3 node5 gpu08x gpu09x gpu10x login`. Zero padding is kept; one bracket
/// group per name, as Slurm writes them for one-dimensional names.
///
/// # Errors
/// Unbalanced brackets, a bad range, or more than a million names.
pub fn expand_hostlist(list: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    // Split at the commas outside brackets.
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            bail!("host list {list:?}: unbalanced brackets");
        }
    }
    if depth != 0 {
        bail!("host list {list:?}: unbalanced brackets");
    }
    parts.push(&list[start..]);
    for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        let Some(open) = part.find('[') else {
            out.push(part.to_string());
            continue;
        };
        let close = part.find(']').with_context(|| format!("host list {list:?}: unbalanced brackets"))?;
        let (prefix, ranges, suffix) = (&part[..open], &part[open + 1..close], &part[close + 1..]);
        if suffix.contains('[') {
            bail!("host list {list:?}: more than one bracket group in {part:?}");
        }
        for r in ranges.split(',') {
            let (lo, hi) = r.split_once('-').unwrap_or((r, r));
            let width = lo.len();
            let (a, b): (u64, u64) = (
                lo.parse().with_context(|| format!("host list {list:?}: bad range {r:?}"))?,
                hi.parse().with_context(|| format!("host list {list:?}: bad range {r:?}"))?,
            );
            if b < a || b - a > 1_000_000 || out.len() as u64 + (b - a) > 1_000_000 {
                bail!("host list {list:?}: bad range {r:?}");
            }
            for n in a..=b {
                out.push(format!("{prefix}{n:0width$}{suffix}"));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn host_lists_expand_as_slurm_writes_them() {
        assert_eq!(expand_hostlist("node[1-3,5]").unwrap(), ["node1", "node2", "node3", "node5"]);
        assert_eq!(expand_hostlist("gpu[08-10]x,login").unwrap(), ["gpu08x", "gpu09x", "gpu10x", "login"]);
        assert_eq!(expand_hostlist("a,b[2],c").unwrap(), ["a", "b2", "c"]);
        assert_eq!(expand_hostlist("").unwrap(), Vec::<String>::new());
        for bad in ["node[1-3", "node1-3]", "node[3-1]", "node[a-b]", "n[1-2]x[3]", "n[[1]]"] {
            assert!(expand_hostlist(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slurm_step_tasks_read_their_rank_node_list_and_allocation() {
        let p = placement(&env(&[
            ("SLURM_PROCID", "2"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_STEP_NUM_TASKS", "3"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_JOB_ID", "42"),
            ("SLURM_STEP_NODELIST", "node[1-3]"),
            ("SLURM_CPUS_ON_NODE", "2"),
            ("SLURM_JOB_GPUS", "0,1"),
        ]))
        .unwrap();
        assert_eq!(
            p,
            Placement {
                source: "slurm",
                rank: 2,
                size: 3,
                local_rank: 0,
                hosts: 3,
                job_id: "42".into(),
                nodes: vec!["node1".into(), "node2".into(), "node3".into()],
                cpus_on_node: Some(2),
                gpus: Some(vec!["0".into(), "1".into()]),
            }
        );
        assert!(!p.is_head());
        // In the batch script itself (no step) `launch` runs once: not a rank of a step.
        let batch = placement(&env(&[("SLURM_PROCID", "0"), ("SLURM_JOB_ID", "42")])).unwrap();
        assert_eq!((batch.source, batch.rank, batch.size, batch.job_id.as_str()), ("none", 0, 1, "42"));
    }

    #[test]
    fn mpi_launchers_are_read_too() {
        let o = placement(&env(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ]))
        .unwrap();
        assert_eq!(o.hosts, 2);
        // mpirun in an allocation: its ranks inherit srun's variables from its daemons.
        let in_slurm = placement(&env(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("SLURM_PROCID", "0"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_JOB_ID", "7"),
        ]))
        .unwrap();
        assert_eq!((in_slurm.source, in_slurm.rank, in_slurm.size, in_slurm.job_id.as_str()), ("openmpi", 1, 2, "7"));
        assert_eq!((o.source, o.rank, o.size, o.local_rank, o.job_id.as_str()), ("openmpi", 1, 4, 1, "local"));
        let x = placement(&env(&[("PMIX_RANK", "0"), ("PMIX_NAMESPACE", "prterun-h-1234@1")])).unwrap();
        assert_eq!((x.source, x.rank, x.size, x.job_id.as_str()), ("pmix", 0, 1, "prterun-h-1234_1"));
        let m = placement(&env(&[("PMI_RANK", "3"), ("PMI_SIZE", "4"), ("MPI_LOCALRANKID", "0")])).unwrap();
        assert_eq!((m.source, m.rank, m.size, m.local_rank), ("pmi", 3, 4, 0));
    }

    #[test]
    fn malformed_launcher_variables_are_refused_clearly() {
        let e = placement(&env(&[("OMPI_COMM_WORLD_RANK", "x"), ("OMPI_COMM_WORLD_SIZE", "3")])).unwrap_err();
        assert!(e.to_string().contains("OMPI_COMM_WORLD_RANK"), "{e}");
        let e = placement(&env(&[("PMI_RANK", "4"), ("PMI_SIZE", "4")])).unwrap_err();
        assert!(e.to_string().contains("rank 4 of 4"), "{e}");
        let e = placement(&env(&[("OMPI_COMM_WORLD_RANK", "0")])).unwrap_err();
        assert!(e.to_string().contains("OMPI_COMM_WORLD_SIZE"), "{e}");
    }
}
