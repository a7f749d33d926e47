"""Benchmark: `kdeploy upgrade` of an HA lab cluster (3 control-plane+etcd, 2 workers) from
1.36.3 to 1.37.2 under an availability probe on a worker (the API through that node's load
balancer and a Service, each every 100 ms). Prints the deploy and upgrade wall times, the
upgrade's per-step times, and the probes' failed requests and longest gaps.

    python bench/upgrade.py [--old DIR] [--new DIR] [--batch 1]

Artifacts: KDEPLOY_ARTIFACTS_PREVIOUS (1.36.3) and KDEPLOY_ARTIFACTS (1.37.2) by default
(tools/run-tests builds both). Targets: under 1 % failed API requests, no gap over 2 s.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.lab.conftest import LabCluster  # noqa: E402
from tests.lab.test_up import events  # noqa: E402
from tests.lab.test_upgrade import (NEW, OLD, deploy_workload, describe_probe,  # noqa: E402
                                    set_version, start_probe, stop_probe)


def kdeploy(*args: str) -> tuple[float, list[dict]]:
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "kdeploy", *args, "--json"], capture_output=True, text=True)
    secs = time.monotonic() - t
    if p.returncode != 0:
        print(p.stdout[-3000:], p.stderr[-3000:])
        sys.exit(f"kdeploy {args[0]} failed (rc {p.returncode})")
    return secs, events(p.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", default=os.environ.get("KDEPLOY_ARTIFACTS_PREVIOUS"))
    ap.add_argument("--new", default=os.environ.get("KDEPLOY_ARTIFACTS"))
    ap.add_argument("--batch", default="1")
    a = ap.parse_args()
    if not (a.old and a.new):
        sys.exit("pass --old DIR (1.36.3) and --new DIR (1.37.2)")
    from kdeploy.lab import api
    name = "bench-upgrade"
    with tempfile.TemporaryDirectory() as d:
        inv = Path(d) / "cluster.yaml"
        info = api.up(name=name, masters=3, workers=2, output=inv, log=lambda s: None)
        lab = LabCluster(name=name, inventory=inv, info=info)
        try:
            set_version(inv, OLD)
            up_s, _ = kdeploy("up", "-i", str(inv), "--artifacts", a.old)
            svc = deploy_workload(lab, Path(a.old))
            set_version(inv, NEW)
            start_probe(lab, "m4", svc.strip())
            secs, evs = kdeploy("upgrade", "-i", str(inv), "--to", NEW, "--artifacts", a.new,
                                "--yes", "--batch", a.batch)
            probe = stop_probe(lab, "m4")
            print(f"kdeploy up at {OLD} (3+2, bare machines): {up_s:.1f} s")
            print(f"kdeploy upgrade {OLD} -> {NEW} (batch {a.batch}), verify included: {secs:.1f} s")
            for e in evs:
                if e.get("event") == "phase-done":
                    print(f"    {e['phase']:<22} {e['seconds']:7.1f} s")
            print(f"probes: {describe_probe(probe)}")
            print(f"ratios: api failed/1 % target = {probe['api']['failed_pct'] / 1.0:.2f}, "
                  f"longest api gap/2 s target = {probe['api']['longest_gap_s'] / 2.0:.2f}")
        finally:
            api.down(name=name, log=lambda s: None)


if __name__ == "__main__":
    main()
