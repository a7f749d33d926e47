"""Benchmark: `kdeploy up` on a 3-machine lab (1 master + 2 workers) from bare machines to
verify green, per phase, and the no-op re-run. Artifacts must be built (KDEPLOY_ARTIFACTS or
--artifacts). Prints the figures; the lab is removed at the end.

    python bench/up.py [--artifacts DIR] [--masters 1] [--workers 2]
Targets: first run < 180 s (aim 90 s), no-op < 10 s (aim 5 s).
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", default=os.environ.get("KDEPLOY_ARTIFACTS"))
    ap.add_argument("--masters", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    if not a.artifacts:
        sys.exit("pass --artifacts DIR (`kdeploy artifacts build` prints where it builds)")
    from kdeploy.lab import api
    name = "bench-up"
    with tempfile.TemporaryDirectory() as d:
        inv = Path(d) / "cluster.yaml"
        t = time.monotonic()
        api.up(name=name, masters=a.masters, workers=a.workers, output=inv, log=lambda s: None)
        lab_s = time.monotonic() - t
        try:
            runs = []
            for label in ("first (bare machines)", "no-op re-run"):
                t = time.monotonic()
                p = subprocess.run([sys.executable, "-m", "kdeploy", "up", "-i", str(inv),
                                    "--artifacts", a.artifacts, "--json"], capture_output=True, text=True)
                secs = time.monotonic() - t
                done = [json.loads(x) for x in p.stdout.splitlines()
                        if x.startswith("{") and '"done"' in x]
                if p.returncode != 0:
                    print(p.stdout[-3000:], p.stderr[-3000:])
                    sys.exit(f"kdeploy up failed (rc {p.returncode})")
                runs.append((label, secs, done[0]["timings"] if done else {}))
            print(f"lab up ({a.masters}+{a.workers} machines): {lab_s:.1f} s")
            for label, secs, timings in runs:
                print(f"kdeploy up, {label}: {secs:.1f} s wall")
                for k, v in timings.items():
                    print(f"    {k:<36} {v:7.1f} s")
            first, noop = runs[0][1], runs[1][1]
            print(f"ratios: first/180 s target = {first / 180:.2f}, no-op/10 s target = {noop / 10:.2f}")
        finally:
            api.down(name=name, log=lambda s: None)


if __name__ == "__main__":
    main()
