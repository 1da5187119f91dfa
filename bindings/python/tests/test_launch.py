"""A node runtime as its own process (`python -m rayhpc.node`, `rayhpc launch`) and drivers
that attach to it with `init(address=...)`. Each test uses a runtime directory of its own."""

import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

DRIVER = """
import os, sys, numpy as np, rayhpc as ray
ray.init(address=sys.argv[1] if len(sys.argv) > 1 else None)
@ray.remote
def f(x):
    return x + 1
@ray.remote
class C:
    def __init__(self):
        self.n = 0
    def inc(self):
        self.n += 1
        return self.n
c = C.remote()
big = ray.get(ray.put(np.ones(2_000_000)))
print(ray.get(f.remote(41)), ray.get([c.inc.remote() for _ in range(3)]), big.sum(), big.flags.writeable, ray.cluster_resources()["CPU"])
ray.shutdown()
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
"""


def env_with(tmp_path, **extra):
    env = dict(os.environ)
    env.pop("RAYHPC_ADDRESS", None)
    env["RAYHPC_RUNTIME_DIR"] = str(tmp_path)
    env.update(extra)
    return env


@pytest.fixture
def node(tmp_path):
    env = env_with(tmp_path)
    p = subprocess.Popen([sys.executable, "-m", "rayhpc.node", "--num-cpus", "2"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    assert line.startswith("RAYHPC_ADDRESS="), (line, p.stderr.read() if p.poll() is not None else "")
    yield p, line.strip().split("=", 1)[1], env
    p.terminate()
    assert p.wait(timeout=30) == 0


def run_driver(env, *args):
    return subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, env=env, timeout=120)


def test_drivers_attach_by_auto_and_by_address_and_the_node_outlives_them(node, tmp_path):
    p, address, env = node
    with open(tmp_path / "job-local" / "address") as f:
        assert f.read() == address
    for args in (["auto"], [address]):
        r = run_driver(env, *args)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["42", "[1,", "2,", "3]", "2000000.0", "False", "2.0"]
    # Two drivers at once.
    both = [subprocess.Popen([sys.executable, "-c", DRIVER, "auto"], stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    for d in both:
        out, _ = d.communicate(timeout=120)
        assert d.returncode == 0 and out.startswith("42 ")
    assert p.poll() is None, "the node runs on after its drivers"


def test_a_connection_that_is_not_a_driver_is_refused_and_the_node_goes_on(node):
    import socket

    p, address, env = node
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.path.join(address, "node.sock"))
    s.sendall(b"GARBAGE!GARBAGE!")
    s.close()
    r = run_driver(env, "auto")
    assert r.returncode == 0, r.stderr
    assert p.poll() is None


def test_auto_without_a_node_is_a_clear_error(tmp_path):
    code = "import rayhpc as ray\ntry:\n    ray.init(address='auto')\nexcept ConnectionError as e:\n    print('ConnectionError', e)\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env_with(tmp_path), timeout=60)
    assert r.stdout.startswith("ConnectionError Could not find any running rayhpc instance"), r.stdout + r.stderr


def rayhpc_binary():
    path = os.path.join(ROOT, "target", "debug", "rayhpc")
    if not os.path.exists(path):
        subprocess.run(["cargo", "build", "-q", "-p", "rayhpc-launcher"], cwd=ROOT, check=True, timeout=1800)
    return path


def test_rayhpc_launch_runs_the_driver_then_stops_the_node_with_the_drivers_exit_code(tmp_path):
    env = env_with(tmp_path, RAYHPC_PYTHON=sys.executable, EXIT_CODE="3")
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    t = time.perf_counter()
    r = subprocess.run([rayhpc_binary(), "launch", "--num-cpus", "2", "--", sys.executable, str(script)],
                       capture_output=True, text=True, env=env, timeout=120)
    elapsed = time.perf_counter() - t
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stdout.startswith("42 [1, 2, 3] 2000000.0 False 2.0"), r.stdout + r.stderr
    assert "node runtime up at" in r.stderr
    # Nothing left: no node process, no session directory, no address file.
    assert not any(n.startswith("session-") for n in os.listdir(tmp_path)), os.listdir(tmp_path)
    assert not (tmp_path / "job-local" / "address").exists()
    print(f"rayhpc launch to driver exit: {elapsed:.2f} s")


def test_rayhpc_launch_reports_a_node_that_cannot_start(tmp_path):
    env = env_with(tmp_path, RAYHPC_PYTHON="/nonexistent/python")
    r = subprocess.run([rayhpc_binary(), "launch", "--", "true"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0
    assert "cannot start the node runtime" in r.stderr
