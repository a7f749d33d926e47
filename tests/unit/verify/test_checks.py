"""The verify workload: the image of the artifact set in use, removed after the checks unless
kept (a scripted control-plane transport answers kubectl)."""
from __future__ import annotations

import shutil

from kdeploy.execute import run
from kdeploy.model import load_inventory
from kdeploy.transport.base import CommandResult
from kdeploy.verify import checks
from tests.conftest import SAMPLES


class Cp:
    """Answers kubectl like an API whose namespace kdeploy-verify exists until deleted."""

    def __init__(self, ns_phase: str = ""):
        self.calls: list[list[str]] = []
        self.phase = ns_phase

    def run(self, argv, check=True, input=None, timeout=None, secret=False):
        argv = list(argv) if not isinstance(argv, str) else [argv]
        self.calls.append(argv)
        out = ""
        if "apply" in argv:
            self.phase = "Active"
        elif argv[-3:] == ["--ignore-not-found", "-o", "jsonpath={.status.phase}"]:
            out = self.phase
        elif "delete" in argv and "namespace" in argv:
            self.phase = ""
        return CommandResult(argv_display=" ".join(argv), rc=0, stdout=out.encode(), stderr=b"")


def verifier(tmp_path, cp, **kw):
    inv = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", inv)
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, need_artifacts=False, write_state=False)
    transports = {h.name: cp for h in cluster.hosts}
    v = checks.Verifier(cluster, transports, dep.desired, workload_image="kdeploy.invalid/agnhost:1",
                        timeout=1, **kw)
    return v


def only_workload(v, monkeypatch):
    monkeypatch.setattr(checks.Verifier, "CHECKS", (("workload", "workload"),))
    monkeypatch.setattr(v, "_rollout", lambda: (True, "ok"))
    monkeypatch.setattr(v, "_web_pods", lambda: [])
    monkeypatch.setattr(checks.time, "sleep", lambda s: None)


def test_workload_is_removed_after_the_checks(tmp_path, monkeypatch):
    cp = Cp()
    v = verifier(tmp_path, cp)
    only_workload(v, monkeypatch)
    v.run()
    applied = next(c for c in cp.calls if "apply" in c)
    assert applied and any("delete" in c and "namespace" in c for c in cp.calls)
    assert cp.phase == ""


def test_keep_workload_leaves_it_and_the_next_verify_reuses_it(tmp_path, monkeypatch):
    cp = Cp()
    v = verifier(tmp_path, cp, keep_workload=True)
    only_workload(v, monkeypatch)
    v.run()
    assert cp.phase == "Active" and not any("delete" in c and "namespace" in c for c in cp.calls)
    v2 = verifier(tmp_path, cp)
    only_workload(v2, monkeypatch)
    v2.run()
    assert cp.phase == ""


def test_workload_manifest_names_the_given_image(tmp_path, monkeypatch):
    seen = []
    cp = Cp()
    orig = cp.run

    def run_(argv, check=True, input=None, timeout=None, secret=False):
        if input:
            seen.append(input.decode())
        return orig(argv, check=check, input=input, timeout=timeout, secret=secret)
    cp.run = run_
    v = verifier(tmp_path, cp)
    only_workload(v, monkeypatch)
    v.run()
    assert "image: kdeploy.invalid/agnhost:1" in seen[0]
    assert "terminationGracePeriodSeconds" in seen[0]


def test_a_cluster_without_workers_passes_the_workload_check_as_not_applicable(tmp_path, monkeypatch):
    """Control-plane-only hosts are tainted NoSchedule: the workload would wait for minutes and
    fail; verify says why it does not apply and deploys nothing."""
    cp = Cp()
    v = verifier(tmp_path, cp)
    monkeypatch.setattr(v, "c", v.c.model_copy(update={"hosts": [h for h in v.c.hosts if not h.has("worker")]}))
    only_workload(v, monkeypatch)
    [r] = v.run()
    assert r.ok and "no host has the worker role" in r.detail
    assert not any("apply" in c for c in cp.calls)
