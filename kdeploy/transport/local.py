"""LocalTransport: this machine, through subprocess (single-node on this host; tests).

Same semantics as the ssh transport: a str runs by `sh -c`, a list is an argv; with sudo=True
commands are wrapped in `sudo -n --` and files are placed by `sudo install` + `mv`.
Without sudo, files are written directly: temp file beside the target, created with its final
mode (O_EXCL, so never with wider permissions), chown, fsync, rename, fsync of the directory.
"""
from __future__ import annotations

import grp
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from kdeploy.artifacts.layout import sha256_file
from kdeploy.errors import TransportError
from kdeploy.transport.base import (
    upload_source, get_file_whole, write_private,
    cat_get,
    CommandResult, check_abs, check_result, display, install_script,
    tmp_path_for,
)

log = logging.getLogger("kdeploy.transport.local")

_CHUNK = 1 << 20


class LocalTransport:
    def __init__(self, host: str = "localhost", *, sudo: bool = False, address: str = "127.0.0.1"):
        self.host = host
        self.address = address
        self.sudo = sudo

    def __repr__(self) -> str:
        return f"LocalTransport({self.host!r}, sudo={self.sudo})"

    # --- run -----------------------------------------------------------------------------
    def run(self, cmd: str | Sequence[str], *, input: bytes | None = None,
            timeout: float | None = 300, check: bool = True, secret: bool = False) -> CommandResult:
        shown = display(cmd, secret)
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else [str(a) for a in cmd]
        if not argv:
            raise ValueError("empty command")
        if self.sudo:
            argv = ["sudo", "-n", "--", *argv]
        log.debug("host %s: run %s", self.host, shown)
        try:
            p = subprocess.run(argv, input=input if input is not None else b"",
                               capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TransportError(f"host {self.host}: command timed out after {timeout:g}s: {shown}") from None
        except FileNotFoundError:
            p = subprocess.CompletedProcess(argv, 127, b"", f"{argv[0]}: command not found\n".encode())
        except OSError as e:
            raise TransportError(f"host {self.host}: cannot run {shown}: {e.strerror or e}") from None
        res = CommandResult(shown, p.returncode, p.stdout, p.stderr)
        return check_result(self.host, res, sudo=self.sudo) if check else res

    # --- files ---------------------------------------------------------------------------
    def put(self, path: str, data: bytes, *, mode: int = 0o644, owner: str = "root",
            group: str = "root") -> None:
        path = check_abs(self.host, path)
        log.debug("host %s: put %s (%d bytes, mode %04o)", self.host, path, len(data), mode)
        if self.sudo:
            self._put_sudo(path, lambda f: f.write(data), mode, owner, group, None)
        else:
            self._put_direct(path, lambda f: f.write(data), mode, owner, group, None)

    def put_file(self, path: str, local_path: Path, *, mode: int = 0o755,
                 sha256: str | None = None) -> None:
        path = check_abs(self.host, path)
        local_path = upload_source(f"host {self.host}", local_path)

        def copy(f) -> None:
            with open(local_path, "rb") as src:
                shutil.copyfileobj(src, f, _CHUNK)

        if self.sudo:
            self._put_sudo(path, copy, mode, "root", "root", sha256)
        else:
            self._put_direct(path, copy, mode, "root", "root", sha256)

    def _put_direct(self, path: str, write, mode: int, owner: str, group: str,
                    sha256: str | None) -> None:
        tmp = tmp_path_for(path)
        try:
            uid, gid = _ids(owner, group)
            d = os.path.dirname(path)
            os.makedirs(d, mode=0o755, exist_ok=True)
            try:
                os.unlink(tmp)  # a leftover could carry wider permissions: never reuse it
            except FileNotFoundError:
                pass
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode & 0o7777)
            try:
                os.fchmod(fd, mode & 0o7777)  # the umask may have removed bits
                if (uid, gid) != (os.geteuid(), os.getegid()):
                    os.fchown(fd, uid, gid)
                    os.fchmod(fd, mode & 0o7777)  # chown clears setuid/setgid bits
                with os.fdopen(fd, "wb", closefd=False) as f:
                    write(f)
                    f.flush()
                    os.fsync(fd)
            finally:
                os.close(fd)
            if sha256:
                actual = sha256_file(tmp)
                if actual != sha256.lower():
                    os.unlink(tmp)
                    raise TransportError(
                        f"host {self.host}: sha256 mismatch for {path} after upload: "
                        f"expected {sha256}, got {actual}")
            os.rename(tmp, path)
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except TransportError:
            raise
        except OSError as e:
            _unlink_quiet(tmp)
            raise TransportError(f"host {self.host}: cannot write {path}: {e.strerror or e}") from None

    def _put_sudo(self, path: str, write, mode: int, owner: str, group: str,
                  sha256: str | None) -> None:
        tdir = tempfile.mkdtemp(prefix="kdeploy-")  # 0700, ours
        src = os.path.join(tdir, "data")
        try:
            fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                write(f)
            res = self.run(install_script(src, path, mode=mode, owner=owner, group=group,
                                          sha256=sha256, remove_src=False), check=False)
            if res.rc == 65:
                raise TransportError(f"host {self.host}: sha256 mismatch for {path} after upload "
                                     f"(expected {sha256})")
            check_result(self.host, res, sudo=True)
        finally:
            shutil.rmtree(tdir, ignore_errors=True)

    def get_file(self, path: str, local_path: Path) -> int | None:
        path = check_abs(self.host, path)
        if self.sudo:
            return get_file_whole(self, path, local_path)
        try:
            with open(path, "rb") as f:
                return write_private(local_path, iter(lambda: f.read(1 << 20), b""))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise TransportError(f"host {self.host}: cannot read {path}: {e.strerror or e}") from None

    def get(self, path: str) -> bytes | None:
        path = check_abs(self.host, path)
        if self.sudo:
            return cat_get(self, path, sudo=True)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise TransportError(f"host {self.host}: cannot read {path}: {e.strerror or e}") from None

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ids(owner: str, group: str) -> tuple[int, int]:
    try:
        uid = pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise OSError(0, f"no such user: {owner}") from None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise OSError(0, f"no such group: {group}") from None
    return uid, gid


def _unlink_quiet(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass
