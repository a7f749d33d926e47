"""Benchmark: `kdeploy certs rotate-ca` (all three CAs) on the lab `rot` (1 control-plane + 2
workers, 1.37.2) under an availability probe on a worker (the API through that node's load
balancer and a Service, every 100 ms).

    python bench/rotate_ca.py [--artifacts DIR] [--keep]

Reuses the lab `rot` when it is up, else starts it (and brings it down at the end unless
--keep). Prints the seconds of the rotation and of each stage, and the probes' failed requests
and longest gaps (the API probe uses the node's kubelet.conf and re-reads it when the rotation
replaces it, as the restarted kubelet does).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.lab.conftest import LabCluster  # noqa: E402
from tests.lab.test_upgrade import deploy_workload, describe_probe, start_probe, stop_probe  # noqa: E402

LAB = "rot"


def lab_rot(inv: Path, masters: int = 1, workers: int = 2) -> tuple[LabCluster, bool]:
    from dataclasses import asdict
    from kdeploy.lab import api
    from kdeploy.lab.state import LabState
    st = LabState(LAB)
    if st.exists() and st.load().phase == "up" and st.load().inventory:
        rec = st.load()
        info = {"netns": rec.netns, "key_file": rec.key_file, "known_hosts": rec.known_hosts,
                "machines": [asdict(m) for m in rec.machines]}
        return LabCluster(name=LAB, inventory=Path(rec.inventory), info=info), False
    inv.parent.mkdir(parents=True, exist_ok=True)
    info = api.up(name=LAB, masters=masters, workers=workers, output=inv, log=lambda s: None)
    return LabCluster(name=LAB, inventory=inv, info=info), True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", default=os.environ.get("KDEPLOY_ARTIFACTS"))
    ap.add_argument("--keep", action="store_true", help="leave the lab up")
    ap.add_argument("--masters", type=int, default=1, help="when the lab is started here")
    ap.add_argument("--workers", type=int, default=2, help="when the lab is started here")
    a = ap.parse_args()
    if not a.artifacts:
        sys.exit("pass --artifacts DIR (a built 1.37.2 set) or set KDEPLOY_ARTIFACTS")
    lab, started = lab_rot(Path("/tmp/rot/inv.yaml"), a.masters, a.workers)
    probe = lab.machines[-1]["name"]                  # the last machine: a worker
    masters = sum("control-plane" in m["roles"] for m in lab.machines)
    inv = str(lab.inventory)
    try:
        p = subprocess.run([sys.executable, "-m", "kdeploy", "up", "-i", inv, "--artifacts", a.artifacts],
                           capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"kdeploy up failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
        svc = deploy_workload(lab, Path(a.artifacts))
        start_probe(lab, probe, svc)
        t = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "kdeploy", "certs", "rotate-ca", "-i", inv, "--yes",
                            "--json"], capture_output=True, text=True)
        secs = time.monotonic() - t
        probes = stop_probe(lab, probe)
        if p.returncode != 0:
            sys.exit(f"rotate-ca failed (rc {p.returncode}):\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
        done = next(json.loads(ln) for ln in p.stdout.splitlines()
                    if ln.startswith("{") and '"rotated"' in ln)
        print(f"rotate-ca (3 CAs, {masters}+{len(lab.machines) - masters} lab, with verify): {secs:.1f} s")
        for s in done["stages"]:
            print(f"  stage {s['stage']:<8} {s['seconds']:>6} s  ({s['changes']} changes)")
        print(f"  probes on {probe}: {describe_probe(probes)}")
    finally:
        if started and not a.keep:
            lab.down()


if __name__ == "__main__":
    main()
