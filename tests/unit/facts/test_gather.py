import json
import os
import time

import pytest

from kdeploy.errors import TransportError
from kdeploy.facts import HostFacts, gather, gather_all
from kdeploy.transport.base import CommandResult
from kdeploy.transport.fake import FakeTransport
from kdeploy.transport.local import LocalTransport


def test_json_round_trip():
    f = FakeTransport("cp1", files={"/etc/a": (b"x", 0o600, "root", "root")},
                      units={"kubelet": {"active": "active", "enabled": "enabled"}}, listening=[6443])
    h = gather(f, paths=["/etc/a", "/etc/b"], units=["kubelet", "etcd"], ports=[6443, 2379])
    d = json.loads(json.dumps(h.to_dict()))
    assert HostFacts.from_dict(d) == h
    assert HostFacts.from_dict({**d, "future_field": 1}) == h


def test_gather_on_fake_reflects_state():
    f = FakeTransport("cp1", files={"/etc/a": (b"x", 0o600, "root", "root")},
                      units={"kubelet": {"active": "active", "enabled": "enabled"}}, listening=[6443],
                      system={"swap": True, "modules": {"br_netfilter": "missing", "overlay": "loaded"}})
    h = gather(f, paths=["/etc/a", "/etc/b"], units=["kubelet", "etcd"], ports=[6443, 2379])
    assert h.exists("/etc/a") and h.sha256("/etc/b") is None
    assert h.file_stat["/etc/a"]["mode"] == 0o600
    assert h.units == {"kubelet": {"active": "active", "enabled": "enabled"},
                       "etcd": {"active": "inactive", "enabled": "not-found"}}
    assert h.ports_in_use == (6443,) and h.swap_active
    assert h.modules_ok == {"br_netfilter": False, "overlay": True}
    assert len(f.commands) == 1  # one round trip


def test_empty_is_a_bare_host():
    h = HostFacts.empty("w1")
    assert not h.gathered and h.sha256("/etc/kubernetes/kubelet.conf") is None
    assert h.unit("kubelet") == {"active": "inactive", "enabled": "not-found"}
    assert h.clock_skew == 0.0 and HostFacts.from_dict(h.to_dict()) == h


def test_gather_all_parallel_and_failures_named():
    ok = {n: FakeTransport(n) for n in ("cp1", "w1")}
    res = gather_all(ok, paths={"cp1": ["/etc/x"]}, units=["kubelet"])
    assert set(res) == {"cp1", "w1"} and "/etc/x" in res["cp1"].file_sha256
    bad = dict(ok, w2=FakeTransport("w2", unreachable="connection refused"),
               w3=FakeTransport("w3", responses={"kdeploy-facts": CommandResult("x", 1, b"", b"sh: broken")}))
    with pytest.raises(TransportError) as e:
        gather_all(bad)
    assert "2 host(s): w2, w3" in e.value.message and "connection refused" in e.value.message


def test_gather_local_host_is_fast_and_sane(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    t0 = time.monotonic()
    h = gather(LocalTransport(), paths=[str(p), str(tmp_path / "none"), str(tmp_path)],
               units=["kubelet"], ports=[6443])
    dt = time.monotonic() - t0
    assert h.sha256(str(p)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert h.sha256(str(tmp_path)) == "dir" and h.sha256(str(tmp_path / "none")) is None
    assert h.os_id and h.arch and h.kernel == os.uname().release
    assert abs(h.clock_skew) < 1 and h.cpus >= 1 and h.mem_bytes > 0
    assert "/" in h.disk_free_bytes
    assert dt < 5  # well under 1 s on an idle machine; generous for loaded CI
