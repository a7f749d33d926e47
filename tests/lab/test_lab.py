"""End-to-end: real lab machines (systemd-nspawn) brought up by `kdeploy lab up`."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# skipped with the reason (not root, systemd-nspawn/debootstrap missing) by the lab_cluster fixture
pytestmark = pytest.mark.lab

MACHINES = ["m1", "m2", "m3"]


@pytest.fixture(scope="module")
def lab(lab_cluster):
    return lab_cluster(masters=1, workers=2)


def test_inventory_points_at_the_lab(lab):
    import yaml
    inv = yaml.safe_load(Path(lab.inventory).read_text())
    assert [h["name"] for h in inv["hosts"]] == MACHINES
    assert inv["spec"]["ssh"]["netns"] == lab.netns
    assert inv["spec"]["ssh"]["strictHostKeyChecking"] is True
    assert Path(inv["spec"]["ssh"]["knownHostsFile"]).read_text().count("ssh-ed25519") == 3


def test_ssh_with_strict_host_keys(lab):
    for m in MACHINES:
        rc, out, _ = lab.run(m, "hostname")
        assert (rc, out.strip()) == (0, m)


def test_unknown_host_key_is_rejected(lab, tmp_path):
    import paramiko
    from kdeploy.netns import connect_in_netns
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())  # and no known_hosts loaded
    addr = lab.address("m1")
    sock = connect_in_netns(lab.netns, addr, 22, 10)
    with pytest.raises(paramiko.SSHException):
        client.connect(addr, username="root", key_filename=lab.key_file, sock=sock,
                       look_for_keys=False, allow_agent=False)
    client.close()


def test_ping_mesh(lab):
    for m in MACHINES:
        others = " ".join(o for o in MACHINES if o != m)
        rc, out, err = lab.run(m, f"for o in {others}; do ping -c1 -W2 $o >/dev/null || echo FAIL $o; done")
        assert rc == 0 and "FAIL" not in out, out + err


def test_systemd_is_running(lab):
    for m in MACHINES:
        rc, out, _ = lab.run(m, "systemctl is-system-running --wait; systemctl --failed --no-legend --plain")
        lines = out.strip().splitlines()
        assert lines[0] in ("running", "degraded"), out
        failed = [ln.split()[0] for ln in lines[1:] if ln.strip()]
        assert failed == [], f"{m}: failed units {failed}"


def test_kubelet_prerequisites(lab):
    rc, out, err = lab.run("m2", """
        for c in cpu cpuacct cpuset memory pids devices freezer blkio; do
          mkdir /sys/fs/cgroup/$c/kdeploy-probe && rmdir /sys/fs/cgroup/$c/kdeploy-probe || echo "ro $c"; done
        dd if=/dev/kmsg of=/dev/null bs=8192 count=1 iflag=nonblock 2>/dev/null || echo "kmsg unreadable"
        [ "$(swapon --show --noheadings | wc -l)" = 0 ] || echo "swap on"
        [ "$(findmnt -n -o FSTYPE /var/lib/containerd)" != overlay ] || echo "containerd dir on overlay"
        ip route show default | grep -q 'via 192.168.57.1' || echo "no default route"
        for b in iptables conntrack socat ipset ethtool modprobe python3 nft mount; do
          command -v $b >/dev/null || echo "missing $b"; done
    """)
    assert rc == 0 and out.strip() == "", out + err


def test_nested_container_with_debian_containerd(lab, tmp_path, nested_image_tools):
    debian_debs, busybox_image_archive = nested_image_tools
    debs = debian_debs()
    image = busybox_image_archive(debs[-1], tmp_path / "busybox.tar")
    lab.run("m1", "mkdir -p /tmp/debs")
    for d in debs[:-1]:
        lab.put("m1", d, f"/tmp/debs/{d.name}")
    lab.put("m1", image, "/tmp/busybox.tar")
    rc, out, err = lab.run("m1", "dpkg -i /tmp/debs/*.deb >/tmp/dpkg.log 2>&1 || { tail /tmp/dpkg.log; exit 1; }"
                                 "; systemctl enable --now containerd && sleep 1 && systemctl is-active containerd",
                           timeout=300)
    assert rc == 0 and out.strip().endswith("active"), out + err
    rc, out, err = lab.run("m1", "ctr image import /tmp/busybox.tar >/dev/null && "
                                 "ctr run --rm docker.io/lab/busybox:1 t1 sh -c 'echo hello-from-nested; id -u'",
                           timeout=120)
    assert rc == 0 and "hello-from-nested" in out, out + err
    rc, out, err = lab.run("m1", "ctr run -d --memory-limit 67108864 docker.io/lab/busybox:1 t2 sleep 60"
                                 " >/dev/null && cat /sys/fs/cgroup/memory/default/t2/memory.limit_in_bytes;"
                                 " ctr task kill -s KILL t2; sleep 0.5; ctr container rm t2")
    assert rc == 0 and out.strip() == "67108864", out + err


def test_down_leaves_nothing_behind(lab):
    from kdeploy.lab.state import LabState
    rec = LabState(lab.name).load()
    pids = [r["pid"] for r in rec.resources if r["kind"] == "process"]
    for m in rec.machines:
        pids.append(int(Path(m.dir, "nspawn.pid").read_text()))
    cgroups = [d for m in rec.machines for d in m.cgroups.values()]
    mounts = [r["path"] for r in rec.resources if r["kind"] == "mount"]
    assert all(os.path.exists(f"/proc/{p}") for p in pids)
    # processes inside the machines, via their cgroups
    inside = [p for d in cgroups for p in Path(d, "cgroup.procs").read_text().split()]
    inside += [p for d in cgroups for sub in Path(d).rglob("cgroup.procs") for p in sub.read_text().split()]
    seconds = lab.down()
    assert seconds < 30
    leftovers = [p for p in set(pids) | {int(x) for x in inside} if os.path.exists(f"/proc/{p}")
                 and Path(f"/proc/{p}/stat").read_text().split(")")[-1].split()[0] != "Z"]
    assert leftovers == []
    assert not os.path.exists(f"/run/netns/{rec.netns}")          # bridge + veths went with it
    proc_mounts = Path("/proc/self/mounts").read_text()
    assert not any(m in proc_mounts for m in mounts) and str(LabState(lab.name).dir) not in proc_mounts
    assert not any(os.path.exists(d) for d in cgroups)
    assert not any(os.path.exists(os.path.dirname(d)) for d in cgroups)   # the lab's own level
    assert not LabState(lab.name).dir.exists()
    assert not os.path.exists(f"/run/systemd/nspawn/propagate/{rec.machines[0].unit}")
