"""Benchmark: the same `kdeploy up` of a 1+2 lab (1 control plane + 2 workers) from bare
machines with each transport, side by side in one run: ssh (paramiko) and ansible (one
ansible-runner run per step), then each one's no-op re-run. Prints seconds and the ratio
ansible/ssh (target: within 2x), for the whole `up` (verify included) and for the deploy
alone (up's timings without verify). Artifacts must be built (KDEPLOY_ARTIFACTS or
--artifacts). Fresh machines for each transport (lab `ansbench`, removed at the end).

    python bench/ansible.py [--artifacts DIR] [--masters 1] [--workers 2] [--order ssh,ansible]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def up(inv: Path, art: str, transport: str) -> tuple[float, dict]:
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "kdeploy", "up", "-i", str(inv), "--artifacts", art,
                        "--transport", transport, "--json"], capture_output=True, text=True)
    secs = time.monotonic() - t
    if p.returncode != 0:
        print(p.stdout[-3000:], p.stderr[-3000:])
        sys.exit(f"kdeploy up --transport {transport} failed (rc {p.returncode})")
    done = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{") and '"done"' in x]
    return secs, (done[0]["timings"] if done else {})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", default=os.environ.get("KDEPLOY_ARTIFACTS"))
    ap.add_argument("--masters", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--order", default="ssh,ansible")
    a = ap.parse_args()
    if not a.artifacts:
        sys.exit("pass --artifacts DIR (`kdeploy artifacts build` prints where it builds)")
    from kdeploy.lab import api
    name = "ansbench"
    res: dict[str, dict] = {}
    try:
        for transport in a.order.split(","):
            with tempfile.TemporaryDirectory() as d:
                inv = Path(d) / "cluster.yaml"
                api.up(name=name, masters=a.masters, workers=a.workers, output=inv, log=lambda s: None)
                try:
                    first, timings = up(inv, a.artifacts, transport)
                    noop, _ = up(inv, a.artifacts, transport)
                finally:
                    api.down(name=name, log=lambda s: None)
            verify = timings.get("verify", 0.0)
            res[transport] = {"first": first, "deploy": first - verify, "verify": verify,
                              "noop": noop, "timings": timings}
            print(f"{transport:>8}: first up {first:6.1f} s (deploy {first - verify:6.1f} s + verify "
                  f"{verify:5.1f} s), no-op {noop:5.1f} s", flush=True)
    finally:
        if api_state_exists(name):
            api.down(name=name, log=lambda s: None)
    for transport, r in res.items():
        print(f"\n{transport} timings:")
        for k, v in r["timings"].items():
            print(f"    {k:<36} {v:7.1f} s")
    if {"ssh", "ansible"} <= set(res):
        s, an = res["ssh"], res["ansible"]
        print(f"\n{a.masters}+{a.workers} lab, ansible/ssh ratios (target <= 2.0):")
        for k in ("first", "deploy", "verify", "noop"):
            print(f"    {k:<8} {an[k]:6.1f} s / {s[k]:6.1f} s = {an[k] / max(s[k], 0.01):.2f}")


def api_state_exists(name: str) -> bool:
    from kdeploy.lab.state import LabState
    return LabState(name).exists()


if __name__ == "__main__":
    main()
