"""Benchmark: `kdeploy certs renew --all` on an HA lab cluster (3 control-plane+etcd, 1 worker)
under an availability probe on the worker (the API through that node's load balancer and a
Service, each every 100 ms). Prints the deploy and renewal wall times, the renewal's per-step
times, the probes' failed requests and longest gaps, and `certs check`'s time.

    python bench/certs.py [--artifacts DIR] [--batch 1]

Artifacts: KDEPLOY_ARTIFACTS (1.37.2) by default. Lab name: bench-certs.
Targets: under 1 % failed API requests, no gap over 2 s, no failed Service request.
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
from kdeploy.render.images import images_of_dir  # noqa: E402
from tests.lab.conftest import LabCluster  # noqa: E402
from tests.lab.test_up import events  # noqa: E402
from tests.lab.test_upgrade import KUBECTL, WORKLOAD, describe_probe, start_probe, stop_probe  # noqa: E402


def kdeploy(*args: str, ok=(0,)) -> tuple[float, list[dict]]:
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "kdeploy", *args, "--json"], capture_output=True, text=True)
    secs = time.monotonic() - t
    if p.returncode not in ok:
        print(p.stdout[-3000:], p.stderr[-3000:])
        sys.exit(f"kdeploy {' '.join(args[:2])} failed (rc {p.returncode})")
    return secs, events(p.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", default=os.environ.get("KDEPLOY_ARTIFACTS"))
    ap.add_argument("--batch", default="1")
    ap.add_argument("--name", default="bench-certs")
    a = ap.parse_args()
    if not a.artifacts:
        sys.exit("pass --artifacts DIR (1.37.2) or set KDEPLOY_ARTIFACTS")
    from kdeploy.lab import api
    with tempfile.TemporaryDirectory() as d:
        inv = Path(d) / "cluster.yaml"
        info = api.up(name=a.name, masters=3, workers=1, output=inv, log=lambda s: None)
        lab = LabCluster(name=a.name, inventory=inv, info=info)
        try:
            up_s, _ = kdeploy("up", "-i", str(inv), "--artifacts", a.artifacts)
            image = images_of_dir(Path(a.artifacts)).agnhost
            rc, _, err = lab.run("m1", f"cat > /root/w.yaml <<'EOF'\n{WORKLOAD.replace('IMAGE', image)}"
                                       f"\nEOF\n{KUBECTL} apply -f /root/w.yaml && {KUBECTL} -n "
                                       "upgrade-probe rollout status deploy/web --timeout=240s", timeout=300)
            assert rc == 0, err
            _, svc, _ = lab.run("m1", f"{KUBECTL} -n upgrade-probe get svc web -o jsonpath={{.spec.clusterIP}}")
            check_s, _ = kdeploy("certs", "check", "-i", str(inv))
            start_probe(lab, "m4", svc.strip())
            secs, evs = kdeploy("certs", "renew", "-i", str(inv), "--all", "--yes", "--batch", a.batch)
            probe = stop_probe(lab, "m4")
            noop_s, _ = kdeploy("certs", "renew", "-i", str(inv), "--yes")
            print(f"kdeploy up (3+1, bare machines): {up_s:.1f} s")
            print(f"kdeploy certs check (4 hosts, from the hosts): {check_s:.1f} s")
            print(f"kdeploy certs renew --all (batch {a.batch}), verify included: {secs:.1f} s")
            for e in evs:
                if e.get("event") == "phase-done":
                    print(f"    {e['phase']:<22} {e['seconds']:7.1f} s")
                if e.get("event") == "renewed":
                    print(f"    certificates reissued: {len(e['certificates'])}; timings {e['timings']}")
            print(f"kdeploy certs renew again (nothing expiring): {noop_s:.1f} s")
            print(f"probes: {describe_probe(probe)}")
        finally:
            api.down(name=a.name, log=lambda s: None)


if __name__ == "__main__":
    main()
