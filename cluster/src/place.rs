//! Placement: where a task runs and where an actor lives, as pure functions of what the
//! caller knows — what is asked, this node's and the other nodes' resources, the CPUs this
//! node promised each of them, the actors it placed lately and the time. No I/O, no locks,
//! no clock: the cross-node service gathers that state, calls these, and acts on the
//! [`Decision`].
//!
//! **Tasks** ([`place_task`]). A task runs here while it fits here; else on the node it fits
//! best, the one least loaded for its size (here again on a tie), even if every node is busy:
//! it then queues there. A node's load is what this node knows of it: the larger of the CPUs
//! it last reported busy and the CPUs of the tasks this node placed there and has not seen
//! finish, plus the task, over its CPUs. A node that lacks a resource altogether never gets
//! the task. A task's inputs are this node's objects: from [`STAY_FROM`] bytes of them on, it
//! leaves only for a node less than half as loaded (a large input costs a transfer that a
//! short wait here may beat).
//!
//! **Actors** ([`place_actor`]). An actor holds what it asks for as long as it lives, and its
//! CPUs count 0 unless asked. It goes where every resource it asks for is free now: here
//! first, else the node with the most free CPUs. Resources given to actors placed in the last
//! [`RECENT`] count as taken (the nodes' reports may not show them yet), so that a burst of
//! actors spreads; what actors this node killed in the last [`RECENT`] held counts as free
//! on their nodes (up to the nodes' totals), so that actors made right after others were
//! killed find the room those left. When no node has it free: here if this node has it at all (the actor
//! waits), else the first node that has. Asked for what no node has: here (where it fails).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rayhpc_node::wire::WireOptions;
use rayhpc_transport::NodeId;

/// A node's resources: name → (total, available), as last reported.
pub type Resources = BTreeMap<String, (f64, f64)>;

/// What a task or an actor asks for: resource name → amount.
pub type Ask = BTreeMap<String, f64>;

/// Inputs from this size up keep a task on their node unless another is far less loaded.
pub const STAY_FROM: u64 = 64 << 20;

/// How long an actor placed counts as holding what it asked for (the reports lag).
pub const RECENT: Duration = Duration::from_secs(1);

/// Slack of the comparisons of amounts (fixed point in the ledger, floats here).
const SLACK: f64 = 1e-9;

/// A node as placement sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeLoad {
    /// Its transport id.
    pub node: NodeId,
    /// Its resources.
    pub resources: Resources,
    /// CPUs of the tasks this node placed there and has not seen finish.
    pub promised: f64,
}

/// Where the work goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// This node.
    Here,
    /// That node.
    There(NodeId),
}

/// An actor placed: where, what it asked for, when.
#[derive(Clone, Debug, PartialEq)]
pub struct Placed {
    /// The node.
    pub node: NodeId,
    /// What it asked for.
    pub ask: Ask,
    /// When.
    pub at: Instant,
}

impl Placed {
    /// Whether it still counts at `now` (placed less than [`RECENT`] before).
    pub fn is_recent(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.at) < RECENT
    }
}

/// What a task with options `o` asks for (1 CPU unless it says otherwise).
pub fn task_ask(o: &WireOptions) -> Ask {
    ask_of(o, 1.0)
}

/// What an actor with options `o` asks for (0 CPUs unless it says otherwise).
pub fn actor_ask(o: &WireOptions) -> Ask {
    ask_of(o, 0.0)
}

fn ask_of(o: &WireOptions, cpus: f64) -> Ask {
    let mut r = BTreeMap::new();
    r.insert("CPU".to_string(), o.num_cpus.unwrap_or(cpus));
    if let Some(g) = o.num_gpus.filter(|g| *g > 0.0) {
        r.insert("GPU".to_string(), g);
    }
    for (k, v) in &o.resources {
        r.insert(k.clone(), *v);
    }
    r
}

/// Whether a node of resources `res` has `ask` at all (free or not).
fn has(ask: &Ask, res: &Resources) -> bool {
    ask.iter().all(|(k, v)| *v <= 0.0 || res.get(k).is_some_and(|(t, _)| t + SLACK >= *v))
}

/// A node's load once a task of `cpu` CPUs runs there: the CPUs busy (reported) or promised,
/// plus the task, over its CPUs.
fn load(n: &NodeLoad, cpu: f64) -> f64 {
    let (total, avail) = n.resources.get("CPU").copied().unwrap_or((0.0, 0.0));
    let busy = (total - avail).max(n.promised);
    if total > 0.0 {
        (busy + cpu) / total
    } else if cpu > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

/// Where a task asking `ask` runs, its inputs here being `input_bytes` (see the module's
/// docs). `here` is this node; `nodes` the others (`here` among them is ignored).
pub fn place_task(ask: &Ask, here: &NodeLoad, nodes: &[NodeLoad], input_bytes: u64) -> Decision {
    let cpu = ask.get("CPU").copied().unwrap_or(0.0);
    let here_load = if has(ask, &here.resources) { load(here, cpu) } else { f64::INFINITY };
    if here_load <= 1.0 + SLACK {
        return Decision::Here; // fits here now
    }
    let best = nodes
        .iter()
        .filter(|n| n.node != here.node && has(ask, &n.resources))
        .map(|n| (load(n, cpu), n))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    // Large inputs are here: another node must be much less loaded to be worth them.
    let factor = if input_bytes >= STAY_FROM { 2.0 } else { 1.0 };
    match best {
        Some((l, n)) if l * factor < here_load => Decision::There(n.node),
        _ => Decision::Here,
    }
}

/// Where an actor asking `ask` lives (see the module's docs), `placed` being the actors
/// placed lately and `freed` those killed lately (those of the last [`RECENT`] before
/// `now` count: what a killed actor held is free on its node, up to the node's totals,
/// whatever its last report says).
pub fn place_actor(ask: &Ask, here: &NodeLoad, nodes: &[NodeLoad], placed: &[Placed], freed: &[Placed], now: Instant) -> Decision {
    let sum = |list: &[Placed]| {
        let mut by_node: HashMap<NodeId, Ask> = HashMap::new();
        for p in list.iter().filter(|p| p.is_recent(now)) {
            for (k, v) in &p.ask {
                *by_node.entry(p.node).or_default().entry(k.clone()).or_default() += v;
            }
        }
        by_node
    };
    let (taken, given_back) = (sum(placed), sum(freed));
    let of = |m: &HashMap<NodeId, Ask>, n: NodeId, k: &str| m.get(&n).and_then(|m| m.get(k)).copied().unwrap_or(0.0);
    // Free on node `n`: what it reported plus what was freed there since (at most its
    // total), less what was placed there since.
    let avail = |n: &NodeLoad, k: &str| n.resources.get(k).map(|(t, a)| (a + of(&given_back, n.node, k)).min(*t) - of(&taken, n.node, k));
    let free = |n: &NodeLoad| ask.iter().all(|(k, v)| *v <= 0.0 || avail(n, k).is_some_and(|a| a + SLACK >= *v));
    if free(here) {
        return Decision::Here;
    }
    let cpus = |n: &NodeLoad| avail(n, "CPU").unwrap_or(0.0);
    let others = || nodes.iter().filter(|n| n.node != here.node);
    if let Some(n) = others().filter(|n| free(n)).max_by(|a, b| cpus(a).total_cmp(&cpus(b))) {
        return Decision::There(n.node);
    }
    if has(ask, &here.resources) {
        return Decision::Here;
    }
    others().find(|n| has(ask, &n.resources)).map_or(Decision::Here, |n| Decision::There(n.node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::{Here, There};

    const HERE: NodeId = NodeId(0);
    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    /// A node with `(total, available)` of each resource, and `promised` CPUs.
    fn node(node: NodeId, res: &[(&str, f64, f64)], promised: f64) -> NodeLoad {
        NodeLoad { node, resources: res.iter().map(|(k, t, a)| (k.to_string(), (*t, *a))).collect(), promised }
    }

    fn cpus(node_id: NodeId, total: f64, free: f64) -> NodeLoad {
        node(node_id, &[("CPU", total, free)], 0.0)
    }

    /// A case of the killed actors' table: what it shows, this node, the other node, the
    /// actors placed lately, those killed lately, and the decision.
    type Freed = (&'static str, NodeLoad, NodeLoad, Vec<Placed>, Vec<Placed>, Decision);

    /// A case of a table: what it shows, the ask, this node, the others, the input bytes
    /// (tasks) or the actors placed lately, and the decision.
    type Case<T> = (&'static str, Ask, NodeLoad, Vec<NodeLoad>, T, Decision);

    fn ask(a: &[(&str, f64)]) -> Ask {
        a.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn tasks_run_here_while_they_fit_else_on_the_least_loaded_node_that_has_what_they_ask() {
        let one = ask(&[("CPU", 1.0)]);
        let gpu = ask(&[("CPU", 1.0), ("GPU", 1.0)]);
        let mib = 1 << 20;
        #[rustfmt::skip]
        let cases: Vec<Case<u64>> = vec![
            ("fits here: stays, however idle the others", one.clone(), cpus(HERE, 4.0, 1.0), vec![cpus(A, 4.0, 4.0)], 0, Here),
            ("here full: the least loaded node", one.clone(), cpus(HERE, 4.0, 0.0), vec![cpus(A, 4.0, 1.0), cpus(B, 4.0, 3.0)], 0, There(B)),
            ("a tie: here", one.clone(), cpus(HERE, 4.0, 0.0), vec![cpus(A, 4.0, 0.0)], 0, Here),
            ("every node busy: the one it fits best, where it queues", one.clone(), cpus(HERE, 2.0, 0.0), vec![cpus(A, 8.0, 0.0)], 0, There(A)),
            ("load is relative to a node's CPUs", one.clone(), cpus(HERE, 4.0, 0.0), vec![cpus(A, 2.0, 1.0), cpus(B, 16.0, 4.0)], 0, There(B)),
            ("tasks promised to a node count though its report lags", one.clone(), cpus(HERE, 4.0, 0.0),
                vec![node(A, &[("CPU", 4.0, 4.0)], 4.0), cpus(B, 4.0, 2.0)], 0, There(B)),
            ("a node without the resource never gets it", gpu.clone(), node(HERE, &[("CPU", 4.0, 0.0), ("GPU", 1.0, 0.0)], 0.0),
                vec![cpus(A, 4.0, 4.0)], 0, Here),
            ("here lacks it: a node that has it, busy or not", gpu.clone(), cpus(HERE, 4.0, 4.0),
                vec![cpus(A, 4.0, 4.0), node(B, &[("CPU", 4.0, 0.0), ("GPU", 1.0, 0.0)], 0.0)], 0, There(B)),
            ("large inputs stay unless the other is less than half as loaded", one.clone(), cpus(HERE, 4.0, 0.0),
                vec![cpus(A, 4.0, 2.0)], 64 * mib, Here),
            ("large inputs leave for a node less than half as loaded", one.clone(), cpus(HERE, 4.0, 0.0),
                vec![cpus(A, 4.0, 4.0)], 64 * mib, There(A)),
            ("small inputs leave for any less loaded node", one.clone(), cpus(HERE, 4.0, 0.0), vec![cpus(A, 4.0, 2.0)], 64 * mib - 1, There(A)),
            ("infeasible everywhere: here (where it fails)", ask(&[("CPU", 64.0)]), cpus(HERE, 4.0, 4.0),
                vec![cpus(A, 8.0, 8.0)], 0, Here),
            ("this node among the others is not a candidate", one.clone(), cpus(HERE, 4.0, 0.0), vec![cpus(HERE, 4.0, 4.0)], 0, Here),
            ("a zero-CPU task fits on a node without CPUs", ask(&[("CPU", 0.0)]), cpus(HERE, 0.0, 0.0), vec![cpus(A, 4.0, 4.0)], 0, Here),
        ];
        for (what, ask, here, nodes, bytes, want) in cases {
            assert_eq!(place_task(&ask, &here, &nodes, bytes), want, "{what}");
        }
    }

    #[test]
    fn actors_go_where_what_they_ask_is_free_and_recent_placements_count() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(10);
        let cpu = ask(&[("CPU", 1.0)]);
        let two = ask(&[("CPU", 2.0)]);
        let zero = ask(&[("CPU", 0.0)]);
        let gpu = ask(&[("CPU", 0.0), ("GPU", 1.0)]);
        let placed = |node, ask: &Ask, ago: f64| Placed { node, ask: ask.clone(), at: now - Duration::from_secs_f64(ago) };
        #[rustfmt::skip]
        let cases: Vec<Case<Vec<Placed>>> = vec![
            ("free here: here", cpu.clone(), cpus(HERE, 2.0, 1.0), vec![cpus(A, 8.0, 8.0)], vec![], Here),
            ("an actor's CPUs count 0 unless asked", zero.clone(), cpus(HERE, 2.0, 0.0), vec![cpus(A, 8.0, 8.0)], vec![], Here),
            ("not free here: the node with the most free CPUs", cpu.clone(), cpus(HERE, 2.0, 0.0),
                vec![cpus(A, 4.0, 1.0), cpus(B, 4.0, 3.0)], vec![], There(B)),
            ("actors placed in the last second hold what they asked", cpu.clone(), cpus(HERE, 2.0, 0.0),
                vec![cpus(A, 4.0, 3.0), cpus(B, 4.0, 2.0)], vec![placed(A, &two, 0.5)], There(B)),
            ("older placements no longer count", cpu.clone(), cpus(HERE, 2.0, 0.0),
                vec![cpus(A, 4.0, 3.0), cpus(B, 4.0, 2.0)], vec![placed(A, &two, 1.5)], There(A)),
            ("those placed here count here too", cpu.clone(), cpus(HERE, 2.0, 1.0), vec![cpus(A, 4.0, 4.0)], vec![placed(HERE, &cpu, 0.1)], There(A)),
            ("a burst fills a node, then goes on to the next", two.clone(), cpus(HERE, 2.0, 0.0),
                vec![cpus(A, 4.0, 4.0), cpus(B, 4.0, 3.0)], vec![placed(A, &two, 0.2), placed(A, &two, 0.1)], There(B)),
            ("free nowhere: here if this node has it at all", cpu.clone(), cpus(HERE, 2.0, 0.0), vec![cpus(A, 4.0, 0.0)], vec![], Here),
            ("free nowhere and not here at all: the first node that has it", gpu.clone(), cpus(HERE, 2.0, 2.0),
                vec![cpus(A, 4.0, 4.0), node(B, &[("CPU", 4.0, 4.0), ("GPU", 2.0, 0.0)], 0.0)], vec![], There(B)),
            ("a GPU free elsewhere", gpu.clone(), cpus(HERE, 2.0, 2.0),
                vec![cpus(A, 4.0, 4.0), node(B, &[("CPU", 4.0, 0.0), ("GPU", 2.0, 1.0)], 0.0)], vec![], There(B)),
            ("infeasible: here (where it fails)", ask(&[("GPU", 8.0)]), cpus(HERE, 2.0, 2.0),
                vec![node(A, &[("GPU", 2.0, 2.0)], 0.0)], vec![], Here),
        ];
        for (what, ask, here, nodes, placed, want) in cases {
            assert_eq!(place_actor(&ask, &here, &nodes, &placed, &[], now), want, "{what}");
        }
    }

    #[test]
    fn what_actors_killed_lately_held_is_free_on_their_node_whatever_its_report_says() {
        let now = Instant::now() + Duration::from_secs(10);
        let two = ask(&[("CPU", 2.0)]);
        let at = |node, ago: f64| Placed { node, ask: two.clone(), at: now - Duration::from_secs_f64(ago) };
        // Two nodes of 2 CPUs whose whole-node actors were just killed; the other node's
        // report may still show its CPUs taken.
        let (here_free, a_busy, a_free) = (cpus(HERE, 2.0, 2.0), cpus(A, 2.0, 0.0), cpus(A, 2.0, 2.0));
        #[rustfmt::skip]
        let cases: Vec<Freed> = vec![
            ("freed here: here", here_free.clone(), a_busy.clone(), vec![], vec![at(HERE, 0.1)], Here),
            ("placed here since: the node freed lately, though its report shows it busy", here_free.clone(), a_busy.clone(),
                vec![at(HERE, 0.05)], vec![at(A, 0.1)], There(A)),
            ("nothing freed there: here, where it waits", here_free.clone(), a_busy.clone(), vec![at(HERE, 0.05)], vec![], Here),
            ("freed long ago: the report is to be believed", here_free.clone(), a_busy.clone(), vec![at(HERE, 0.05)],
                vec![at(A, 1.5)], Here),
            ("what is freed counts up to the node's total (a report may show it freed already)", cpus(HERE, 2.0, 0.0),
                a_free.clone(), vec![at(A, 0.05)], vec![at(A, 0.1)], Here),
        ];
        for (what, here, a, placed, freed, want) in cases {
            assert_eq!(place_actor(&two, &here, &[a], &placed, &freed, now), want, "{what}");
        }
    }

    #[test]
    fn asks_default_to_one_cpu_for_tasks_and_none_for_actors() {
        let mut o = WireOptions::default();
        assert_eq!(task_ask(&o), ask(&[("CPU", 1.0)]));
        assert_eq!(actor_ask(&o), ask(&[("CPU", 0.0)]));
        o.num_cpus = Some(2.0);
        o.num_gpus = Some(0.0);
        o.resources.push(("fpga".into(), 1.0));
        assert_eq!(task_ask(&o), ask(&[("CPU", 2.0), ("fpga", 1.0)]));
        o.num_gpus = Some(0.5);
        assert_eq!(actor_ask(&o), ask(&[("CPU", 2.0), ("GPU", 0.5), ("fpga", 1.0)]));
    }
}
