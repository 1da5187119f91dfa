"""The same checks of Ray Core's API (api_suite.py) in the three ways a driver meets rayhpc,
and the proof that they agree:

- embedded: `ray.init(num_cpus=2, ...)` in the driver process;
- attached: the driver of a one-node `rayhpc launch` (`ray.init()` finds RAYHPC_ADDRESS);
- cluster: the driver of `srun -N2 rayhpc launch` on the namespace Slurm cluster
  (slurm/cluster.sh; root only, skipped with the reason otherwise).

Every mode gives each node the same resources (api_suite.NODE_CPUS, NODE_RESOURCES), and
the head alone {"slot": 1} besides (HEAD_RESOURCES): one node's worth embedded and attached,
two nodes' in the cluster.
Each run prints one JSON object {check: result}; every result must be "ok", or exactly the
drift api_suite.KNOWN_DRIFT records for that check and mode, and the modes' objects must be
identical but for the checks whose recorded drift differs between modes.

RAYHPC_BIN names the `rayhpc` binary (default: target/debug/rayhpc, built if missing); the
Python that runs pytest runs the drivers and the nodes' workers. API_SUITE_DUMP=<dir> writes
each mode's JSON there (to update KNOWN_DRIFT from).
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

import api_suite
from test_launch import ROOT, rayhpc_binary

SUITE = os.path.abspath(api_suite.__file__)
CLUSTER = os.path.join(ROOT, "slurm", "cluster.sh")
TIMEOUT = 120  # seconds per mode: an upper bound (a run takes a few seconds)

RESULTS = {}  # mode -> the suite's JSON, for the comparison at the end


def binary():
    return os.environ.get("RAYHPC_BIN") or rayhpc_binary()


def clean_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "API_SUITE_")) and k != "RAYHPC_ADDRESS"}
    env.update({
        "RAYHPC_RUNTIME_DIR": str(tmp_path / "rt"),
        "RAYHPC_RENDEZVOUS_DIR": str(tmp_path / "rdv"),
        "API_SUITE_SCRATCH": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def run(cmd, env, cwd):
    """Runs `cmd` in a process group of its own (all of it is ended on a timeout); returns
    (exit code, stdout, stderr, seconds)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        err += f"\n(test_api_modes: killed after {TIMEOUT} s)"
    return p.returncode, out, err, time.perf_counter() - t


def cluster_unavailable():
    """Why the namespace Slurm cluster cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root: the namespace Slurm cluster needs root (network namespaces, daemons)"
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        return "network namespaces cannot be made here (unshare --net fails)"
    if not any(os.path.exists(os.path.join(d, "slurmctld")) for d in ("/usr/sbin", "/usr/bin")):
        return "Slurm is not installed: run `slurm/cluster.sh install` (root) first"
    taken = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    if any(line.split()[0].startswith("rhpc-") for line in taken.splitlines() if line.strip()):
        # One such cluster per machine; `up` would tear down another run's (launch-test.sh).
        return "a namespace Slurm cluster is already up (another run's?): `slurm/cluster.sh down` frees it"
    return None


def cluster_command(tmp_path):
    """srun over 2 nodes, one `rayhpc launch` each; rank 0 (the head, the driver's) alone
    gets the "slot" resource."""
    py = sys.executable
    head, node = json.dumps(api_suite.HEAD_RESOURCES), json.dumps(api_suite.NODE_RESOURCES)
    script = tmp_path / "launch.sh"
    script.write_text(
        "#!/bin/bash\n"
        f'if [ "$SLURM_PROCID" = 0 ]; then res={shlex.quote(head)}; else res={shlex.quote(node)}; fi\n'
        f"exec {shlex.quote(binary())} launch --num-cpus {api_suite.NODE_CPUS} --resources \"$res\" "
        f"--python {shlex.quote(py)} -- {shlex.quote(py)} {shlex.quote(SUITE)}\n")
    script.chmod(0o755)
    return ["bash", CLUSTER, "exec", "ctl", "srun", "-N2", "--ntasks-per-node=1", f"--chdir={tmp_path}", str(script)]


def last_json(out):
    for line in reversed(out.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            return None
    return None


@pytest.mark.parametrize("mode", api_suite.MODES)
def test_the_api_suite_in_each_mode(mode, tmp_path):
    tmp_path.chmod(0o755)
    env = clean_env(tmp_path)
    py = sys.executable
    if mode == "embedded":
        code, out, err, took = run([py, SUITE], env, tmp_path)
    elif mode == "attached":
        code, out, err, took = run([binary(), "launch", "--num-cpus", str(api_suite.NODE_CPUS), "--resources",
                                    json.dumps(api_suite.HEAD_RESOURCES), "--python", py, "--", py, SUITE], env, tmp_path)
    else:
        why = cluster_unavailable()
        if why:
            pytest.skip(why)
        binary()  # built before the cluster is up, if it must be
        t = time.perf_counter()
        try:
            up = subprocess.run(["bash", CLUSTER, "up", "2"], capture_output=True, text=True, timeout=TIMEOUT)
            assert up.returncode == 0, up.stdout + up.stderr
            print(f"cluster up in {time.perf_counter() - t:.2f} s")
            code, out, err, took = run(cluster_command(tmp_path), env, tmp_path)
        finally:
            # Always: the cluster is the machine's one (slurm/launch-test.sh uses it too).
            t = time.perf_counter()
            subprocess.run(["bash", CLUSTER, "down"], capture_output=True, timeout=TIMEOUT)
            print(f"cluster down in {time.perf_counter() - t:.2f} s")
    print(f"{mode}: the suite ran in {took:.2f} s")
    got = last_json(out)
    assert code == 0 and got is not None, f"{mode}: exit code {code}\n--- stdout\n{out[-4000:]}\n--- stderr\n{err[-8000:]}"
    RESULTS[mode] = got
    if os.environ.get("API_SUITE_DUMP"):  # a directory: each mode's JSON, to update KNOWN_DRIFT from
        with open(os.path.join(os.environ["API_SUITE_DUMP"], f"{mode}.json"), "w") as f:
            json.dump(got, f, indent=1)
    want = {fn.__name__: api_suite.expected_result(fn.__name__, mode) for fn in api_suite.CHECKS}
    wrong = {k: {"got": got.get(k, "<not run>"), "want": want.get(k, "<no such check>")}
             for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)}
    assert not wrong, f"{mode}: checks that differ from Ray or from the recorded drift:\n" + \
        json.dumps(wrong, indent=1) + f"\n--- stderr\n{err[-6000:]}"


def test_the_modes_give_identical_results():
    ran = [m for m in api_suite.MODES if m in RESULTS]
    if len(ran) < 2:
        pytest.skip(f"only {ran} ran")
    # Checks whose recorded drift is not the same in every mode: the known differences
    # between the modes (listed in api_suite.KNOWN_DRIFT); everything else must agree.
    differ = {name for name in RESULTS[ran[0]]
              if len({api_suite.expected_result(name, m) for m in api_suite.MODES}) > 1}
    first = {k: v for k, v in RESULTS[ran[0]].items() if k not in differ}
    for mode in ran[1:]:
        other = {k: v for k, v in RESULTS[mode].items() if k not in differ}
        assert other == first, (mode, ran[0], {k: (other.get(k), first.get(k)) for k in set(first) | set(other)
                                               if other.get(k) != first.get(k)})
    # And the known differences are differences indeed (else the table is stale).
    for name in sorted(differ):
        assert len({RESULTS[m][name] for m in ran}) == len({api_suite.expected_result(name, m) for m in ran}), name
