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
    steps = rotate.rotate_steps(cluster, gates=())
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
