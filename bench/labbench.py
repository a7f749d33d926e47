"""Shared pieces of the lab benchmarks (bench/upgrade.py, membership.py, etcd.py, certs.py):
run kdeploy timed (exit on failure, printing its output), and a throwaway lab."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.lab.conftest import LabCluster  # noqa: E402


def kdeploy(*args: str, ok=(0,)) -> tuple[float, str]:
    """(seconds, stdout) of `kdeploy ARGS`; exits the benchmark when it fails."""
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "kdeploy", *args], capture_output=True, text=True)
    secs = time.monotonic() - t
    if p.returncode not in ok:
        print(p.stdout[-3000:], p.stderr[-3000:])
        sys.exit(f"kdeploy {' '.join(args[:2])} failed (rc {p.returncode})")
    return secs, p.stdout


@contextmanager
def lab(name: str, masters: int, workers: int):
    """A lab of its own for one benchmark, brought down at the end: (LabCluster, inventory)."""
    from kdeploy.lab import api
    with tempfile.TemporaryDirectory() as d:
        inv = Path(d) / "cluster.yaml"
        info = api.up(name=name, masters=masters, workers=workers, output=inv, log=lambda s: None)
        lc = LabCluster(name=name, inventory=inv, info=info)
        try:
            yield lc, inv
        finally:
            lc.down()
