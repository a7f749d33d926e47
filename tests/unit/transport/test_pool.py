import pytest

from kdeploy.model.cluster import Cluster, Host
from kdeploy.transport.fake import FakeTransport
from kdeploy.transport.pool import UnreachableHosts, connect_all, connect_each


def _cluster():
    return Cluster(hosts=[Host(name=n, address=f"192.0.2.{i + 1}", roles=["worker"])
                          for i, n in enumerate(["cp1", "w1", "w2"])])


def test_connect_all_ok():
    fakes = {n: FakeTransport(n) for n in ("cp1", "w1", "w2")}
    ts = connect_all(_cluster(), factory=FakeTransport.factory(fakes))
    assert list(ts) == ["cp1", "w1", "w2"] and all(f.connected for f in fakes.values())


def test_connect_all_subset_by_name():
    fakes = {n: FakeTransport(n) for n in ("cp1", "w1", "w2")}
    ts = connect_all(_cluster(), ["w2"], factory=FakeTransport.factory(fakes))
    assert list(ts) == ["w2"] and not fakes["cp1"].connected


def test_every_unreachable_host_in_one_error_others_untouched():
    fakes = {"cp1": FakeTransport("cp1"),
             "w1": FakeTransport("w1", unreachable="connection refused"),
             "w2": FakeTransport("w2", unreachable="connection timed out")}
    with pytest.raises(UnreachableHosts) as e:
        connect_all(_cluster(), factory=FakeTransport.factory(fakes))
    msg = e.value.message
    assert "2 host(s) unreachable: w1, w2" in msg
    assert "connection refused" in msg and "connection timed out" in msg
    assert set(e.value.failures) == {"w1", "w2"} and e.value.exit_code == 6
    assert fakes["cp1"].closed and fakes["cp1"].log == []  # nothing ran on the reachable host


def test_connect_each_returns_both():
    fakes = {"cp1": FakeTransport("cp1"), "w1": FakeTransport("w1", unreachable="down"),
             "w2": FakeTransport("w2")}
    ok, failed = connect_each(_cluster(), factory=FakeTransport.factory(fakes))
    assert set(ok) == {"cp1", "w2"} and set(failed) == {"w1"}


def test_factory_bug_is_reported_not_raised_raw():
    def factory(cluster, host):
        raise RuntimeError("oops")
    with pytest.raises(UnreachableHosts, match="RuntimeError: oops"):
        connect_all(_cluster(), factory=factory)
