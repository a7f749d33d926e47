from pathlib import Path

import pytest

from kdeploy.errors import TransportError
from kdeploy.transport.base import CommandResult, Transport
from kdeploy.transport.fake import FakeFile, FakeTransport


def test_is_a_transport():
    assert isinstance(FakeTransport("h"), Transport)


def test_put_get_and_fs_tuple():
    f = FakeTransport("cp1")
    f.put("/etc/kubernetes/pki/ca.key", b"KEY", mode=0o600, owner="root", group="root")
    assert f.fs["/etc/kubernetes/pki/ca.key"] == (b"KEY", 0o600, "root", "root")
    assert f.get("/etc/kubernetes/pki/ca.key") == b"KEY"
    assert f.get("/nope") is None
    assert f.is_dir("/etc/kubernetes")
    assert [c.op for c in f.log] == ["put", "get", "get"]


def test_put_file_checks_sha(tmp_path: Path):
    src = tmp_path / "bin"
    src.write_bytes(b"binary")
    f = FakeTransport("cp1")
    with pytest.raises(TransportError, match="sha256 mismatch"):
        f.put_file("/usr/local/bin/kubelet", src, sha256="0" * 64)
    import hashlib
    f.put_file("/usr/local/bin/kubelet", src, sha256=hashlib.sha256(b"binary").hexdigest())
    assert f.fs["/usr/local/bin/kubelet"] == FakeFile(b"binary", 0o755)


def test_scripted_responses_regex_and_callable():
    f = FakeTransport("cp1", responses={
        r"^kubeadm": CommandResult("kubeadm", 1, b"", b"boom\n"),
        r"hostname": lambda cmd, inp: CommandResult(cmd, 0, b"cp1\n"),
    })
    assert f.run(["hostname"]).out == "cp1"
    with pytest.raises(TransportError, match="boom"):
        f.run(["kubeadm", "init"])
    assert f.run("kubeadm init", check=False).rc == 1
    assert f.commands == ["hostname", "kubeadm init", "kubeadm init"]


def test_responder_callable_falls_through_to_builtins():
    f = FakeTransport("cp1", files={"/etc/x": b"hi"},
                      responses=lambda cmd, inp: CommandResult(cmd, 0, b"!") if "special" in cmd else None)
    assert f.run("special").stdout == b"!"
    assert f.run(["cat", "/etc/x"]).stdout == b"hi"


def test_units_and_restarts():
    f = FakeTransport("cp1", units={"kubelet": {"active": "inactive", "enabled": "disabled"}})
    assert f.run(["systemctl", "is-active", "kubelet"], check=False).rc == 3
    f.run(["systemctl", "enable", "--now", "kubelet"])
    f.run(["systemctl", "restart", "kubelet"])
    assert f.units["kubelet"] == {"active": "active", "enabled": "enabled"}
    assert f.restarts == ["kubelet"]
    assert f.run(["systemctl", "is-active", "kubelet"]).out == "active"
    with pytest.raises(TransportError, match="not found"):
        f.run(["systemctl", "start", "nope"])


def test_unreachable_host():
    f = FakeTransport("w2", unreachable="connection refused")
    with pytest.raises(TransportError, match="host w2 .*connection refused"):
        f.connect()
    with pytest.raises(TransportError):
        f.run(["true"])


def test_fail_paths():
    f = FakeTransport("cp1", fail_paths=["/etc/ro"])
    with pytest.raises(TransportError, match="/etc/ro"):
        f.put("/etc/ro", b"x")
    assert "/etc/ro" not in f.fs


def test_secret_masked_in_log():
    f = FakeTransport("cp1")
    f.run(["sh", "-c", "echo hunter2"], secret=True, input=b"pw")
    assert "hunter2" not in repr(f.commands)


def test_relative_path_rejected():
    with pytest.raises(TransportError, match="absolute"):
        FakeTransport("h").put("etc/x", b"")
