#!/usr/bin/env python3
"""Lab benchmark: seconds from `lab up` to every machine answering SSH (rootfs cached and cold),
memory per machine (memcg usage), `lab down` seconds, and overlayfs vs `cp -a` for machine roots.

    python bench/lab.py                  # cold (fresh debootstrap in a temp cache) + 3 warm runs
    python bench/lab.py --skip-cold --runs 5 --masters 3 --workers 2
Needs root. Leaves no lab running.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdeploy.lab import api  # noqa: E402
from kdeploy.lab.rootfs import ensure_rootfs  # noqa: E402

NAME = "bench"


def quiet(_msg: str) -> None:
    pass


def one_run(masters: int, workers: int, out: Path, settle: bool) -> dict:
    t0 = time.monotonic()
    r = api.up(name=NAME, masters=masters, workers=workers, output=out, log=quiet)
    wall = time.monotonic() - t0
    mem = {}
    try:
        if settle:  # memory of booted, idle machines
            for m in r["machines"]:
                argv = api.ssh_argv(name=NAME, machine=m["name"], tty=False,
                                    command=["systemctl", "is-system-running", "--wait"])
                subprocess.run(argv, capture_output=True, timeout=120)
            time.sleep(1)
            for lab in api.status(name=NAME):
                for m in lab["machines"]:
                    mem[m["name"]] = m["memory_bytes"]
    finally:
        down = api.down(name=NAME, log=quiet)
    return {"rootfs_build_s": r["rootfs_build_s"], "up_to_ssh_s": r["up_to_ssh_s"],
            "up_wall_s": wall, "down_s": down, "mem": mem}


def overlay_vs_copy(base: Path) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(dir=Path.home()) as d:
        t0 = time.monotonic()
        subprocess.run(["cp", "-a", str(base), f"{d}/copy"], check=True)
        cp = time.monotonic() - t0
        for s in ("upper", "work", "root"):
            os.mkdir(f"{d}/{s}")
        t0 = time.monotonic()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={base},upperdir={d}/upper,workdir={d}/work", f"{d}/root"], check=True)
        ov = time.monotonic() - t0
        subprocess.run(["umount", f"{d}/root"], check=True)
    return cp, ov


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--masters", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3, help="warm runs (rootfs cached)")
    ap.add_argument("--skip-cold", action="store_true", help="no fresh debootstrap")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/lab.py needs root", file=sys.stderr)
        return 1
    n = a.masters + a.workers
    print(f"lab benchmark: {n} machine(s) ({a.masters} master(s), {a.workers} worker(s)), "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    out = Path(tempfile.mkdtemp()) / "inventory.yaml"
    if not a.skip_cold:
        cache = tempfile.mkdtemp(prefix="kdeploy-bench-cache-", dir=Path.home())
        old = os.environ.get("XDG_CACHE_HOME")
        os.environ["XDG_CACHE_HOME"] = cache
        try:
            r = one_run(a.masters, a.workers, out, settle=False)
        finally:
            if old is None:
                os.environ.pop("XDG_CACHE_HOME")
            else:
                os.environ["XDG_CACHE_HOME"] = old
            shutil.rmtree(cache, ignore_errors=True)
        print(f"cold: rootfs build (debootstrap + customise) {r['rootfs_build_s']:.1f}s; then "
              f"up -> all SSH {r['up_to_ssh_s']:.2f}s; down {r['down_s']:.2f}s")
    base, _ = ensure_rootfs(log=print)
    runs = [one_run(a.masters, a.workers, out, settle=(i == 0)) for i in range(a.runs)]
    ups = [r["up_to_ssh_s"] for r in runs]
    walls = [r["up_wall_s"] for r in runs]
    downs = [r["down_s"] for r in runs]
    print(f"warm (rootfs cached), {a.runs} run(s): up -> all SSH median {statistics.median(ups):.2f}s "
          f"(min {min(ups):.2f}, max {max(ups):.2f}); whole `lab up` median {statistics.median(walls):.2f}s; "
          f"down median {statistics.median(downs):.2f}s")
    for m, b in runs[0]["mem"].items():
        print(f"memory {m}: {b / 2**20:.1f} MiB (memcg usage, idle after boot)")
    cp, ov = overlay_vs_copy(base)
    du = subprocess.run(["du", "-sh", str(base)], capture_output=True, text=True).stdout.split()[0]
    print(f"machine root: cp -a of the {du} base {cp:.2f}s per machine vs overlay mount {ov * 1000:.0f}ms")
    shutil.rmtree(out.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
