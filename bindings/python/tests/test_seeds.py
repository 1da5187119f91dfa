"""Every Ray Core example of the seed tutorials, run as its own program (see seeds/README.md)
with `import rayhpc as ray`, and what it prints checked against what Ray prints."""

import os
import re
import shlex
import subprocess
import sys

import pytest

SEEDS = os.path.join(os.path.dirname(__file__), "seeds")

# Each program's output, line by line: a string is matched exactly, a compiled pattern fully.
EXPECTED = {
    "s000_add.py": ["[3, 7]"],
    "s000_counter.py": ["[1, 2]", "2"],
    "s000_put_get_wait.py": ["[1, 2, 3, 4, 5]", "2 2", "4 0", "[0, 1, 2, 3]"],
    "s000_kill.py": ["RayActorError: ActorDiedError"],
    "s000_resources.py": ["[1, 1, 1]"],
    "s000_errors_retries.py": [
        "Task failed: ValueError in might_fail()",
        "Traceback (most recent call last):",
        re.compile(r'  File ".*", line \d+, in might_fail'),
        "ValueError: Negative value",
        "None",
    ],
    # The values come back as copies: each Bar has another id than the actor's.
    "s000_serialization.py": [re.compile(r"(\d+) (?!\1$)\d+ Bar")] * 4,
    "s000_unserializable.py": [re.compile(r"Error: TypeError in MyActor\.get_value\(\)"), "..."],
    "s000_attributes.py": ["0 100", "10 20"],
    # A worker imports `constants` afresh; the value captured by the function travels with it.
    "s000_context.py": ["1", "2"],
    "s001_processes.py": ["1", "(10, 10) 0.0"],
    "s003_tasks.py": ["[0, 1, 2, 3]", "(1000, 1000)", "36", "36", "36", "36"],
    "s003_actors.py": ["0", "2", "...", "all 9 9"],
    "s004_core.py": ["30 30", "2 1 2", "30 [1, 2, 3, 4] [10, 20, 30, 40]", re.compile(r"True \d\.\d+")],
}


# A command prefix that runs each program as the driver of a `rayhpc launch` instead (on a
# Slurm cluster: slurm/launch-test.sh sets it); the programs themselves stay unchanged.
RUNNER = os.environ.get("RAYHPC_SEED_RUNNER")


def run(script):
    env = dict(os.environ)
    env["PYTHONPATH"] = SEEDS + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, script]
    if RUNNER:
        cmd = shlex.split(RUNNER) + [sys.executable, os.path.join(SEEDS, script)]
    p = subprocess.run(cmd, cwd=SEEDS, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"{script} exited with {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout.splitlines()


def matches(expected, lines):
    """`expected` against `lines`: "..." skips any lines up to the next expected one (or to
    the end when it is last)."""
    i = 0
    for n, e in enumerate(expected):
        if e == "...":
            if n == len(expected) - 1:
                return True
            nxt = expected[n + 1]
            while i < len(lines) and not fits(nxt, lines[i]):
                i += 1
            continue
        if i >= len(lines) or not fits(e, lines[i]):
            return False
        i += 1
    return i == len(lines)


def fits(e, line):
    return e.fullmatch(line) is not None if isinstance(e, re.Pattern) else e == line


def test_every_seed_program_has_an_expectation():
    scripts = sorted(f for f in os.listdir(SEEDS) if f.startswith("s") and f.endswith(".py"))
    assert scripts == sorted(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_seed_program_prints_what_ray_prints(script):
    lines = run(script)
    assert matches(EXPECTED[script], lines), "\n".join(lines)


def test_the_message_actor_sees_every_message_while_the_tasks_still_run():
    lines = run("s003_actors.py")
    batches = [line for line in lines if line.startswith("New messages:")]
    # The driver's calls are answered while the worker tasks run (not after they end):
    # messages arrive over several polls.
    assert sum(1 for b in batches if b != "New messages: []") >= 2, lines
