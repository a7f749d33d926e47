"""Benchmark: how `kdeploy up` grows with the cluster. For each N: N lab machines (3
control-plane, the rest workers; fewer than 3 machines: 1 control-plane), `up` from bare
machines to verify green, then the no-op re-run: once right after (the cluster still busy
starting its pods), then, once fewer than 0.6 cores are busy, three times (the median is the
figure). At the largest N the lab has one machine more,
and `up` with it added to the inventory is the add-one-worker figure, with the hosts it changed:
measured twice, each once the cluster has settled (fewer than 0.6 cores busy in three 5 s
samples in a row), the second after `up` without it (the node removed) and `kdeploy reset` of
its machine.

    python bench/scale.py [--sizes 3,6,12,24] [--artifacts DIR] [--bastion] [--keep DIR]

Prints per N: seconds (first run, no-op), deployer CPU seconds (user+sys of the kdeploy process),
MB the deployer sent (the lab bridge's transmit counter), peak memory and CPU seconds per lab
machine (their cgroups), then the slope (seconds per added node, least squares) and the
add-one-worker figures. --bastion reaches every host through the first machine (ProxyJump
fan-out). Targets (issue 13): 24 nodes < 240 s, add-one-worker < 20 s, no-op < 5 s at N = 24.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def kdeploy_up(inv: Path, artifacts: str) -> dict:
    """One `kdeploy up --json`: wall seconds, deployer CPU, the done event, hosts changed."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "kdeploy", "up", "-i", str(inv), "--artifacts", artifacts,
                        "--json"], capture_output=True, text=True)
    secs = time.monotonic() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        print(p.stdout[-4000:], p.stderr[-3000:])
        sys.exit(f"kdeploy up failed (rc {p.returncode})")
    events = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    changed: dict[str, dict[str, int]] = {}
    for e in events:
        if e.get("event") == "change":
            kinds = changed.setdefault(e["host"], {})
            kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    done = next((e for e in events if e.get("event") == "done"), {})
    checks = {e["name"]: e["seconds"] for e in events if e.get("event") == "check"}
    return {"seconds": secs, "cpu": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
            "timings": done.get("timings", {}), "changed": changed, "checks": checks}


def cpu_busy(seconds: float = 5.0) -> float:
    """Cores busy on this machine (all processes: the lab's machines and the deployer) over
    `seconds`, from /proc/stat."""
    def sample():
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(f) - f[3] - f[4], sum(f)   # busy (all but idle, iowait), total
    b0, t0 = sample()
    time.sleep(seconds)
    b1, t1 = sample()
    return (b1 - b0) / (t1 - t0) * (os.cpu_count() or 1)


def settle(limit: float = 0.6, timeout: float = 180.0, hold: int = 1) -> tuple[float, float]:
    """Wait until the cluster a first deploy left behind has settled (its pods started, the
    verify workload gone): fewer than `limit` cores busy over 5 s, `hold` times in a row (a
    lull between two bursts is not a settled cluster), at most `timeout` s.
    (seconds waited, cores busy at the end)."""
    t, quiet = time.monotonic(), 0
    while True:
        busy = cpu_busy()
        quiet = quiet + 1 if busy < limit else 0
        if quiet >= hold or time.monotonic() - t > timeout:
            return time.monotonic() - t, busy


def tx_bytes(netns: str) -> int:
    return int(subprocess.run(["ip", "netns", "exec", netns, "cat", "/sys/class/net/br0/statistics/tx_bytes"],
                              capture_output=True, text=True, check=True).stdout)


def machine_usage(state_file: Path) -> dict[str, tuple[int, int, float]]:
    """machine -> (peak memory bytes incl. page cache, rss bytes now, CPU seconds) from its cgroups."""
    st = json.loads(state_file.read_text())
    out = {}
    for m in st["machines"]:
        cg = m.get("cgroups", {})
        mem, cpu = Path(cg.get("memory", "/nonexistent")), Path(cg.get("cpuacct", "/nonexistent"))
        try:
            peak = int((mem / "memory.max_usage_in_bytes").read_text())
            rss = next(int(ln.split()[1]) for ln in (mem / "memory.stat").read_text().splitlines()
                       if ln.startswith("total_rss "))
            cpu_s = int((cpu / "cpuacct.usage").read_text()) / 1e9
        except (OSError, StopIteration, ValueError):
            continue
        out[m["name"]] = (peak, rss, cpu_s)
    return out


def subset(full: Path, out: Path, names: list[str], bastion: str | None) -> Path:
    doc = yaml.safe_load(full.read_text())
    doc["hosts"] = [h for h in doc["hosts"] if h["name"] in names]
    if bastion:
        first = next(h for h in yaml.safe_load(full.read_text())["hosts"] if h["name"] == bastion)
        ssh = doc["spec"]["ssh"]
        ssh["bastion"] = {"address": first["address"], "user": "root", "keyFile": ssh["keyFile"]}
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def slope(points: list[tuple[int, float]]) -> float:
    if len(points) < 2:
        return float("nan")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", default=os.environ.get("KDEPLOY_ARTIFACTS"))
    ap.add_argument("--sizes", default="3,6,12,24")
    ap.add_argument("--bastion", action="store_true", help="reach every host through the first machine")
    ap.add_argument("--keep", metavar="DIR", help="copy each N's run records (events with timestamps, "
                    "timings, plans) to DIR/N<n>/ before the lab goes down")
    a = ap.parse_args()
    if not a.artifacts:
        sys.exit("pass --artifacts DIR (`kdeploy artifacts build` prints where it builds)")
    from kdeploy.lab import api
    from kdeploy.lab.state import LabState
    sizes = [int(x) for x in a.sizes.split(",")]
    rows, add = [], None
    for n in sizes:
        largest = n == max(sizes)
        masters = 3 if n >= 3 else 1
        name = f"bench-scale{n}"
        with tempfile.TemporaryDirectory() as d:
            full = Path(d) / "full.yaml"
            t = time.monotonic()
            api.up(name=name, masters=masters, workers=n - masters + (1 if largest else 0), output=full,
                   log=lambda s: None)
            lab_s = time.monotonic() - t
            try:
                names = [h["name"] for h in yaml.safe_load(full.read_text())["hosts"]]
                inv = subset(full, Path(d) / "cluster.yaml", names[:n], names[0] if a.bastion else None)
                netns = api.netns_name(name)
                b0 = tx_bytes(netns)
                first = kdeploy_up(inv, a.artifacts)
                sent = tx_bytes(netns) - b0
                usage = machine_usage(LabState(name).file)
                hot = kdeploy_up(inv, a.artifacts)   # right after the deploy, the cluster still busy
                waited, busy = settle()
                noops = sorted((kdeploy_up(inv, a.artifacts) for _ in range(3)), key=lambda r: r["seconds"])
                noop = dict(noops[1], hot=hot["seconds"], all=[r["seconds"] for r in noops],
                            settle=(waited, busy))
                rows.append((n, lab_s, first, noop, sent, usage))
                print(f"N={n}: up {first['seconds']:.1f} s, no-op right after {hot['seconds']:.1f} s; "
                      f"settled in {waited:.0f} s ({busy:.2f} cores busy): no-op "
                      + " / ".join(f"{x:.1f}" for x in noop["all"]) + " s", flush=True)
                if largest:
                    # a worker added to a running cluster (settled: 3 quiet samples in a row),
                    # then again once removed (`up` without it) and reset: two measurements
                    small = Path(d) / "small.yaml"
                    small.write_text(inv.read_text())
                    inv = subset(full, inv, names, names[0] if a.bastion else None)
                    add = {"new": names[-1], "runs": []}
                    for attempt in (1, 2):
                        if attempt == 2:
                            kdeploy_up(small, a.artifacts)
                            subprocess.run([sys.executable, "-m", "kdeploy", "reset", "-i", str(inv),
                                            "--host", names[-1], "-y"], capture_output=True, check=True)
                        add_settle = settle(hold=3)
                        b0 = tx_bytes(netns)
                        run = kdeploy_up(inv, a.artifacts)
                        run["sent"] = tx_bytes(netns) - b0
                        run["settle"] = add_settle
                        run["noop"] = kdeploy_up(inv, a.artifacts)
                        add["runs"].append(run)
                        print(f"add {names[-1]} ({attempt}/2): {run['seconds']:.1f} s after settling "
                              f"{add_settle[0]:.0f} s ({add_settle[1]:.2f} cores busy)", flush=True)
            finally:
                if a.keep:
                    import shutil
                    for runs in Path(d).glob(".kdeploy/*/runs"):
                        shutil.copytree(runs, Path(a.keep) / f"N{n}", dirs_exist_ok=True)
                api.down(name=name, log=lambda s: None)

    print(f"\nkdeploy up from bare lab machines ({'via a bastion, ' if a.bastion else ''}"
          f"3 control-plane + workers; verify included)")
    print("no-op: the median of 3 once the cluster has settled (< 0.6 cores busy); `hot`: right after the deploy")
    print(f"{'N':>3} {'lab up':>7} {'first':>7} {'no-op':>6} {'hot':>5} {'deployer CPU':>12} {'sent MB':>8} "
          f"{'MB/node':>8} {'peak mem cp/worker MB':>22} {'rss cp/worker MB':>17} {'CPU s/machine':>14}")
    for n, lab_s, first, noop, sent, usage in rows:
        cps = [v for k, v in usage.items() if k in ("m1", "m2", "m3")][: (3 if n >= 3 else 1)]
        wks = [v for k, v in usage.items() if v not in cps]
        def mx(vals, i):
            return max((v[i] for v in vals), default=0) / 2**20
        cpu = statistics.mean(v[2] for v in usage.values()) if usage else 0
        print(f"{n:>3} {lab_s:>6.1f}s {first['seconds']:>6.1f}s {noop['seconds']:>5.1f}s {noop['hot']:>4.1f}s "
              f"{first['cpu']:>11.1f}s {sent / 1e6:>8.0f} {sent / 1e6 / n:>8.0f} "
              f"{mx(cps, 0):>10.0f}/{mx(wks, 0):<11.0f} {mx(cps, 1):>8.0f}/{mx(wks, 1):<8.0f} {cpu:>13.1f}")
    pts = [(r[0], r[2]["seconds"]) for r in rows]
    print(f"slope: {slope(pts):.2f} s per added node (first run), "
          f"{slope([(r[0], r[3]['seconds']) for r in rows]):.3f} s per node (no-op)")
    if rows:
        n, _, first, noop, _, _ = rows[-1]
        print("phases at N=%d: %s" % (n, ", ".join(f"{k} {v:.1f}" for k, v in first["timings"].items())))
        print("no-op at N=%d: %s" % (n, ", ".join(f"{k} {v:.2f}" for k, v in noop["timings"].items())))
        print(f"ratios at N={n}: first/240 s = {first['seconds'] / 240:.2f}, no-op/5 s = {noop['seconds'] / 5:.2f}")
    for i, run in enumerate(add["runs"] if add else (), 1):
        others = {h: k for h, k in run["changed"].items() if h != add["new"]}
        print(f"\nadd one worker ({add['new']}) at N={rows[-1][0]}, {'first' if i == 1 else 'again (removed, reset)'}: "
              f"{run['seconds']:.1f} s (ratio to 20 s: {run['seconds'] / 20:.2f}), deployer CPU {run['cpu']:.1f} s, "
              f"sent {run['sent'] / 1e6:.0f} MB; settled {run['settle'][0]:.0f} s before "
              f"({run['settle'][1]:.2f} cores busy); then no-op {run['noop']['seconds']:.1f} s")
        print("  phases: " + ", ".join(f"{k} {v:.1f}" for k, v in run["timings"].items()))
        slow = sorted(run["checks"].items(), key=lambda kv: -kv[1])[:3]
        print("  verify's slowest checks (side by side): " + ", ".join(f"{k} {v:.1f}" for k, v in slow))
        print(f"  changes on the new worker: {run['changed'].get(add['new'], {})}")
        kinds: dict[str, int] = {}
        for k in others.values():
            for kind, c in k.items():
                kinds[kind] = kinds.get(kind, 0) + c
        print(f"  other hosts changed: {len(others)} of {rows[-1][0]}, changes by kind: {kinds}")


if __name__ == "__main__":
    main()
