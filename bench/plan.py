"""Benchmark: plan + render for a 1,000-host inventory with an existing PKI.

Prints medians (seconds) of: render of every host's files (desired state incl. PKI files),
plan against bare hosts, plan against the applied outcome (the no-op re-plan), and, reported
separately, issuing the PKI for 1,000 new nodes. Ratio: the whole pipeline against the
2 s target. Run: python bench/plan.py [--hosts 1000] [--runs 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render import inventory  # noqa: E402  (bench/render.py: hosts on documentation addresses)


def median_of(fn, runs: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    from kdeploy.model import load_inventory
    from kdeploy.pki import ensure_pki
    from kdeploy.plan.desired import desired_state
    from kdeploy.plan.planner import outcome, plan

    with tempfile.TemporaryDirectory() as d:
        inv = Path(d) / "cluster.yaml"
        inv.write_text(yaml.safe_dump(inventory(a.hosts)))
        t = time.perf_counter()
        cluster, _ = load_inventory(inv)
        t_load = time.perf_counter() - t
        t = time.perf_counter()
        ensure_pki(cluster, Path(d) / "state")
        t_issue = time.perf_counter() - t
        t_reuse, pki = median_of(lambda: ensure_pki(cluster, Path(d) / "state"), a.runs)
        t_render, desired = median_of(lambda: desired_state(cluster, pki=pki), a.runs)
        t_plan_bare, p = median_of(lambda: plan(desired, {}), a.runs)
        applied = outcome(desired)
        t_plan_noop, p2 = median_of(lambda: plan(desired, applied), a.runs)
        assert p2.empty and not p.empty
        total = t_load + t_reuse + t_render + t_plan_bare
        print(f"hosts={a.hosts} runs={a.runs} files={sum(len(r.files) for r in desired.values())} "
              f"changes={len(p.changes)}")
        print(f"load+validate           {t_load:8.3f} s")
        print(f"pki reuse (median)      {t_reuse:8.3f} s")
        print(f"render (median)         {t_render:8.3f} s")
        print(f"plan, bare (median)     {t_plan_bare:8.3f} s")
        print(f"plan, no-op (median)    {t_plan_noop:8.3f} s")
        print(f"plan+render total       {total:8.3f} s   ratio to the 2 s target: {total / 2.0:.2f}")
        print(f"pki issue, {a.hosts} new nodes (reported separately) {t_issue:8.3f} s")


if __name__ == "__main__":
    main()
