"""kdeploy certs rotate-ca's orchestration pieces: --ca parsing, the rollout, the ConfigMap wait,
the CoreDNS restart, and the plan after the last stage against a fresh `up` of the rotated state."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from kdeploy.errors import ApplyError, KdeployError
from kdeploy.pki import ensure_pki, rotation
from kdeploy.plan.desired import desired_state
from kdeploy.plan.planner import FileState, Observed, apply_block, plan
from kdeploy.verbs import rotate
from tests.unit.pki.conftest import load, write_inventory


@dataclass
class R:
    ok: bool = True
    out: str = ""
    err: str = ""


def test_parse_cas():
    assert rotate.parse_cas(None) == rotation.ALL_CAS
    assert rotate.parse_cas(["etcd", "cluster"]) == ("ca", "etcd/ca")
    with pytest.raises(KdeployError, match="unknown CA 'kube'"):
        rotate.parse_cas(["kube"])


def test_rollout_order_serial_and_node_hook():
    from tests.unit.render.conftest import load_sample
    cluster = load_sample("ha")
    steps = rotate.rotate_steps(cluster)
    names = [s.name for s in steps]
    assert names.index("etcd") < names.index("control-plane") < names.index("workers")
    by = {s.name: s for s in steps}
    for n in ("etcd", "control-plane", "control-plane nodes", "workers"):
        assert by[n].policy.mode == "serial", n
    assert [h.name for h in by["workers"].after] == ["kubelet reports"]
    assert not by["workers"].before                 # no drain: a restarted kubelet keeps its pods


def cm(ns, pem):
    return {"metadata": {"namespace": ns}, "data": {"ca.crt": pem}}


def test_wait_root_ca_until_every_namespace_carries_the_bundle(tmp_path, monkeypatch):
    monkeypatch.setattr(rotate.time, "sleep", lambda s: None)
    cluster = load(write_inventory(tmp_path))
    pki = ensure_pki(cluster, tmp_path / "s")
    rotation.begin(pki.dir, rotation.ALL_CAS, {s.name: s.cn for s in pki.table.cas}, days=10,
                   kind="ecdsa-p256")
    pki = ensure_pki(cluster, tmp_path / "s")
    old, both = pki._cas["ca"].crt.decode(), pki.trust_bundle("ca").decode()
    want = rotate.pem_fingerprints(both)
    assert len(want) == 2
    answers = iter([[cm("a", old), cm("b", both)], [cm("a", both), cm("b", both)]])
    calls = []

    def api(argv, timeout=60, check=True):
        calls.append(argv)
        return R(out=json.dumps({"items": next(answers)}))
    assert rotate.wait_root_ca(api, want) == 2
    assert len(calls) == 2
    with pytest.raises(ApplyError, match="kube-root-ca.crt"):
        rotate.wait_root_ca(lambda *a, **k: R(out=json.dumps({"items": [cm("a", old)]})), want,
                            timeout=0)


def test_restart_coredns_waits_for_the_rollout():
    calls = []

    def api(argv, timeout=60, check=True):
        calls.append(" ".join(argv))
        return R(out="deployment.apps/coredns")
    rotate.restart_coredns(api)
    assert any("rollout restart deploy/coredns" in c for c in calls)
    assert any("rollout status deploy/coredns" in c for c in calls)

    def failing(argv, timeout=60, check=True):
        return R(ok="status" not in argv, err="timed out")
    with pytest.raises(ApplyError, match="CoreDNS"):
        rotate.restart_coredns(failing)


def observed_from(desired) -> dict[str, Observed]:
    """What the hosts hold once `desired` was applied."""
    out = {}
    for h, res in desired.items():
        files = {f.path: FileState(f.sha256, f.mode, f.owner, f.group) for f in res.files}
        units = {u.name: ("active", "enabled") for u in res.units}
        contents = {b.path: apply_block("", b).encode() for b in res.blocks}
        out[h] = Observed(files=files, units=units, contents=contents)
    return out


def test_plan_after_the_last_stage_is_empty_and_matches_a_fresh_up(tmp_path):
    cluster = load(write_inventory(tmp_path))
    state = tmp_path / "state"
    pki = ensure_pki(cluster, state)
    before = desired_state(cluster, pki=pki, artifacts=[])
    rot = rotation.begin(pki.dir, rotation.ALL_CAS, {s.name: s.cn for s in pki.table.cas},
                         days=3650, kind="ecdsa-p256")
    hosts_now = observed_from(before)
    for stage in rotation.STAGES:
        if stage != rot.stage:
            rot = rotation.advance(state / "pki", rot)
        d = desired_state(cluster, pki=ensure_pki(cluster, state), artifacts=[])
        p = plan(d, hosts_now)
        assert not p.empty, stage                      # every stage changes every host
        assert {c.host for c in p.changes} == {h.name for h in cluster.hosts}
        hosts_now = observed_from(d)                  # the stage rolled out
        assert plan(d, hosts_now).empty               # rerunning a finished stage: a no-op
    rotation.finish(state / "pki", rot)
    after = desired_state(cluster, pki=ensure_pki(cluster, state), artifacts=[])
    assert plan(after, hosts_now).empty               # `kdeploy plan` after the rotation
    # a fresh state dir holding only the rotated CAs (and keys) renders the same trust
    fresh = tmp_path / "fresh"
    (fresh / "pki" / "etcd").mkdir(parents=True)
    for name in ("ca", "etcd/ca", "front-proxy-ca", "sa"):
        for ext in ("crt", "key", "pub"):
            src = state / "pki" / f"{name}.{ext}"
            if src.exists():
                (fresh / "pki" / f"{name}.{ext}").write_bytes(src.read_bytes())
    (fresh / "pki" / "encryption.json").write_bytes((state / "pki" / "encryption.json").read_bytes())
    up = desired_state(cluster, pki=ensure_pki(cluster, fresh), artifacts=[])
    for h in cluster.hosts:
        ours = {f.path: f for f in after[h.name].files}
        theirs = {f.path: f for f in up[h.name].files}
        assert set(ours) == set(theirs)
        for path in ("/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/pki/etcd/ca.crt",
                     "/etc/kubernetes/pki/front-proxy-ca.crt", "/etc/kubernetes/pki/cluster-signing-ca.crt"):
            if path in ours:
                assert ours[path].content == theirs[path].content, path
        # everything but freshly issued leaves (new keys) is identical
        same = [p for p in ours if ours[p].content == theirs[p].content]
        assert any("systemd" in p for p in same)


def test_parse_duration():
    from datetime import timedelta
    assert rotate.parse_duration("24h") == timedelta(hours=24)
    assert rotate.parse_duration("0") == timedelta(0)
    with pytest.raises(KdeployError, match="not understood"):
        rotate.parse_duration("soon")


def test_ca_rotation_in_progress_refuses_other_cas(tmp_path, monkeypatch):
    cluster = load(write_inventory(tmp_path))
    from kdeploy.execute import run
    state = run.state_dir_for(cluster)
    pki = ensure_pki(cluster, state)
    rotation.begin(pki.dir, ("ca",), {s.name: s.cn for s in pki.table.cas}, days=10, kind="ecdsa-p256")
    with pytest.raises(KdeployError, match="in progress"):
        rotate.run_rotate_ca(cluster, transports={}, cas=("etcd/ca",))


@pytest.mark.parametrize("args,msg", [
    (["rotate-ca", "--ca", "bogus"], "unknown CA 'bogus'"),
    (["rotate-sa-key", "--drop-after", "soon"], "not understood"),
])
def test_cli_bad_input_is_a_clear_error_without_traceback(args, msg):
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[3]
    p = subprocess.run([sys.executable, "-m", "kdeploy", "certs", args[0], "-i",
                        str(repo / "inventories/sample/cluster.yaml"), *args[1:]],
                       capture_output=True, text=True, cwd=repo, timeout=120)
    assert p.returncode != 0
    assert msg in p.stderr + p.stdout and "Traceback" not in p.stderr


# --- the whole verb on in-memory hosts: a failure in the reissue stage, then a re-run -----

class FakeAPI:
    """kubectl answers: kube-root-ca.crt ConfigMaps carry what the controller-manager's
    --root-ca-file (ca.crt on the first control-plane host) holds; leases renew on each read."""

    def __init__(self, cp):
        self.cp = cp
        self.renew = 0
        self.calls: list[str] = []

    def __call__(self, text, input):
        from kdeploy.transport.base import CommandResult
        if "run.lock" in text:
            return CommandResult("lock", 0, b"acquired\n")
        if "kubectl" not in text:
            return None
        self.calls.append(text)
        if "kube-root-ca.crt" in text:
            pem = self.cp.fs["/etc/kubernetes/pki/ca.crt"].data.decode()
            items = [cm("default", pem), cm("kube-system", pem)]
            return CommandResult(text, 0, json.dumps({"items": items}).encode())
        if "lease" in text:
            self.renew += 1
            return CommandResult(text, 0, f"2026-01-01T00:00:{self.renew % 60:02d}Z".encode())
        if "Ready" in text:
            return CommandResult(text, 0, b"True")
        return CommandResult(text, 0, b"")


def test_verb_fails_in_reissue_and_a_rerun_finishes(tmp_path, monkeypatch):
    from kdeploy.errors import ApplyError
    from kdeploy.execute import run
    from kdeploy.transport.base import CommandResult
    from kdeploy.transport.fake import FakeTransport
    monkeypatch.setattr(rotate.time, "sleep", lambda s: None)
    hosts = [{"name": "cp1", "address": "192.0.2.10", "roles": ["control-plane", "etcd"]},
             {"name": "w1", "address": "192.0.2.21", "roles": ["worker"]}]
    cluster = load(write_inventory(tmp_path, hosts=hosts))
    # hosts as `up` left them
    dep = run.prepare(cluster, need_artifacts=False)
    fakes = {}
    for h in cluster.hosts:
        res = dep.desired[h.name]
        fakes[h.name] = FakeTransport(h.name, address=h.address, files={
            f.path: (f.content, f.mode, f.owner, f.group) for f in res.files},
            units={u.name: {"active": "active", "enabled": "enabled"} for u in res.units})
    api = FakeAPI(fakes["cp1"])
    broken = {"on": True}

    def cp1(text, input):
        # the reissue stage's apiserver restart fails once (as if the host went away)
        if broken["on"] and "restart" in text and "kube-apiserver" in text and \
                rotation.read(run.state_dir_for(cluster) / "pki").stage == rotation.REISSUE:
            broken["on"] = False
            return CommandResult(text, 1, b"", b"Job for kube-apiserver.service failed")
        return api(text, input)
    fakes["cp1"].responses = cp1
    fakes["w1"].responses = api
    old_ca = (run.state_dir_for(cluster) / "pki" / "ca.crt").read_bytes()

    with pytest.raises(ApplyError):
        rotate.run_rotate_ca(cluster, transports=fakes)
    state = run.state_dir_for(cluster)
    assert rotation.read(state / "pki").stage == rotation.REISSUE
    # CoreDNS was restarted after the trust stage, once every ConfigMap had both CAs
    assert any("rollout restart deploy/coredns" in c for c in api.calls)

    out = rotate.run_rotate_ca(cluster, transports=fakes)
    assert out.resumed_at == rotation.REISSUE and out.finished
    assert [s["stage"] for s in out.stages] == [rotation.REISSUE, rotation.DROP]
    assert rotation.read(state / "pki") is None
    new_ca = (state / "pki" / "ca.crt").read_bytes()
    assert new_ca != old_ca and any(p.read_bytes() == old_ca for p in out.archived)
    for name, t in fakes.items():                         # only the new CA on every host
        assert t.fs["/etc/kubernetes/pki/ca.crt"].data == new_ca, name
    # and the plan against these hosts is empty
    from kdeploy.plan.planner import plan as make_plan
    dep = run.prepare(cluster, need_artifacts=False, write_state=False)
    _, observed = run.gather(dep, fakes)
    assert make_plan(dep.desired, observed).empty
