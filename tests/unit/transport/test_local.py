import hashlib
import os
import stat
from pathlib import Path

import pytest

from kdeploy.errors import TransportError
from kdeploy.transport.base import Transport
from kdeploy.transport.local import LocalTransport

ROOT = os.geteuid() == 0


def test_is_a_transport():
    assert isinstance(LocalTransport(), Transport)


def test_run_str_uses_shell_list_does_not():
    t = LocalTransport()
    assert t.run("echo $((1+2))").out == "3"
    assert t.run(["echo", "$((1+2))"]).out == "$((1+2))"
    assert t.run(["cat"], input=b"abc").stdout == b"abc"


def test_run_failure_names_host_command_stderr():
    t = LocalTransport("node1")
    with pytest.raises(TransportError) as e:
        t.run("echo nope >&2; exit 3")
    assert "host node1" in e.value.message and "exit code 3" in e.value.message and "nope" in e.value.message
    assert t.run("exit 3", check=False).rc == 3


def test_run_secret_masked_in_error():
    with pytest.raises(TransportError) as e:
        LocalTransport().run(["sh", "-c", "exit 1", "hunter2"], secret=True)
    assert "hunter2" not in e.value.message


def test_run_missing_binary_is_rc_127():
    assert LocalTransport().run(["/nonexistent/bin"], check=False).rc == 127


def test_run_timeout():
    with pytest.raises(TransportError, match="timed out"):
        LocalTransport().run(["sleep", "5"], timeout=0.2)


def test_put_creates_dirs_sets_mode_and_leaves_no_temp(tmp_path: Path):
    t = LocalTransport()
    p = tmp_path / "a" / "b" / "admin.conf"
    t.put(str(p), b"v1", mode=0o600)
    st = os.stat(p)
    assert stat.S_IMODE(st.st_mode) == 0o600 and p.read_bytes() == b"v1"
    assert stat.S_IMODE(os.stat(p.parent).st_mode) == 0o755
    t.put(str(p), b"v2", mode=0o640)
    assert p.read_bytes() == b"v2" and stat.S_IMODE(os.stat(p).st_mode) == 0o640
    assert sorted(os.listdir(p.parent)) == ["admin.conf"]


def test_put_is_atomic_rename(tmp_path: Path):
    t = LocalTransport()
    p = tmp_path / "f"
    t.put(str(p), b"old")
    ino = os.stat(p).st_ino
    fd = os.open(p, os.O_RDONLY)  # a reader of the old file keeps seeing the old content
    t.put(str(p), b"new")
    assert os.read(fd, 10) == b"old"
    os.close(fd)
    assert os.stat(p).st_ino != ino and p.read_bytes() == b"new"


def test_secret_never_readable_by_others_even_while_writing(tmp_path: Path, monkeypatch):
    """Observe the temp file while its content is being written: already 0600."""
    t = LocalTransport()
    p = tmp_path / "pki" / "ca.key"
    seen = []
    real_fdopen = os.fdopen

    def spy(fd, *a, **kw):
        f = real_fdopen(fd, *a, **kw)
        orig_write = f.write

        def write(b):
            tmp = p.parent / ".ca.key.kdeploy-tmp"
            seen.append(stat.S_IMODE(os.stat(tmp).st_mode))
            return orig_write(b)
        f.write = write
        return f
    monkeypatch.setattr(os, "fdopen", spy)
    old = os.umask(0)  # even with a permissive umask
    try:
        t.put(str(p), b"SECRET", mode=0o600)
    finally:
        os.umask(old)
    assert seen and all(m & 0o077 == 0 for m in seen), [oct(m) for m in seen]
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600


def test_stale_temp_with_wide_mode_is_not_reused(tmp_path: Path):
    p = tmp_path / "k"
    stale = tmp_path / ".k.kdeploy-tmp"
    stale.write_bytes(b"junk")
    os.chmod(stale, 0o666)
    LocalTransport().put(str(p), b"x", mode=0o600)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600 and not stale.exists()


@pytest.mark.skipif(not ROOT, reason="chown to another owner needs root")
def test_put_owner_group(tmp_path: Path):
    p = tmp_path / "f"
    LocalTransport().put(str(p), b"x", mode=0o640, owner="nobody", group="nogroup")
    st = os.stat(p)
    import grp, pwd
    assert (pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name) == ("nobody", "nogroup")
    assert stat.S_IMODE(st.st_mode) == 0o640


def test_put_unknown_owner_is_transport_error(tmp_path: Path):
    with pytest.raises(TransportError, match="no such user"):
        LocalTransport("n").put(str(tmp_path / "f"), b"x", owner="no-such-user-kd")
    assert list(tmp_path.iterdir()) == []


def test_put_file_and_sha(tmp_path: Path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 << 20))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    dst = tmp_path / "out" / "kubelet"
    t = LocalTransport()
    t.put_file(str(dst), src, sha256=sha)
    assert dst.read_bytes() == src.read_bytes() and stat.S_IMODE(os.stat(dst).st_mode) == 0o755
    with pytest.raises(TransportError, match="sha256 mismatch"):
        t.put_file(str(tmp_path / "out" / "bad"), src, sha256="0" * 64)
    assert not (tmp_path / "out" / "bad").exists()
    assert sorted(os.listdir(dst.parent)) == ["kubelet"]


def test_get(tmp_path: Path):
    t = LocalTransport()
    assert t.get(str(tmp_path / "missing")) is None
    (tmp_path / "x").write_bytes(b"abc")
    assert t.get(str(tmp_path / "x")) == b"abc"


def test_sudo_path_with_a_stub_sudo(tmp_path: Path, monkeypatch):
    """sudo=True wraps commands in `sudo -n --` and places files with install + mv (a stub
    sudo on PATH records and runs the command as the current user)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    logf = tmp_path / "sudo.log"
    (bindir / "sudo").write_text("#!/bin/sh\nprintf '%s\\n' \"$*\" >> " + str(logf) + "\n"
                                 '[ "$1" = -n ] && [ "$2" = -- ] || exit 99\nshift 2\nexec "$@"\n')
    os.chmod(bindir / "sudo", 0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    me = __import__("pwd").getpwuid(os.geteuid()).pw_name
    mygroup = __import__("grp").getgrgid(os.getegid()).gr_name
    t = LocalTransport(sudo=True)
    assert t.run(["id", "-u"]).out == str(os.geteuid())
    p = tmp_path / "etc" / "f.conf"
    t.put(str(p), b"data", mode=0o600, owner=me, group=mygroup)
    assert p.read_bytes() == b"data" and stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert t.get(str(p)) == b"data" and t.get(str(tmp_path / "none")) is None
    log = logf.read_text()
    assert log.startswith("-n -- id -u") and "install -m 0600" in log
    (bindir / "sudo").write_text("#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n")
    with pytest.raises(TransportError, match="sudo needs a password"):
        t.run(["true"])
