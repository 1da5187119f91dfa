//! Which CPUs this process may use and which NUMA node each one sits on.
//!
//! The CPU list is the calling thread's affinity mask, so `taskset`, a Slurm cpuset or a
//! cgroup limit is respected. NUMA nodes and distances come from `/sys/devices/system/node`
//! (a machine without that tree is one node). The victim order of work stealing is derived
//! here: same NUMA node first, then by increasing node distance.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// One usable CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    /// The OS CPU number.
    pub id: usize,
    /// The NUMA node it belongs to.
    pub numa: usize,
}

/// The CPUs a pool may use, with their NUMA placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Usable CPUs in increasing id order.
    pub cpus: Vec<Cpu>,
    /// `distance[a][b]`: the ACPI SLIT distance between NUMA nodes `a` and `b` (10 = local).
    pub distance: Vec<Vec<u32>>,
    /// Where the facts came from (`sysfs`, `hwloc`, or `synthetic`).
    pub source: &'static str,
}

impl Topology {
    /// Reads the affinity mask of the calling thread and the NUMA layout: from hwloc when
    /// the `hwloc` feature is on and hwloc loads, else from `/sys`.
    ///
    /// # Errors
    /// When the affinity mask cannot be read. A missing NUMA tree is not an error: all CPUs
    /// are then placed on node 0.
    pub fn detect() -> io::Result<Self> {
        let cpus = crate::sys::current_affinity()?;
        #[cfg(feature = "hwloc")]
        if let Some(t) = Self::from_hwloc(&cpus) {
            return Ok(t);
        }
        Ok(Self::from_sysfs(Path::new("/sys/devices/system/node"), &cpus))
    }

    /// The NUMA layout of `cpus` as hwloc sees it; `None` when hwloc cannot load a topology.
    #[cfg(feature = "hwloc")]
    pub fn from_hwloc(cpus: &[usize]) -> Option<Self> {
        use hwlocality::object::types::ObjectType;
        let topo = hwlocality::Topology::new().ok()?;
        let mut numa_of: Vec<(usize, usize)> = Vec::new(); // (cpu, node)
        let mut max_node = 0;
        for node in topo.objects_with_type(ObjectType::NUMANode) {
            let n = node.os_index()?;
            max_node = max_node.max(n);
            for cpu in node.cpuset()?.iter_set() {
                numa_of.push((usize::from(cpu), n));
            }
        }
        let mut distance = vec![vec![20u32; max_node + 1]; max_node + 1];
        for (a, row) in distance.iter_mut().enumerate() {
            row[a] = 10;
        }
        if let Ok(matrices) = topo.distances_with_type(None, ObjectType::NUMANode) {
            if let Some(m) = matrices.first() {
                for ((from, to), d) in m.object_distances() {
                    if let (Some(a), Some(b)) = (from.and_then(|o| o.os_index()), to.and_then(|o| o.os_index())) {
                        if a <= max_node && b <= max_node {
                            distance[a][b] = u32::try_from(d).unwrap_or(u32::MAX);
                        }
                    }
                }
            }
        }
        let cpus = cpus.iter().map(|&id| Cpu { id, numa: numa_of.iter().find(|(c, _)| *c == id).map_or(0, |(_, n)| *n) }).collect();
        Some(Topology { cpus, distance, source: "hwloc" })
    }

    /// Builds a topology for `cpus` from a sysfs-like node directory (`nodeN/cpulist`,
    /// `nodeN/distance`). Used by [`Topology::detect`] and by tests with a fabricated tree.
    pub fn from_sysfs(node_dir: &Path, cpus: &[usize]) -> Self {
        let mut numa_of: Vec<(usize, usize)> = Vec::new(); // (cpu, node)
        let mut nodes: Vec<usize> = Vec::new();
        if let Ok(entries) = fs::read_dir(node_dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(n) = name.to_str().and_then(|s| s.strip_prefix("node")).and_then(|s| s.parse().ok()) else {
                    continue;
                };
                let path: PathBuf = e.path().join("cpulist");
                if let Ok(list) = fs::read_to_string(&path) {
                    if let Some(list) = parse_cpulist(list.trim()) {
                        nodes.push(n);
                        numa_of.extend(list.into_iter().map(|c| (c, n)));
                    }
                }
            }
        }
        nodes.sort_unstable();
        let max_node = nodes.last().copied().unwrap_or(0);
        let mut distance = vec![vec![20u32; max_node + 1]; max_node + 1];
        for (a, row) in distance.iter_mut().enumerate() {
            row[a] = 10;
            let path = node_dir.join(format!("node{a}/distance"));
            if let Ok(text) = fs::read_to_string(path) {
                // The file lists distances to every *online* node in node order.
                for (b, d) in nodes.iter().zip(text.split_whitespace()) {
                    if let Ok(d) = d.parse() {
                        row[*b] = d;
                    }
                }
            }
        }
        let cpus = cpus.iter().map(|&id| Cpu { id, numa: numa_of.iter().find(|(c, _)| *c == id).map_or(0, |(_, n)| *n) }).collect();
        Topology { cpus, distance, source: "sysfs" }
    }

    /// A topology of `n` CPUs numbered from 0 on `nodes` NUMA nodes of equal size, for tests
    /// and for machines where nothing can be read.
    pub fn synthetic(n: usize, nodes: usize) -> Self {
        let nodes = nodes.max(1);
        let per = n.div_ceil(nodes).max(1);
        let cpus = (0..n).map(|id| Cpu { id, numa: id / per }).collect();
        let distance = (0..nodes).map(|a| (0..nodes).map(|b| if a == b { 10 } else { 20 }).collect()).collect();
        Topology { cpus, distance, source: "synthetic" }
    }

    /// Number of usable CPUs.
    pub fn len(&self) -> usize {
        self.cpus.len()
    }

    /// True when no CPU is usable (never the case for a detected topology).
    pub fn is_empty(&self) -> bool {
        self.cpus.is_empty()
    }

    /// Number of NUMA nodes spanned by the usable CPUs.
    pub fn numa_nodes(&self) -> usize {
        let mut n: Vec<usize> = self.cpus.iter().map(|c| c.numa).collect();
        n.sort_unstable();
        n.dedup();
        n.len()
    }

    fn dist(&self, a: usize, b: usize) -> u32 {
        self.distance.get(a).and_then(|r| r.get(b)).copied().unwrap_or(if a == b { 10 } else { 20 })
    }

    /// The order in which the executor on slot `me` (an index into [`Topology::cpus`]) visits
    /// the other slots when it steals: nearest NUMA node first, and inside one distance class
    /// starting just after `me` so that thieves spread over victims.
    pub fn victim_order(&self, me: usize) -> Vec<usize> {
        let n = self.cpus.len();
        let my_node = self.cpus[me].numa;
        let mut v: Vec<usize> = (1..n).map(|k| (me + k) % n).collect();
        v.sort_by_key(|&o| self.dist(my_node, self.cpus[o].numa)); // stable: keeps the rotation
        v
    }
}

/// Parses a Linux CPU list such as `0-3,8,10-11`. Returns `None` on malformed input.
pub fn parse_cpulist(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    if s.is_empty() {
        return Some(out);
    }
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.trim().parse().ok()?),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulist_parses_ranges_and_singles() {
        assert_eq!(parse_cpulist("0-3,8,10-11"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpulist(""), Some(vec![]));
        assert_eq!(parse_cpulist("3-1"), None);
        assert_eq!(parse_cpulist("a"), None);
    }

    #[test]
    fn fabricated_two_node_tree_orders_victims_by_distance() {
        let dir = std::env::temp_dir().join(format!("rayhpc-topo-{}", std::process::id()));
        for (n, list, dist) in [(0, "0-1", "10 21"), (1, "2-3", "21 10")] {
            let d = dir.join(format!("node{n}"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("cpulist"), list).unwrap();
            fs::write(d.join("distance"), dist).unwrap();
        }
        let t = Topology::from_sysfs(&dir, &[0, 1, 2, 3]);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(t.numa_nodes(), 2);
        assert_eq!(t.cpus[2], Cpu { id: 2, numa: 1 });
        assert_eq!(t.distance[0][1], 21);
        // Slot 0 (node 0) steals from slot 1 (node 0) before slots 2 and 3 (node 1).
        assert_eq!(t.victim_order(0), vec![1, 2, 3]);
        // Slot 2 (node 1) steals from 3 first, then node 0 starting after itself.
        assert_eq!(t.victim_order(2), vec![3, 0, 1]);
    }

    #[cfg(feature = "hwloc")]
    #[test]
    fn hwloc_and_sysfs_agree_on_this_machine() {
        let mask = crate::sys::current_affinity().unwrap();
        let h = Topology::from_hwloc(&mask).expect("hwloc loads a topology");
        let s = Topology::from_sysfs(Path::new("/sys/devices/system/node"), &mask);
        assert_eq!(h.source, "hwloc");
        assert_eq!(h.cpus, s.cpus);
        assert_eq!(h.numa_nodes(), s.numa_nodes());
        let n = h.distance.len().min(s.distance.len());
        for a in 0..n {
            assert_eq!(h.distance[a][a], 10);
        }
        assert_eq!(Topology::detect().unwrap().source, "hwloc");
    }

    #[test]
    fn detect_sees_this_process_mask() {
        let t = Topology::detect().unwrap();
        assert!(!t.is_empty());
        let mask = crate::sys::current_affinity().unwrap();
        assert_eq!(t.cpus.iter().map(|c| c.id).collect::<Vec<_>>(), mask);
    }
}
