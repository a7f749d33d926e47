"""Benchmark: `kdeploy etcd backup` and `kdeploy etcd restore` on an HA lab cluster (3
control-plane+etcd hosts, 1 worker, 1.37.2) with some data in etcd.

    python bench/etcd.py [--artifacts DIR] [--configmaps 500] [--runs 3]

Prints: snapshot size and keys; backup seconds (median of --runs); restore seconds (median of
--runs, without verify) with its stages; and a restore with verify, as the CLI runs it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from labbench import kdeploy as run, lab as bench_lab  # noqa: E402
from tests.lab.test_upgrade import KUBECTL  # noqa: E402


def kdeploy(*args: str) -> tuple[float, dict]:
    """(seconds, its last JSON line)."""
    secs, out = run(*args)
    return secs, json.loads(next((ln for ln in reversed(out.splitlines()) if ln.startswith("{")), "{}"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", default=os.environ.get("KDEPLOY_ARTIFACTS"))
    ap.add_argument("--configmaps", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    if not a.artifacts:
        sys.exit("pass --artifacts DIR (a built 1.37.2 set) or set KDEPLOY_ARTIFACTS")
    with bench_lab("bench-etcd", 3, 1) as (lab, inv):
        kdeploy("up", "-i", str(inv), "--artifacts", a.artifacts)
        rc, _, err = lab.run("m1", f"for i in $(seq 1 {a.configmaps}); do echo '---'; echo 'apiVersion: v1'; "
                                   "echo 'kind: ConfigMap'; echo \"metadata: {name: bench-$i}\"; "
                                   "echo \"data: {k: $(head -c 512 /dev/urandom | base64 -w0)}\"; done "
                                   f"> /root/cms.yaml && {KUBECTL} apply -f /root/cms.yaml >/dev/null",
                             timeout=600)
        assert rc == 0, err
        backups, restores, stages = [], [], []
        for _ in range(a.runs):
            s, b = kdeploy("etcd", "backup", "-i", str(inv), "--json")
            backups.append(s)
        for _ in range(a.runs):
            s, r = kdeploy("etcd", "restore", "-i", str(inv), b["path"], "--yes", "--force",
                           "--no-verify", "--json")
            restores.append(s)
            stages.append(r["timings"])
        s_verify, _ = kdeploy("etcd", "restore", "-i", str(inv), b["path"], "--yes", "--force", "--json")
    print(f"snapshot: {b['bytes']} bytes, {b['keys']} keys, revision {b['revision']}")
    print(f"backup  median {statistics.median(backups):6.1f} s  (runs: {', '.join(f'{x:.1f}' for x in backups)})")
    print(f"restore median {statistics.median(restores):6.1f} s  (runs: {', '.join(f'{x:.1f}' for x in restores)})")
    for k in stages[0]:
        print(f"  {k:<20} median {statistics.median(st[k] for st in stages):6.1f} s")
    print(f"restore with verify    {s_verify:6.1f} s")


if __name__ == "__main__":
    main()
