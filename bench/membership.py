"""Benchmark: cluster membership verbs on lab machines (1.37.2), each under an availability
probe on a worker (the API through that node's load balancer and a Service, every 100 ms).

    python bench/membership.py [--artifacts DIR]

Prints seconds for: up 1 control-plane + 2 workers from bare machines; add 2 control-plane
hosts (1 -> 3, inventory edit + up); remove a control-plane host (3 -> 2); remove a worker
(drained); reset of the whole cluster; a second reset (no-op); up again after the reset.
With the probes' failed requests and longest gaps for the three membership changes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from labbench import kdeploy as run, lab as bench_lab  # noqa: E402
from tests.lab.test_membership import write_inventory  # noqa: E402
from tests.lab.test_upgrade import deploy_workload, describe_probe, start_probe, stop_probe  # noqa: E402


def kdeploy(*args: str) -> float:
    return round(run(*args)[0], 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", default=os.environ.get("KDEPLOY_ARTIFACTS"))
    a = ap.parse_args()
    if not a.artifacts:
        sys.exit("pass --artifacts DIR (a built 1.37.2 set) or set KDEPLOY_ARTIFACTS")
    fig: dict[str, float] = {}
    probes: dict[str, dict] = {}
    with bench_lab("bench-members", 3, 2) as (lab, full):
        inv = full.with_name("members.yaml")
        art = ("--artifacts", a.artifacts)
        write_inventory(full, inv, ["m1", "m4", "m5"])
        fig["up 1+2 (bare)"] = kdeploy("up", "-i", str(inv), *art)
        svc = deploy_workload(lab, Path(a.artifacts))

        def probed(label: str, *args: str) -> None:
            start_probe(lab, "m4", svc)
            fig[label] = kdeploy(*args)
            probes[label] = stop_probe(lab, "m4")

        write_inventory(full, inv, ["m1", "m2", "m3", "m4", "m5"])
        probed("add 2 control-plane hosts (1 -> 3)", "up", "-i", str(inv), *art)
        probed("node remove control-plane host (3 -> 2)", "node", "remove", "-i", str(inv), "m3",
               "--yes", *art)
        write_inventory(full, inv, ["m1", "m2", "m4", "m5"])
        probed("node remove worker (drained)", "node", "remove", "-i", str(inv), "m5", "--yes", *art)
        write_inventory(full, inv, ["m1", "m2", "m4"])
        fig["reset 2+1"] = kdeploy("reset", "-i", str(inv), "--yes")
        fig["reset again (no-op)"] = kdeploy("reset", "-i", str(inv), "--yes")
        fig["up 2+1 after reset"] = kdeploy("up", "-i", str(inv), *art)
    for k, v in fig.items():
        print(f"{k:<42} {v:>7.1f} s")
    for k, p in probes.items():
        print(f"probe during {k}: {describe_probe(p)}")
    print(json.dumps({"seconds": fig, "probes": probes}))


if __name__ == "__main__":
    main()
