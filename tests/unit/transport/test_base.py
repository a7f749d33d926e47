import gzip
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import path_without

from kdeploy.errors import TransportError
from kdeploy.transport.base import (
    SECRET_DISPLAY, CommandResult, check_result, command_line, display, install_script,
    tmp_path_for, unpack_script,
)


def test_command_line_list_is_quoted_argv():
    assert command_line(["echo", "a b", "$HOME"]) == "echo 'a b' '$HOME'"


def test_command_line_str_runs_by_sh_c():
    assert command_line("echo $HOME | wc -c") == "sh -c 'echo $HOME | wc -c'"


def test_command_line_sudo_wraps():
    assert command_line(["id"], sudo=True) == "sudo -n -- id"
    assert command_line("a && b", sudo=True) == "sudo -n -- sh -c 'a && b'"


def test_empty_argv_rejected():
    with pytest.raises(ValueError):
        command_line([])


def test_display_masks_secrets():
    assert display(["etcdctl", "--password", "hunter2"], secret=True) == SECRET_DISPLAY
    assert display(["a", "b c"]) == "a 'b c'"


def test_check_result_names_host_command_and_stderr_tail():
    err = b"".join(f"line{i}\n".encode() for i in range(20))
    with pytest.raises(TransportError) as e:
        check_result("cp1", CommandResult("systemctl start etcd", 1, b"", err))
    msg = e.value.message
    assert "host cp1" in msg and "systemctl start etcd" in msg and "exit code 1" in msg
    assert "line19" in msg and "line0\n" not in msg  # only the last lines


def test_check_result_secret_command_not_shown():
    with pytest.raises(TransportError) as e:
        check_result("cp1", CommandResult(SECRET_DISPLAY, 2, b"", b"bad"))
    assert SECRET_DISPLAY in e.value.message


def test_check_result_sudo_password_hint():
    r = CommandResult("id", 1, b"", b"sudo: a password is required\n")
    with pytest.raises(TransportError) as e:
        check_result("w1", r, sudo=True)
    assert "sudo needs a password" in e.value.message and "NOPASSWD" in e.value.hint


def test_check_result_ok_passes_through():
    r = CommandResult("true", 0)
    assert check_result("h", r) is r and r.ok


def test_tmp_path_is_hidden_sibling():
    assert tmp_path_for("/etc/kubernetes/admin.conf") == "/etc/kubernetes/.admin.conf.kdeploy-tmp"


def test_install_script_sets_mode_owner_and_renames():
    s = install_script("/tmp/x/data", "/etc/a b/f", mode=0o600, owner="etcd", group="etcd", sha256="ab" * 32)
    assert "install -m 0600 -o etcd -g etcd /tmp/x/data '/etc/a b/.f.kdeploy-tmp'" in s


@pytest.mark.parametrize("hasher", ["openssl", "sha256sum"])
def test_uploads_are_checked_with_either_hasher(tmp_path, hasher):
    """The upload scripts place a file only when its sha256 matches, with OpenSSL's hasher or,
    on a host without it, coreutils' sha256sum (either missing: the other is used)."""
    data = os.urandom(3000)
    good = hashlib.sha256(data).hexdigest()
    env = {"PATH": path_without(tmp_path, "sha256sum" if hasher == "openssl" else "openssl")}
    for sha, want in ((good, 0), ("0" * 64, 65)):
        dest = tmp_path / f"out-{want}" / "f"
        r = subprocess.run(["sh", "-c", unpack_script(str(dest), mode=0o640, sha256=sha)],
                           input=gzip.compress(data), env=env, capture_output=True)
        assert r.returncode == want, r.stderr
        assert dest.exists() == (want == 0) and not Path(tmp_path_for(str(dest))).exists()
        if want == 0:
            assert dest.read_bytes() == data and dest.stat().st_mode & 0o777 == 0o640
        src = tmp_path / "src"
        src.write_bytes(data)
        dest2 = tmp_path / f"inst-{want}" / "f"
        r = subprocess.run(["sh", "-c", install_script(str(src), str(dest2), mode=0o600, owner="root",
                                                       group="root", sha256=sha)],
                           env=env, capture_output=True)
        assert r.returncode == want and dest2.exists() == (want == 0), r.stderr
