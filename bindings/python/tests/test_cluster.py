"""Three node runtimes as processes on loopback (`rayhpc launch` with the variables srun
gives each task): they join the head, the driver on rank 0 sees the whole cluster, tasks
spread when the head is busy, large values travel between nodes, a node killed with
SIGKILL mid-run has its tasks re-run elsewhere, and `rayhpc status` / `rayhpc stop` work.
The same under a real Slurm cluster is `slurm/launch-test.sh`."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_launch import rayhpc_binary

NODES = 3


def step_env(tmp_path, job, rank):
    env = dict(os.environ)
    env.pop("RAYHPC_ADDRESS", None)
    env.update({
        "SLURM_JOB_ID": job, "SLURM_STEP_ID": "0", "SLURM_PROCID": str(rank), "SLURM_LOCALID": "0",
        "SLURM_STEP_NUM_TASKS": str(NODES), "SLURM_STEP_NUM_NODES": str(NODES),
        "RAYHPC_RENDEZVOUS_DIR": str(tmp_path / "rdv"), "RAYHPC_RUNTIME_DIR": str(tmp_path / "rt"),
    })
    return env


def launch(tmp_path, job, rank, *command, extra=()):
    args = [rayhpc_binary(), "launch", "--interface", "127.0.0.1", "--num-cpus", "1", "--python", sys.executable,
            "--startup-timeout", "30", *extra]
    if command:
        args += ["--", *command]
    return subprocess.Popen(args, env=step_env(tmp_path, job, rank), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def run_cluster(tmp_path, job, driver, before=None, extra=lambda rank: ()):
    """Ranks 1.. first, then rank 0 with the driver; returns (rank 0's result, members)."""
    script = tmp_path / f"{job}.py"
    script.write_text(driver)
    members = [launch(tmp_path, job, r, extra=extra(r)) for r in range(1, NODES)]
    if before:
        before(members)
    head = launch(tmp_path, job, 0, sys.executable, str(script))
    out, err = head.communicate(timeout=120)
    codes = [m.wait(timeout=30) for m in members]
    return head.returncode, out, err, codes, members


SPREAD = """
import os, time, collections
import numpy as np
import rayhpc as ray
ray.init()
print("CPUs", ray.cluster_resources()["CPU"])
@ray.remote
def where(i):
    time.sleep(0.5)
    return i, os.environ["RAYHPC_STORE_SOCKET"]
got = ray.get([where.remote(i) for i in range(6)])
assert sorted(i for i, _ in got) == list(range(6))
print("spread", sorted(collections.Counter(w for _, w in got).values()))
@ray.remote
def big(n):
    return np.arange(n, dtype=np.float64)
@ray.remote
def total(a):
    return float(a.sum()), os.environ["RAYHPC_STORE_SOCKET"]
refs = [big.remote(2_000_000) for _ in range(3)]
want = float(np.arange(2_000_000, dtype=np.float64).sum())
assert all(ray.get(r).sum() == want for r in refs)
sums = ray.get([total.remote(r) for r in refs])
assert all(s == want for s, _ in sums), sums
print("big values ok on", len({w for _, w in sums}), "node(s)")
@ray.remote
def boom():
    raise KeyError("on purpose")
try:
    ray.get([boom.remote() for _ in range(3)])
except KeyError as e:
    print("error surfaced:", type(e).__name__)
print("nodes", sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]), sum(n["Resources"]["CPU"] for n in ray.nodes()))
"""


def test_three_nodes_join_spread_tasks_and_move_large_values(tmp_path):
    code, out, err, codes, _ = run_cluster(tmp_path, "spread", SPREAD)
    assert code == 0, out + err
    assert codes == [0] * (NODES - 1), err
    lines = out.splitlines()
    assert lines[0] == f"CPUs {float(NODES)}", out + err
    # Six half-second tasks on three one-CPU nodes: two each.
    assert lines[1] == "spread [2, 2, 2]", out + err
    assert lines[2].startswith("big values ok on"), out + err
    assert lines[3] == "error surfaced: RayTaskError(KeyError)", out + err
    assert lines[4] == "nodes ['127.0.0.1', '127.0.0.1', '127.0.0.1'] 3.0", out + err
    assert "cluster up: 3 nodes" in err
    # Nothing left: no rendezvous directory, no session.
    assert not os.listdir(tmp_path / "rdv"), os.listdir(tmp_path / "rdv")
    assert not [n for n in os.listdir(tmp_path / "rt") if n.startswith("session-")]


FAULT = """
import os, time, signal
import rayhpc as ray
ray.init()
@ray.remote
def slow(i):
    time.sleep(1.0)
    return i * 10
refs = [slow.remote(i) for i in range(6)]
time.sleep(0.4)
os.kill(int(open(os.environ["VICTIM"]).read()), signal.SIGKILL)
print(sorted(ray.get(refs)))
print("CPUs", ray.cluster_resources()["CPU"])
"""


def test_a_node_killed_mid_run_has_its_tasks_rerun_elsewhere(tmp_path):
    victim = tmp_path / "victim"

    def record(members):
        victim.write_text(str(members[-1].pid))

    os.environ["VICTIM"] = str(victim)
    try:
        code, out, err, codes, _ = run_cluster(tmp_path, "fault", FAULT, before=record)
    finally:
        del os.environ["VICTIM"]
    assert code == 0, out + err
    assert out.splitlines()[0] == str([i * 10 for i in range(6)]), out + err
    assert out.splitlines()[1] == f"CPUs {float(NODES - 1)}", out + err
    assert codes[-1] == -signal.SIGKILL and codes[0] == 0, codes


def test_status_shows_every_node_and_stop_stops_them(tmp_path):
    procs = [launch(tmp_path, "serve", r) for r in range(NODES)]
    try:
        env = step_env(tmp_path, "serve", 0)
        deadline = time.time() + 30
        while True:
            r = subprocess.run([rayhpc_binary(), "status", "--json"], env=env, capture_output=True, text=True, timeout=30)
            if r.returncode == 0 and len([n for n in json.loads(r.stdout) if n["alive"]]) == NODES:
                break
            assert time.time() < deadline, r.stdout + r.stderr
            time.sleep(0.1)
        nodes = json.loads(r.stdout)
        assert sorted(n["rank"] for n in nodes) == list(range(NODES))
        assert all(n["resources"]["CPU"]["total"] == 1.0 for n in nodes)
        # --fabric auto: libfabric's tcp;ofi_rxm when built with the feature (here: no RDMA
        # device), else TCP; every node the same.
        assert len({n["transport"] for n in nodes}) == 1 and nodes[0]["transport"] in ("tcp", "fabric:tcp;ofi_rxm"), nodes
        assert all(n["store"]["capacity"] > 0 and n["store"]["backing"] for n in nodes)
        table = subprocess.run([rayhpc_binary(), "status"], env=env, capture_output=True, text=True, timeout=30).stdout
        assert f"cluster of {NODES} nodes ({NODES} alive)" in table, table
        # A wrong secret is refused, and the cluster goes on.
        bad = tmp_path / "bad-secret"
        bad.write_bytes(b"x" * 32)
        bad.chmod(0o600)
        head = nodes[0]["address"] if nodes[0]["rank"] == 0 else [n for n in nodes if n["rank"] == 0][0]["address"]
        r = subprocess.run([rayhpc_binary(), "status", "--address", head, "--secret-file", str(bad)], env=env,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "refused" in r.stderr, r.stderr
        assert subprocess.run([rayhpc_binary(), "stop"], env=env, capture_output=True, timeout=30).returncode == 0
        assert [p.wait(timeout=30) for p in procs] == [0] * NODES
    finally:
        for p in procs:  # a failed check leaves no node behind
            if p.poll() is None:
                p.kill()
                p.wait()


LOST = """
import os, signal, time
import numpy as np
import rayhpc as ray
from rayhpc.exceptions import ObjectLostError
ray.init()
@ray.remote
def hold(s):
    time.sleep(s)
@ray.remote
def make():
    # Two objects put on whichever node runs this, returned as refs inside a value.
    return [ray.put(np.full(300_000, 7.0)), ray.put(np.full(300_000, 9.0))], os.getppid()
busy = hold.remote(2.0)           # the head's one CPU: `make` goes to another node
time.sleep(0.2)
(first, second), node_pid = ray.get(make.remote())
print("first", ray.get(first).sum())
os.kill(node_pid, signal.SIGKILL)  # the node that holds `second`
time.sleep(0.5)
try:
    ray.get(second, timeout=30)
    print("second: no error")
except ObjectLostError as e:
    print("second: ObjectLostError")
ray.get(busy)
"""


def test_refs_inside_values_cross_nodes_and_a_lost_object_raises(tmp_path):
    code, out, err, codes, _ = run_cluster(tmp_path, "lost", LOST)
    assert code == 0, out + err
    assert out.splitlines() == ["first 2100000.0", "second: ObjectLostError"], out + err


def test_two_launches_on_one_machine_do_not_collide(tmp_path):
    # Two jobs at once, on the same nodes (same runtime and rendezvous directories): each
    # its own head, secret, ports and sessions.
    drivers = {job: SPREAD.replace("print(\"spread\"", "print(\"" + job + " spread\"") for job in ("jobA", "jobB")}
    procs = {}
    for job, driver in drivers.items():
        script = tmp_path / f"{job}.py"
        script.write_text(driver)
        members = [launch(tmp_path, job, r) for r in range(1, NODES)]
        procs[job] = (launch(tmp_path, job, 0, sys.executable, str(script)), members)
    for job, (head, members) in procs.items():
        out, err = head.communicate(timeout=180)
        assert head.returncode == 0, out + err
        assert f"{job} spread" in out and f"CPUs {float(NODES)}" in out, out + err
        assert [m.wait(timeout=30) for m in members] == [0] * (NODES - 1)


ACTOR = """
import os
import rayhpc as ray
from rayhpc.exceptions import RayActorError
ray.init()
@ray.remote(resources={"special": 1})
class Counter:
    def __init__(self, start):
        self.n = start
    def inc(self, by):
        self.n += by
        return self.n, os.getppid()
c = Counter.remote(100)
print([ray.get(c.inc.remote(i))[0] for i in range(1, 4)])
node_pid = ray.get(c.inc.remote(0))[1]
print("on the special node:", node_pid == int(os.environ["SPECIAL_PID"]))
@ray.remote
def use(counter):
    return ray.get(counter.inc.remote(10))[0]
print("from a task:", ray.get(use.remote(c)))
@ray.remote
class Total:
    def __init__(self):
        self.n = 0
    def add(self, by):
        self.n += by
        return self.n
named = Total.options(name="shared").remote()
@ray.remote
def by_name():
    return ray.get(ray.get_actor("shared").add.remote(5))
print("by name:", sorted(ray.get([by_name.remote() for _ in range(3)])))
ray.kill(named)
again = Total.options(name="shared").remote()
print("the name again:", ray.get(again.add.remote(1)))
@ray.remote(max_restarts=0)
class Mortal:
    def die(self):
        os._exit(1)
    def ok(self):
        return 1
m = Mortal.options(name="mortal").remote()
try:
    ray.get(m.die.remote())
except RayActorError:
    pass
import time
time.sleep(0.5)  # the name is freed at the head in the background
print("the name after a death:", ray.get(Mortal.options(name="mortal").remote().ok.remote()))
ray.kill(c)
try:
    ray.get(c.inc.remote(1))
    print("after kill: no error")
except RayActorError:
    print("after kill: RayActorError")
"""


def test_an_actor_lives_on_the_node_that_has_its_resource(tmp_path):
    pid_file = tmp_path / "special.pid"

    def record(members):
        pid_file.write_text(str(members[-1].pid))

    os.environ["SPECIAL_PID_FILE"] = str(pid_file)
    driver = ACTOR.replace('int(os.environ["SPECIAL_PID"])', 'int(open(os.environ["SPECIAL_PID_FILE"]).read())')
    try:
        code, out, err, codes, _ = run_cluster(tmp_path, "actor", driver, before=record,
                                               extra=lambda r: ("--resources", '{"special": 1}') if r == NODES - 1 else ())
    finally:
        del os.environ["SPECIAL_PID_FILE"]
    assert code == 0, out + err
    assert out.splitlines() == ["[101, 103, 106]", "on the special node: True", "from a task: 116",
                                "by name: [5, 10, 15]", "the name again: 1", "the name after a death: 1",
                                "after kill: RayActorError"], out + err


LOCALITY = """
import os, time
import numpy as np
import rayhpc as ray
ray.init()
@ray.remote
def hold(s):
    time.sleep(s)
    return os.environ["RAYHPC_STORE_SOCKET"]
@ray.remote
def where(x):
    return os.environ["RAYHPC_STORE_SOCKET"]
head = ray.get(where.remote(0))       # the head is idle: here
time.sleep(0.2)                       # (its count of tasks running here catches up)
busy = hold.remote(2.0)               # now it is busy
time.sleep(0.2)
big = ray.put(np.ones(100_000_000 // 8))
print("small input goes:", ray.get(where.remote(1)) != head)
print("100 MB input stays:", ray.get(where.remote(big)) == head)
print("the head was the busy one:", ray.get(busy) == head)
"""


def test_a_task_with_large_inputs_stays_with_them(tmp_path):
    code, out, err, codes, _ = run_cluster(tmp_path, "locality", LOCALITY)
    assert code == 0, out + err
    assert out.splitlines() == ["small input goes: True", "100 MB input stays: True", "the head was the busy one: True"], out + err


BURST = """
import os
import rayhpc as ray
ray.init()
@ray.remote(num_cpus=1)
class Worker:
    def node(self):
        return os.getppid()
actors = [Worker.remote() for _ in range(3)]
print("actors on", len(set(ray.get([a.node.remote() for a in actors]))), "nodes")
"""


def test_a_burst_of_actors_asking_for_a_cpu_spreads_over_the_nodes(tmp_path):
    code, out, err, codes, _ = run_cluster(tmp_path, "burst", BURST)
    assert code == 0, out + err
    assert out.splitlines() == [f"actors on {NODES} nodes"], out + err


KV = """
import os, time
import rayhpc as ray
from rayhpc.experimental import internal_kv as ikv
ray.init()
@ray.remote(num_cpus=1)
class Watcher:
    def start(self):
        ray.kv.put(f"hello/{os.getppid()}", b"up")
        return ray.kv.watch("cfg/", 0, timeout=0).version
    def wait(self, since):
        ev = ray.kv.watch("cfg/", since, timeout=60)
        return ev.changes, os.getppid()
ws = [Watcher.remote() for _ in range(3)]
sinces = ray.get([w.start.remote() for w in ws])
waits = [w.wait.remote(s) for w, s in zip(ws, sinces)]
time.sleep(1.0)
ready, _ = ray.wait(waits, timeout=0)
print("waiting:", len(waits) - len(ready))
ray.kv.put("other", b"x")
ray.kv.put("cfg/lr", b"0.1")
got = ray.get(waits)
print("watchers on", len({n for _, n in got}), "nodes saw", sorted({tuple(c) for c, _ in got}))
print("hellos:", len(ray.kv.list("hello/")))
print("put again:", ray.kv.put("cfg/lr", b"0.2", overwrite=False), ray.kv.get("cfg/lr"))
print("internal_kv:", ikv._internal_kv_put("a", b"1", namespace="ns"), ikv._internal_kv_get("a", namespace="ns"),
      ikv._internal_kv_list("", namespace="ns"), ikv._internal_kv_exists("a"))
print("deleted:", ray.kv.delete("hello/", prefix=True), ray.kv.list("hello/"))
try:
    ray.kv.put(b"k" * 5000, b"v")
except Exception as e:
    print("long key:", "longest" in str(e))
"""


def test_the_kv_store_is_shared_and_watches_wake_on_every_node(tmp_path):
    code, out, err, codes, _ = run_cluster(tmp_path, "kv", KV)
    assert code == 0, out + err
    assert out.splitlines() == ["waiting: 3", "watchers on 3 nodes saw [((b'cfg/lr', b'0.1'),)]", "hellos: 3",
                                "put again: True b'0.1'", "internal_kv: False b'1' [b'a'] False",
                                "deleted: 3 []", "long key: True"], out + err


SHARED = """
import json, os, subprocess, sys, time, collections
import numpy as np
import rayhpc as ray
ray.init()
@ray.remote
def hold(s):
    time.sleep(s)
@ray.remote
def use(a):
    time.sleep(0.3)
    return os.getppid(), float(a.sum())
busy = hold.remote(3.0)                       # the head's one CPU: the readers go elsewhere
time.sleep(0.2)
arr = ray.put(np.ones(40_000_000 // 8))       # 40 MB: under the size that keeps tasks with it
got = ray.get([use.remote(arr) for _ in range(6)])
assert all(s == 5_000_000.0 for _, s in got), got
readers = collections.Counter(n for n, _ in got if n != os.getppid())   # on other nodes
time.sleep(1.5)                               # a heartbeat carries the counts to the head
nodes = json.loads(subprocess.run([sys.argv[1], "status", "--json"], capture_output=True, text=True, check=True).stdout)
pulls = sum(n["pulled"]["objects"] for n in nodes if n["rank"] != 0)
size = sum(n["pulled"]["bytes"] for n in nodes if n["rank"] != 0)
print("readers elsewhere:", sum(readers.values()) >= 4, "one pull per node:", pulls == len(readers),
      "of the object's size:", 40_000_000 * pulls <= size < 40_100_000 * pulls)
ray.get(busy)
"""


def test_readers_on_one_node_share_one_copy(tmp_path):
    script = tmp_path / "shared.py"
    script.write_text(SHARED)
    members = [launch(tmp_path, "shared", r) for r in range(1, NODES)]
    head = launch(tmp_path, "shared", 0, sys.executable, str(script), rayhpc_binary())
    out, err = head.communicate(timeout=120)
    assert [m.wait(timeout=30) for m in members] == [0] * (NODES - 1)
    assert head.returncode == 0, out + err
    # Readers on the other nodes (one CPU each, so they overlap there): one pull per node.
    assert out.splitlines() == ["readers elsewhere: True one pull per node: True of the object's size: True"], out + err


FABRIC = """
import hashlib, json, os, subprocess, sys, time
import numpy as np
import rayhpc as ray
ray.init()
@ray.remote
def hold(s):
    time.sleep(s)
@ray.remote
def digest(a):
    return hashlib.sha256(a.tobytes()).hexdigest(), os.getppid()
@ray.remote
def make(n):
    return np.random.default_rng(n).integers(0, 1 << 62, size=n)
busy = hold.remote(3.0)                        # the head's one CPU: the work goes elsewhere
time.sleep(0.2)
arr = np.random.default_rng(7).integers(0, 1 << 62, size=6_000_000)   # 48 MB
want = hashlib.sha256(arr.tobytes()).hexdigest()
got = ray.get([digest.remote(ray.put(arr)) for _ in range(2)])         # head -> members
print("inputs exact:", all(h == want for h, _ in got), "elsewhere:", all(n != os.getppid() for _, n in got))
made = ray.get(make.remote(3_000_000))                                  # member -> head
print("result exact:", np.array_equal(made, np.random.default_rng(3_000_000).integers(0, 1 << 62, size=3_000_000)))
nodes = json.loads(subprocess.run([sys.argv[1], "status", "--json"], capture_output=True, text=True, check=True).stdout)
print("transports:", sorted({n["transport"] for n in nodes}))
ray.get(busy)
"""


@pytest.mark.parametrize("provider", ["off", "tcp;ofi_rxm", "shm"])
def test_objects_move_over_the_fabric(tmp_path, provider):
    """The same object traffic over the TCP pull path (`off`) and over the fabric with each
    provider this machine has (no RDMA device: libfabric's tcp;ofi_rxm, and shm between the
    processes of one host): bytes exact both ways, and every node says how objects move."""
    job = "fabric-" + provider.split(";")[0]
    script = tmp_path / "fabric.py"
    script.write_text(FABRIC)
    extra = ("--fabric", provider)
    members = [launch(tmp_path, job, r, extra=extra) for r in range(1, NODES)]
    head = launch(tmp_path, job, 0, sys.executable, str(script), rayhpc_binary(), extra=extra)
    out, err = head.communicate(timeout=120)
    if "built without the `fabric` feature" in err:
        for m in members:
            m.kill()
            m.wait()
        pytest.skip("rayhpc was built without the fabric feature (ci/test.sh builds it with)")
    codes = [m.wait(timeout=30) for m in members]
    assert head.returncode == 0 and codes == [0] * (NODES - 1), out + err
    transport = "tcp" if provider == "off" else f"fabric:{provider}"
    assert out.splitlines() == ["inputs exact: True elsewhere: True", "result exact: True",
                                f"transports: ['{transport}']"], out + err
    logs = err + "".join(m.stderr.read() for m in members)
    assert "pulling over TCP instead" not in logs, logs


def test_a_broadcast_spreads_as_a_tree_and_every_copy_is_exact(tmp_path):
    """Four node runtimes: `rayhpc bench --across-nodes` has the three others pull one object
    at once, from the head alone, then as readers do (from the node the owner names): the
    copies spread in 2 rounds instead of 3 pulls from the head, and every copy's digest is
    checked against the original's."""
    n = 4
    procs = []
    for rank in [*range(1, n), 0]:
        env = step_env(tmp_path, "bcast", rank)
        env.update({"SLURM_STEP_NUM_TASKS": str(n), "SLURM_STEP_NUM_NODES": str(n)})
        procs.append(subprocess.Popen([rayhpc_binary(), "bench", "--across-nodes", "--interface", "127.0.0.1", "--object-mib", "16",
                                       "--trials", "1", "--broadcast-mib", "64", "--fabric", "off", "--json"],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out, err = procs[-1].communicate(timeout=300)
    assert [p.wait(timeout=60) for p in procs] == [0] * n, err
    figures = json.loads(out)
    assert figures["copies_verified"] and figures["transport"] == "tcp", out
    b = figures["broadcast"]
    assert b["to_nodes"] == 3 and b["from_head"]["rounds"] == 1 and b["tree"]["rounds"] == 2, out
