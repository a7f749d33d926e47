"""`kdeploy reset`: the rendered script (paths from the components' declarations), the parser of
its output, host selection, and the orchestration over fake transports. The fake transport
runs no shell: what the script does on a host is proven by tests/lab/test_reset.py."""
import shutil
import subprocess

import pytest

from kdeploy.artifacts.catalog import file_specs
from kdeploy.components import COMPONENTS
from kdeploy.errors import KdeployError
from kdeploy.execute.cordons import CordonLedger
from kdeploy.execute.run import state_dir_for
from kdeploy.model import defaults, load_inventory
from kdeploy.plan.desired import host_gets
from kdeploy.render.context import HOSTS_FILE
from kdeploy.transport.base import CommandResult
from kdeploy.transport.fake import FakeTransport
from kdeploy.verbs.reset import (TAG, ResetError, _prune_dirs, check_hosts, parse_output,
                                 partial_etcd_warning, render_script, reset_desired, reset_host,
                                 run_reset, script_context)
from tests.unit.render.conftest import SAMPLES, load_sample


def declared_paths(cluster, host) -> set[str]:
    """What the components and the artifact catalog say this host gets (not the script's list)."""
    out = set()
    for c in COMPONENTS:
        if c.on_host(cluster, host):
            out |= {r.path for r in c.files}
            out |= {f"{defaults.SYSTEMD_DIR}/{u}.service" for u in c.units}
    for s in file_specs():
        if host_gets(s.roles, host) and (cluster.node_local_lb or s.component != "api-lb"):
            out.add(s.install_path)
    return out


@pytest.mark.parametrize("name", ["cluster", "ha"])
def test_script_names_every_path_the_components_declare_for_the_hosts_roles(name):
    c = load_sample(name)
    desired = reset_desired(c)
    for h in c.hosts:
        script = render_script(c, desired[h.name])
        for p in declared_paths(c, h):
            assert f"\n{p}\n" in script, (h.name, p)
        for u in desired[h.name].units:
            assert f"stop_unit {u.name}\n" in script
        for d in (defaults.ETCD_DATA_DIR, defaults.KUBELET_DIR, defaults.CONTAINERD_ROOT,
                  defaults.CNI_BIN_DIR, defaults.K8S_DIR, "/var/log/kubernetes",
                  defaults.KDEPLOY_LIB_DIR):
            assert f"rm_dir {d}\n" in script
        assert f"route show root {c.spec.network.pod_cidr}" in script
        assert "flush" not in script.lower().replace("--noflush", "")  # never a table-wide flush
        assert HOSTS_FILE not in {ln.strip() for ln in script.splitlines()}  # a block, not a file


def test_a_worker_is_not_told_about_control_plane_units_and_the_order_is_kubelet_first():
    c = load_sample("cluster")
    desired = reset_desired(c)
    worker = render_script(c, desired["worker1"])
    assert "/usr/local/bin/kube-apiserver" not in worker and "\nstop_unit etcd\n" not in worker
    w = script_context(c, desired["worker1"])
    # another role's units only when kdeploy's header is in their file (an earlier inventory)
    assert "etcd" not in w["units"] and "etcd" in w["units_other"]
    assert "head -n 1 /etc/systemd/system/etcd.service" in worker
    cp = script_context(c, desired["cp1"])
    assert cp["units_first"] == ["kubelet", "kube-proxy"] and cp["runtime_unit"] == "containerd"
    assert cp["units_rest"][:3] == ["kube-scheduler", "kube-controller-manager", "kube-apiserver"]
    assert cp["units_rest"][3] == "etcd"
    assert cp["keep"] == f"{defaults.KDEPLOY_DIR}/run.lock"


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh")
def test_rendered_script_parses_as_sh():
    c = load_sample("ha")
    desired = reset_desired(c)
    for h in c.hosts:
        p = subprocess.run(["sh", "-n"], input=render_script(c, desired[h.name]), text=True,
                           capture_output=True)
        assert p.returncode == 0, p.stderr


def test_prune_dirs_keeps_system_dirs_and_goes_deepest_first():
    got = _prune_dirs(["/etc/containerd/config.toml", "/usr/local/bin/kubelet", "/opt/cni/bin/bridge",
                       "/etc/sysctl.d/99-kdeploy.conf", "/etc/kubernetes/pki/ca.crt"],
                      ["/etc/kubernetes"])
    assert got == ["/opt/cni/bin", "/etc/containerd", "/opt/cni"]


def test_parser_reads_removed_warn_and_done_and_ignores_chatter():
    out = parse_output(f"some tool output\n{TAG} removed unit-stopped kubelet\n"
                       f"{TAG} removed iptables-rule nat POSTROUTING -s 10.244.1.0/24 -j MASQUERADE\n"
                       f"  {TAG} removed not-at-line-start x\n"
                       f"{TAG} warn cannot remove /var/lib/kubelet\n{TAG} done\n")
    assert out.removed == ["unit-stopped kubelet",
                           "iptables-rule nat POSTROUTING -s 10.244.1.0/24 -j MASQUERADE"]
    assert out.warnings == ["cannot remove /var/lib/kubelet"] and out.done
    assert parse_output("").done is False


def _host_fake(name, script_out=f"{TAG} removed dir /var/lib/etcd\n{TAG} done\n", rc=0, **kw):
    return FakeTransport(name, responses={
        r"run\.lock": CommandResult("lock", 0, b"acquired\n"),
        r"^sh -s$": CommandResult("sh -s", rc, script_out.encode()),
    }, **kw)


def test_reset_host_returns_what_was_removed_and_sends_the_script_on_stdin():
    c = load_sample("cluster")
    f = _host_fake("cp1")
    assert reset_host(c, f, "cp1") == ["dir /var/lib/etcd"]
    call = next(x for x in f.log if x.what == "sh -s")
    assert b"stop_unit etcd" in call.input and b"set -u" in call.input


@pytest.mark.parametrize("out,rc", [(f"{TAG} removed file /x\n", 0),                 # no done line
                                    (f"{TAG} removed file /x\n{TAG} warn busy\n{TAG} done\n", 1)])
def test_reset_host_failure_keeps_what_was_removed(out, rc):
    c = load_sample("cluster")
    with pytest.raises(ResetError) as e:
        reset_host(c, _host_fake("cp1", out, rc), "cp1")
    assert e.value.removed == ["file /x"] and "cp1" in e.value.message


def test_unknown_host_name_is_a_clear_error():
    c = load_sample("cluster")
    assert check_hosts(c, None) == ["cp1", "worker1", "worker2"]
    assert check_hosts(c, ["worker2", "cp1"]) == ["cp1", "worker2"]
    with pytest.raises(KdeployError, match="unknown host.*nope.*cp1, worker1, worker2"):
        check_hosts(c, ["nope"])


def test_resetting_some_etcd_members_warns():
    c = load_sample("ha")
    etcd = [h.name for h in c.hosts if h.has("etcd")]
    assert partial_etcd_warning(c, [h.name for h in c.hosts]) is None
    assert "kdeploy up" in partial_etcd_warning(c, etcd[:1])


@pytest.fixture
def cluster_in_tmp(tmp_path):
    inv = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", inv)
    return load_inventory(inv)[0]


def test_run_reset_resets_reachable_hosts_reports_the_rest_and_forgets_their_cordons(cluster_in_tmp):
    c = cluster_in_tmp
    ledger = CordonLedger(state_dir_for(c))
    ledger.add("worker1")
    ledger.add("worker2")
    fakes = {"cp1": _host_fake("cp1"), "worker1": _host_fake("worker1", f"{TAG} done\n")}
    events = []
    out = run_reset(c, fakes, ["cp1", "worker1", "worker2"],
                    unreachable={"worker2": KdeployError("connection refused")}, emit=events.append)
    assert out.failed == ["worker2"] and "connection refused" in out.hosts["worker2"].error
    assert out.hosts["cp1"].removed == ["dir /var/lib/etcd"] and out.hosts["worker1"].removed == []
    assert not out.nothing
    assert ledger.nodes() == ["worker2"]          # only the reset nodes are forgotten
    assert {e["event"] for e in events} >= {"reset", "reset-failed", "forget"}
    runs = list((state_dir_for(c) / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "results.json").is_file()
    assert any("run.lock" in cmd for cmd in fakes["cp1"].commands)   # the host lock was taken


def test_a_second_reset_with_nothing_left_is_nothing(cluster_in_tmp):
    c = cluster_in_tmp
    fakes = {h.name: _host_fake(h.name, f"{TAG} done\n") for h in c.hosts}
    out = run_reset(c, fakes, [h.name for h in c.hosts])
    assert out.nothing and not out.failed
