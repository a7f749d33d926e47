"""The host lock, run by a real shell (LocalTransport) against a temp lock dir."""
import os
import subprocess

import pytest

from kdeploy.errors import KdeployError
from kdeploy.execute.hostlock import HostLocks
from kdeploy.transport.local import LocalTransport


@pytest.fixture
def hosts():
    # one host: LocalTransports all share this machine's filesystem, i.e. the same lock dir
    return {"a": LocalTransport("a")}


def test_second_deployer_is_refused_until_the_first_releases(hosts, tmp_path):
    lock = str(tmp_path / "run.lock")
    with HostLocks(hosts, "/state/one", lock_dir=lock):
        assert (tmp_path / "run.lock" / "owner").read_text().endswith(":/state/one\n")
        other = HostLocks(hosts, "/state/two", lock_dir=lock)
        other.me = "elsewhere:1:/state/two"            # another deployer machine
        with pytest.raises(KdeployError, match=r"another kdeploy run is driving these hosts") as e:
            other.__enter__()
        assert "held by" in str(e.value) and ":/state/one" in str(e.value)
        assert (tmp_path / "run.lock").is_dir()       # the refused run removed nothing
    assert not (tmp_path / "run.lock").exists()       # released
    with HostLocks(hosts, "/state/two", lock_dir=lock):
        pass


def test_a_stale_lock_is_taken_over(hosts, tmp_path):
    lock = tmp_path / "run.lock"
    lock.mkdir()
    (lock / "owner").write_text("elsewhere:1:/state/old\n")
    os.utime(lock / "owner", (0, 0))                  # not refreshed for ages
    with HostLocks(hosts, "/state/new", lock_dir=str(lock), stale_after=600):
        assert (lock / "owner").read_text().endswith(":/state/new\n")


def test_a_dead_process_on_this_deployer_does_not_block(hosts, tmp_path):
    import socket
    p = subprocess.Popen(["true"])
    p.wait()                                          # a pid that no longer runs
    lock = tmp_path / "run.lock"
    lock.mkdir()
    (lock / "owner").write_text(f"{socket.gethostname()}:{p.pid}:/state/x\n")
    with HostLocks(hosts, "/state/x", lock_dir=str(lock)):
        assert f":{os.getpid()}:" in (lock / "owner").read_text()
