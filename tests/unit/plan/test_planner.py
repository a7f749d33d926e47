import json

from kdeploy.plan.planner import FileState, Observed, Plan, apply_block, outcome, plan
from kdeploy.plan.resources import Binary, Block, File, HostResources, Unit


def res(host="n1", kubelet_cfg=b"a: 1\n"):
    return HostResources(
        host=host,
        files=(
            File("/etc/systemd/system/kubelet.service", b"[Service]\nExecStart=/kubelet\n", "node",
                 restarts=("kubelet",)),
            File("/var/lib/kubelet/config.yaml", kubelet_cfg, "node", restarts=("kubelet",)),
            File("/etc/kubernetes/pki/x.key", b"SECRET", "node", mode=0o600, secret=True,
                 restarts=("kubelet",)),
            File("/etc/sysctl.d/99-kdeploy.conf", b"net.ipv4.ip_forward = 1\n", "os",
                 run_on_change=(("sysctl", "-p", "/etc/sysctl.d/99-kdeploy.conf"),)),
        ),
        blocks=(Block("/etc/hosts", "192.0.2.10 n1\n", "os"),),
        binaries=(Binary("/usr/local/bin/kubelet", "/cache/kubelet", "ab" * 32, restarts=("kubelet",)),),
        units=(Unit("kubelet", "node"),),
    )


def test_bare_host_creates_everything_in_phase_order():
    p = plan({"n1": res()}, {})
    kinds = [(c.phase, c.kind, c.target) for c in p.changes]
    assert [k[0] for k in kinds] == sorted((k[0] for k in kinds), key=["os", "artifacts", "node"].index)
    assert ("node", "unit-start", "kubelet") in kinds
    assert not any(k[1] == "unit-restart" for k in kinds)  # a unit being started is not also restarted
    assert ("os", "run", "sysctl -p /etc/sysctl.d/99-kdeploy.conf") in kinds


def test_secret_files_show_checksums_never_content():
    p = plan({"n1": res()}, {})
    secret = next(c for c in p.changes if c.target.endswith("x.key"))
    assert secret.secret and secret.diff is None and secret.new_sha256
    assert "SECRET" not in p.to_json()


def test_applied_outcome_plans_nothing():
    desired = {"n1": res(), "n2": res("n2")}
    assert plan(desired, outcome(desired)).empty


def test_changed_config_updates_with_diff_and_restarts_once():
    desired = {"n1": res()}
    before = outcome(desired)
    obs = before["n1"]
    obs = Observed(files=obs.files, units=obs.units, contents={
        **obs.contents, "/var/lib/kubelet/config.yaml": b"a: 1\n"})
    new = {"n1": res(kubelet_cfg=b"a: 2\n")}
    p = plan(new, {"n1": obs})
    assert [(c.kind, c.target) for c in p.changes] == [
        ("file", "/var/lib/kubelet/config.yaml"), ("unit-restart", "kubelet")]
    assert "-a: 1\n+a: 2" in p.changes[0].diff
    assert p.restarts() == {"n1": ["kubelet"]}


def test_stopped_unit_is_started_and_mode_drift_fixed():
    desired = {"n1": res()}
    obs = outcome(desired)["n1"]
    files = dict(obs.files)
    files["/etc/kubernetes/pki/x.key"] = FileState(files["/etc/kubernetes/pki/x.key"].sha256, 0o644, "root", "root")
    p = plan(desired, {"n1": Observed(files=files, contents=obs.contents,
                                      units={"kubelet": ("failed", "enabled")})})
    assert {(c.kind, c.target) for c in p.changes} == {
        ("mode", "/etc/kubernetes/pki/x.key"), ("unit-start", "kubelet")}


def test_pending_journal_entries_are_replayed():
    desired = {"n1": res()}
    obs = outcome(desired)["n1"]
    p = plan(desired, {"n1": Observed(files=obs.files, contents=obs.contents, units=obs.units,
                                      pending=frozenset({"unit-restart:kubelet"}))})
    assert [(c.kind, c.target) for c in p.changes] == [("unit-restart", "kubelet")]


def test_block_keeps_foreign_lines_and_is_idempotent():
    b = Block("/etc/hosts", "192.0.2.10 n1\n", "os")
    once = apply_block("127.0.0.1 localhost\n", b)
    assert once.startswith("127.0.0.1 localhost\n# BEGIN kdeploy")
    assert apply_block(once, b) == once
    changed = apply_block(once, Block("/etc/hosts", "192.0.2.11 n2\n", "os"))
    assert "n1" not in changed and "192.0.2.11 n2" in changed and changed.count("BEGIN") == 1


def test_plan_json_round_trip_and_determinism():
    desired = {"n1": res(), "n2": res("n2")}
    p1, p2 = plan(desired, {}), plan(desired, {})
    assert p1.to_json() == p2.to_json()
    assert Plan.from_dict(json.loads(p1.to_json())) == p1


def test_stale_journal_entries_are_ignored():
    desired = {"n1": res()}
    obs = outcome(desired)["n1"]
    stale = frozenset({"run:modprobe gone", "unit-restart:not-a-unit"})
    p = plan(desired, {"n1": Observed(files=obs.files, contents=obs.contents, units=obs.units,
                                      pending=stale | {"run:sysctl -p /etc/sysctl.d/99-kdeploy.conf"})})
    assert [(c.phase, c.kind, c.target) for c in p.changes] == [
        ("os", "run", "sysctl -p /etc/sysctl.d/99-kdeploy.conf")]
