"""`python -m rayhpc.microbenchmark` prints Ray's metric names with measured rates."""

import json
import re
import subprocess
import sys


def test_the_microbenchmark_prints_rays_metric_names_with_rates(tmp_path):
    out = tmp_path / "figures.json"
    p = subprocess.run(
        [sys.executable, "-m", "rayhpc.microbenchmark", "--trial-seconds", "0.2", "--only", "tasks_sync", "--only", "get_calls",
         "--json", str(out)],
        capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = re.findall(r"^(\w+) per second ([0-9.]+) \+- ([0-9.]+)$", p.stdout, re.M)
    assert [name for name, _, _ in lines] == ["single_client_get_calls", "single_client_tasks_sync"], p.stdout
    assert all(float(rate) > 0 for _, rate, _ in lines)
    figures = json.loads(out.read_text())
    assert set(figures) == {"single_client_get_calls", "single_client_tasks_sync"}
