"""Benchmark: render every host of a 1,000-host cluster.

    python bench/render.py [--hosts N] [--runs 5]

Builds a 1,000-host inventory (3 control-plane/etcd hosts, the rest workers) with addresses
from the documentation ranges RFC 5737 (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24: 762
usable) and RFC 3849 (2001:db8::/32) for the remainder, then times, over 5 runs (median):
  - load: load_inventory (YAML parse + validation)
  - render: render_host for every host + render_addons, from a fresh Cluster object each run
    (so the per-cluster context is rebuilt every run, as it would be in a new process)
Target: plan + render of 1,000 hosts under 2 s.
"""
from __future__ import annotations

import argparse
import ipaddress
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from kdeploy.model.load import load_inventory
from kdeploy.render import render_addons, render_host


def addresses(n: int) -> list[str]:
    out: list[str] = []
    for net in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"):
        out += [str(a) for a in ipaddress.ip_network(net).hosts()]
    v6 = ipaddress.ip_network("2001:db8::/32")
    i = 1
    while len(out) < n:
        out.append(str(v6.network_address + i))
        i += 1
    return out[:n]


def inventory(n: int) -> dict:
    hosts = []
    for i, addr in enumerate(addresses(n)):
        roles = ["control-plane", "etcd"] if i < 3 else ["worker"]
        hosts.append({"name": f"node-{i:04d}", "address": addr, "roles": roles})
    return {
        "apiVersion": "kdeploy.io/v1alpha1", "kind": "Cluster", "metadata": {"name": "bench"},
        "spec": {"network": {"podCIDR": "10.64.0.0/12", "serviceCIDR": "10.96.0.0/12",
                             "nodeCIDRMaskSize": 24}},
        "hosts": hosts,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        inv = Path(d) / "bench.yaml"
        inv.write_text(yaml.safe_dump(inventory(args.hosts), sort_keys=False))
        loads, renders, sizes = [], [], 0
        for _ in range(args.runs):
            t0 = time.perf_counter()
            cluster, _ = load_inventory(inv)
            t1 = time.perf_counter()
            nfiles = nbytes = 0
            for h in cluster.hosts:
                res = render_host(cluster, h)
                nfiles += len(res.files)
                nbytes += sum(len(f.content) for f in res.files)
            addons = render_addons(cluster)
            t2 = time.perf_counter()
            loads.append(t1 - t0)
            renders.append(t2 - t1)
            sizes = (nfiles + len(addons), nbytes)
    print(f"hosts: {args.hosts}  files: {sizes[0]}  bytes: {sizes[1]}")
    print(f"load_inventory  median of {args.runs}: {statistics.median(loads):.3f} s")
    print(f"render (all)    median of {args.runs}: {statistics.median(renders):.3f} s")
    print(f"per host        {statistics.median(renders) / args.hosts * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
