"""`kdeploy reset` end to end on lab machines (lab `rst`, 1 control plane + 1 worker): deploy,
reset, check every host separately is bare (and the host's own iptables rules and /etc/hosts
lines are kept), reset again (nothing to reset), deploy again (verify green).

On the worker containerd is stopped before the reset, so `crictl rmp` cannot run there: the
containerd shims that survive a stop (KillMode=process) and the pods' processes must be found
through the unit's cgroup and the pods' slice.

Needs: root + systemd-nspawn + debootstrap, and KDEPLOY_ARTIFACTS (a built artifact directory).
"""
from __future__ import annotations

import json
import shlex
import time

import pytest
import yaml

from kdeploy.model import defaults, load_inventory
from kdeploy.verbs.reset import data_dirs, reset_desired
from tests.lab.conftest import LabCluster, fresh_lab, lab_skip_reason
from tests.lab.test_up import artifacts_dir, assert_ok, events, kdeploy, up_json

pytestmark = pytest.mark.lab

LAB = "rst"
HOST_RULE = "-A INPUT -s 198.51.100.7/32 -m comment --comment host-own -j DROP"
HOST_LINE = "10.1.2.3 keep-me.example"
OLD_ROLE_UNIT = r"""
printf '# Managed by kdeploy (rst).\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n' > /etc/systemd/system/kube-scheduler.service
printf '# the host admin own etcd\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n' > /etc/systemd/system/etcd.service
systemctl daemon-reload && systemctl enable --now kube-scheduler.service etcd.service
"""


@pytest.fixture(scope="module")
def rst(tmp_path_factory):
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    art = artifacts_dir()
    lab = fresh_lab(LAB, tmp_path_factory.mktemp(LAB) / "inventory.yaml")
    try:
        yield lab, art
    finally:
        lab.down()


def reset_json(inv, *extra):
    t = time.monotonic()
    p = kdeploy("reset", "-i", str(inv), "--yes", "--json", *extra)
    return p, events(p.stdout), time.monotonic() - t


def check_bare(lab: LabCluster, host: str, desired, pod_cidr: str) -> list[str]:
    """Everything still on `host` that a reset should have removed ([] when bare)."""
    res = desired[host]
    problems = []

    def sh(cmd: str) -> str:
        rc, out, err = lab.run(host, cmd)
        return out.strip()

    for u in res.units:
        if sh(f"test -e {defaults.SYSTEMD_DIR}/{u.name}.service && echo file; "
              f"systemctl is-active {u.name}.service || true") not in ("inactive", "unknown", ""):
            problems.append(f"unit {u.name} still there or active")
    paths = [f.path for f in res.files] + [b.path for b in res.binaries]
    left = sh("for f in " + " ".join(shlex.quote(p) for p in paths if p != "/etc/hosts")
              + '; do [ -e "$f" ] && echo "$f"; done; true')
    problems += [f"file {p}" for p in left.splitlines()]
    for d in data_dirs():
        if d == defaults.CONTAINERD_ROOT:   # a bind mount in the lab machines: emptied, kept
            if sh(f"ls -A {d} 2>/dev/null"):
                problems.append(f"{d} not empty")
        elif sh(f"test -e {d} && echo yes"):
            problems.append(f"data dir {d}")
    if sh(f"ls -A {defaults.KDEPLOY_DIR} 2>/dev/null"):
        problems.append(f"{defaults.KDEPLOY_DIR} not empty (or the host lock was not released)")
    mounts = sh("findmnt -rn -o TARGET | grep -E '^(/var/lib/kubelet|/run/containerd|/run/netns)/' || true")
    problems += [f"mount {m}" for m in mounts.splitlines()]
    if sh("ip link show cni0 >/dev/null 2>&1 && echo yes"):
        problems.append("link cni0")
    problems += [f"route {r}" for r in sh(f"ip route show root {pod_cidr}").splitlines()]
    for ipt in ("iptables-save", "ip6tables-save"):
        saved = sh(f"{ipt} 2>/dev/null")
        problems += [f"{ipt}: {ln}" for ln in saved.splitlines()
                     if ln.startswith((":KUBE-", ":CNI-")) or "KUBE-" in ln or "CNI-" in ln
                     or "kdeploy-pod-masquerade" in ln]
        if ipt == "iptables-save" and HOST_RULE not in saved:
            problems.append("the host's own iptables rule is gone")
    listening = sh("ss -ltnH")
    for port in (2379, 2380, 6443, 10250):
        if f":{port} " in listening:
            problems.append(f"port {port} still listening")
    hosts = sh("cat /etc/hosts")
    if "BEGIN kdeploy" in hosts or "END kdeploy" in hosts:
        problems.append("the /etc/hosts block is still there")
    if HOST_LINE not in hosts or "localhost" not in hosts:
        problems.append("the rest of /etc/hosts was not kept")
    procs = sh("ps -eo comm=")
    for name in ("containerd-shim", "containerd", "kubelet", "kube-apiserver", "etcd", "nginx",
                 "pause", "agnhost"):
        if any(ln.startswith(name) for ln in procs.splitlines()):
            problems.append(f"process {name} still running")
    return problems


def test_reset_leaves_bare_hosts_a_second_reset_is_a_noop_and_up_deploys_again(rst):
    lab, art = rst
    inv = lab.inventory
    p, evs, up_s = up_json(inv, art)
    assert_ok(p)
    assert all(e["ok"] for e in evs if e.get("event") == "check")
    cluster = load_inventory(inv)[0]
    hosts = [h.name for h in cluster.hosts]

    # the hosts' own rules and lines, which a reset keeps
    for h in hosts:
        rc, _, err = lab.run(h, f"iptables -w {HOST_RULE} && echo {shlex.quote(HOST_LINE)} >> /etc/hosts")
        assert rc == 0, err
    # on the worker: a unit kdeploy placed when m2 had another role (its header says so), which
    # goes, and the host's own unit of a kdeploy unit's name (no header), which stays
    rc, _, err = lab.run("m2", OLD_ROLE_UNIT)
    assert rc == 0, err
    # a cordon an interrupted upgrade left: the deployer forgets it with the node's reset
    state = inv.parent / ".kdeploy" / cluster.name
    (state / "cordoned.json").write_text(json.dumps(["m2"]))
    # the worker's containerd is stopped first: its shims and pods survive (KillMode=process)
    rc, _, err = lab.run("m2", "systemctl stop containerd && pgrep -f containerd-shim")
    assert rc == 0, f"no shim survived containerd's stop: {err}"

    desired = reset_desired(cluster)
    before = check_bare(lab, "m1", desired, cluster.spec.network.pod_cidr)   # the checker sees a cluster
    for what in ("unit kubelet", "file /usr/local/bin/kubelet", "data dir /var/lib/etcd", "link cni0",
                 "port 6443", "/etc/hosts block", "mount /var/lib/kubelet/", "route ", "KUBE-"):
        assert any(what in b for b in before), (what, before)

    p, evs, reset_s = reset_json(inv)
    assert_ok(p)
    done = {e["host"]: e for e in evs if e.get("event") == "reset"}
    assert set(done) == set(hosts), evs
    for h in hosts:
        assert done[h]["removed"], h
    assert any(r.startswith("process ") and "containerd-shim" in r for r in done["m2"]["removed"])
    assert any(r.startswith("pods ") for r in done["m1"]["removed"])
    assert json.loads((state / "cordoned.json").read_text()) == []
    assert (state / "pki").is_dir()               # the cluster keeps its identity

    problems = {h: check_bare(lab, h, desired, cluster.spec.network.pod_cidr) for h in hosts}
    assert problems == {h: [] for h in hosts}, problems
    assert "unit-stopped kube-scheduler" in done["m2"]["removed"]
    assert lab.run("m2", "test ! -e /etc/systemd/system/kube-scheduler.service && "
                         "! systemctl is-active kube-scheduler")[0] == 0
    assert lab.run("m2", "systemctl is-active etcd && test -e /etc/systemd/system/etcd.service")[0] == 0

    t = time.monotonic()
    p2 = kdeploy("reset", "-i", str(inv), "--yes")
    again_s = time.monotonic() - t
    assert_ok(p2)
    for h in hosts:
        assert f"{h}: nothing to reset" in p2.stdout, p2.stdout
    assert "Nothing to reset" in p2.stdout

    p, evs, up2_s = up_json(inv, art)
    assert_ok(p)
    checks = [e for e in evs if e.get("event") == "check"]
    assert checks and all(c["ok"] for c in checks), checks
    print(f"\n1+1 cluster: up {up_s:.1f} s, reset {reset_s:.1f} s, second reset {again_s:.1f} s, "
          f"up again {up2_s:.1f} s")


def test_reset_of_one_host_leaves_the_other_running(rst):
    """--host limits the reset: the worker is reset, the control plane keeps running."""
    lab, art = rst
    inv = lab.inventory
    p, evs, _ = reset_json(inv, "--host", "m2")
    assert_ok(p)
    assert [e["host"] for e in evs if e.get("event") == "reset"] == ["m2"]
    assert lab.run("m1", "systemctl is-active kube-apiserver etcd kubelet")[0] == 0
    assert lab.run("m2", "test -e /etc/systemd/system/kubelet.service")[0] != 0
    doc = yaml.safe_load(inv.read_text())
    assert {h["name"] for h in doc["hosts"]} == {"m1", "m2"}
