"""The transport protocol: run a command, put bytes atomically, get a file.

Implementations: ssh.SSHTransport (paramiko), local.LocalTransport (subprocess on this
machine), fake.FakeTransport (in memory, for tests). Low-level errors (paramiko, socket,
OSError) are translated once, inside each implementation, into kdeploy.errors.TransportError;
nothing else escapes a transport.

Command semantics (all transports):
  - a list/tuple is an argv, shlex-joined for the remote shell (no shell interpretation);
  - a str is a shell script, run by `sh -c`;
  - with sudo, either is wrapped in `sudo -n --` (never prompts: a password prompt is an error);
  - check=True raises TransportError naming the host, the command (masked when secret=True)
    and the last lines of stderr. stdin data is never logged.
"""
from __future__ import annotations

import base64
import logging
import posixpath
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

from kdeploy.errors import TransportError

log = logging.getLogger("kdeploy.transport")

SECRET_DISPLAY = "<secret command>"
STDERR_TAIL_LINES = 8
TMP_SUFFIX = ".kdeploy-tmp"
# exit code our `get` script uses for "no such file" (outside the range cat/sh use)
RC_MISSING = 100

SUDO_PASSWORD_MARKERS = ("a password is required", "a terminal is required", "no tty present")


@dataclass(frozen=True)
class CommandResult:
    argv_display: str
    rc: int
    stdout: bytes = b""
    stderr: bytes = b""

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def out(self) -> str:
        """stdout decoded (UTF-8, errors replaced), stripped of the trailing newline."""
        return self.stdout.decode("utf-8", "replace").rstrip("\n")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace").rstrip("\n")

    def __repr__(self) -> str:  # output can be large; keep reprs short
        return (f"CommandResult({self.argv_display!r}, rc={self.rc}, "
                f"stdout={len(self.stdout)}B, stderr={len(self.stderr)}B)")


@runtime_checkable
class Transport(Protocol):
    host: str  # inventory host name (for messages)

    def run(self, cmd: str | Sequence[str], *, input: bytes | None = None,
            timeout: float | None = 300, check: bool = True, secret: bool = False) -> CommandResult: ...

    def put(self, path: str, data: bytes, *, mode: int = 0o644, owner: str = "root",
            group: str = "root") -> None: ...

    def put_file(self, path: str, local_path: Path, *, mode: int = 0o755,
                 sha256: str | None = None) -> None: ...

    def get(self, path: str) -> bytes | None: ...

    def get_file(self, path: str, local_path: Path) -> int | None:
        """Copy a (possibly large) host file to local_path (created 0600), streamed: never
        whole in memory. Bytes copied; None when the host has no such file."""
        ...

    def close(self) -> None: ...


# --- helpers shared by the implementations -------------------------------------------------

def command_line(cmd: str | Sequence[str], *, sudo: bool = False) -> str:
    """The shell command line a remote login shell runs for `cmd` (see module docstring)."""
    if isinstance(cmd, str):
        line = "sh -c " + shlex.quote(cmd)
    else:
        argv = [str(a) for a in cmd]
        if not argv:
            raise ValueError("empty command")
        line = shlex.join(argv)
    return "sudo -n -- " + line if sudo else line


def display(cmd: str | Sequence[str], secret: bool = False) -> str:
    """How a command appears in logs and errors: the script or the joined argv, never a secret."""
    if secret:
        return SECRET_DISPLAY
    return cmd if isinstance(cmd, str) else shlex.join(str(a) for a in cmd)


def stderr_tail(stderr: bytes, lines: int = STDERR_TAIL_LINES) -> str:
    text = stderr.decode("utf-8", "replace").strip()
    if not text:
        return ""
    tail = text.splitlines()[-lines:]
    return "\n".join("  " + ln for ln in tail)


def file_error(where: str, what: str, result: CommandResult) -> TransportError:
    """`<where>: cannot read|write <paths> (exit code N)` and the command's stderr tail: a file
    operation that failed as a command (cat, the write script)."""
    tail = stderr_tail(result.stderr)
    return TransportError(f"{where}: {what} (exit code {result.rc})" + (f"\n{tail}" if tail else ""))


def sudo_needs_password(stderr: bytes) -> bool:
    s = stderr.decode("utf-8", "replace").lower()
    return "sudo" in s and any(m in s for m in SUDO_PASSWORD_MARKERS)


def check_result(host: str, result: CommandResult, *, sudo: bool = False) -> CommandResult:
    """Raise TransportError for a failed command (rc != 0); return the result otherwise."""
    if result.rc == 0:
        return result
    if sudo and sudo_needs_password(result.stderr):
        raise TransportError(
            f"host {host}: sudo needs a password (running: {result.argv_display})",
            "kdeploy runs `sudo -n` and never types passwords: give the ssh user passwordless "
            "sudo (e.g. '<user> ALL=(ALL) NOPASSWD: ALL' in /etc/sudoers.d/), or connect as root",
        )
    what = "killed by a signal" if result.rc < 0 else f"exit code {result.rc}"
    msg = f"host {host}: command failed ({what}): {result.argv_display}"
    tail = stderr_tail(result.stderr)
    if tail:
        msg += "\n" + tail
    elif result.stdout:
        msg += "\n" + stderr_tail(result.stdout)  # some tools report errors on stdout
    raise TransportError(msg)


def tmp_path_for(path: str) -> str:
    """`/dir/name` -> `/dir/.name.kdeploy-tmp`: same directory, so rename is atomic."""
    d, name = posixpath.split(path)
    return posixpath.join(d, f".{name}{TMP_SUFFIX}")


def check_abs(host: str, path: str) -> str:
    if not path.startswith("/") or path.endswith("/"):
        raise TransportError(f"host {host}: not an absolute file path: {path!r}")
    return posixpath.normpath(path)


# Sets $KD_SHA to the host's fastest sha256 tool: OpenSSL where the host has it (its SHA
# extensions make it about 4x faster than coreutils' sha256sum: Debian 12, 0.09 s against 0.35 s
# per 92 MB; a new worker checks about 450 MB of uploads, a control-plane host 750 MB), else
# sha256sum. `$KD_SHA FILE...` prints one line per file, its sum in the first 64 characters
# (OpenSSL separates the path with " *", sha256sum with two spaces). Used by the upload checks
# and the facts' hash cache (kdeploy.facts.parse.SHA_CACHED).
SHA256_TOOL = ('if command -v openssl >/dev/null 2>&1; then KD_SHA="openssl dgst -sha256 -r --"; '
               'else KD_SHA="sha256sum --"; fi')


def sha256_check(tmp: str, sha256: str) -> str:
    """Shell lines that delete `tmp` and exit 65 unless it hashes to sha256."""
    q = shlex.quote
    return (f"{SHA256_TOOL}\n"
            f"if [ \"$($KD_SHA {q(tmp)} | cut -c1-64)\" != {q(sha256.lower())} ]; then "
            f"rm -f {q(tmp)}; echo 'kdeploy: sha256 mismatch after upload' >&2; exit 65; fi")


def install_script(src: str, path: str, *, mode: int, owner: str, group: str,
                   sha256: str | None = None, remove_src: bool = True) -> str:
    """Shell script (run as root) that places `src` at `path` atomically: parent dirs (0755),
    `install` into the hidden temp file beside `path` (install creates it private and sets
    mode/owner), optional sha256 check, fsync, rename. Used by the sudo and local paths."""
    q = shlex.quote
    tmp = tmp_path_for(path)
    lines = [
        "set -e", "umask 022",
        f"mkdir -p {q(posixpath.dirname(path))}",
        f"rm -f {q(tmp)}",
        f"install -m {mode:04o} -o {q(owner)} -g {q(group)} {q(src)} {q(tmp)}",
    ]
    if sha256:
        lines.append(sha256_check(tmp, sha256))
    lines += [f"sync {q(tmp)} 2>/dev/null || sync", f"mv -f {q(tmp)} {q(path)}"]
    if remove_src:
        lines.append(f"rm -f {q(src)}")
    return "\n".join(lines)


def unpack_script(path: str, *, mode: int, sha256: str, decompress: str = "gzip -dc") -> str:
    """Shell script (run as root) that reads a compressed stream on stdin, decompresses it
    (`decompress`: stdin to stdout) and places the output at `path` atomically, root-owned with
    `mode`, once its sha256 is checked (exit 65 if not): the compressed upload of
    kdeploy.transport.blobs."""
    q = shlex.quote
    tmp = tmp_path_for(path)
    return "\n".join([
        "set -e",
        f"(umask 022; mkdir -p {q(posixpath.dirname(path))})",
        "umask 077",  # private until checked and given its mode
        f"rm -f {q(tmp)}",
        f"{decompress} > {q(tmp)}",
        sha256_check(tmp, sha256),
        f"chown root:root {q(tmp)}",
        f"chmod {mode:04o} {q(tmp)}",
        f"sync {q(tmp)} 2>/dev/null || sync",
        f"mv -f {q(tmp)} {q(path)}",
    ])


@dataclass(frozen=True)
class Put:
    """One small file of a put_many: what put() takes."""
    path: str
    data: bytes
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"


def put_many(t, files: Sequence[Put]) -> None:
    """Write small files on one host: in one round trip where the transport can (ssh: one
    script, every file written beside its target and renamed into place at the end; one file
    too: one command instead of about six SFTP requests), else one put() after the other."""
    if files and hasattr(t, "put_many"):
        t.put_many(files)
        return
    for f in files:
        t.put(f.path, f.data, mode=f.mode, owner=f.owner, group=f.group)


def write_many_script(files: Sequence[Put]) -> bytes:
    """Shell script (run as root, read by `sh -s` from stdin: file contents never appear in a
    command line) that writes each file into its hidden temp file beside the target, with its
    owner and mode, fsyncs them, then renames them all into place: a failure before the renames
    changes no file, and removes the temp files. One process per file where it can: a file
    without execute or special bits is created with its mode (the umask, a shell builtin; a
    private file never exists with more), and root's files need no chown (the script runs as
    root); on a busy host each process costs milliseconds (a node's 13 files: ~66 before)."""
    q = shlex.quote
    tmps = [tmp_path_for(f.path) for f in files]
    dirs = sorted({posixpath.dirname(f.path) for f in files})
    out = ["set -e", "umask 022", "mkdir -p " + " ".join(q(d) for d in dirs),
           "kd_clean() { rm -f " + " ".join(q(t) for t in tmps) + "; }", "trap kd_clean EXIT",
           "kd_clean"]   # no temp file left from an interrupted run is written through
    for f, tmp in zip(files, tmps):
        mode = f.mode & 0o7777
        plain = not mode & ~0o666       # created with exactly this mode by 0666 & ~umask
        out += [f"umask {(0o777 & ~mode) if plain else 0o077:03o}",
                f"base64 -d > {q(tmp)} <<'KDEPLOY_EOF'",
                base64.encodebytes(f.data).decode().rstrip("\n"),
                "KDEPLOY_EOF"]
        if (f.owner, f.group) != ("root", "root"):
            out.append(f"chown {q(f.owner)}:{q(f.group)} {q(tmp)}")
        if not plain:
            out.append(f"chmod {mode:04o} {q(tmp)}")
    out.append("sync " + " ".join(q(t) for t in tmps) + " 2>/dev/null || sync")
    out += [f"mv -f {q(tmp)} {q(f.path)}" for f, tmp in zip(files, tmps)]
    out.append("trap - EXIT")
    return ("\n".join(out) + "\n").encode()


def get_script(path: str) -> str:
    q = shlex.quote(path)
    return f"[ -e {q} ] || exit {RC_MISSING}; exec cat -- {q}"


def ssh_kwargs(cluster, host) -> tuple[str, str, dict]:
    """(name, address, keyword arguments) of an inventory host's effective SSH settings, with
    relative key paths resolved against the inventory: shared by the ssh and ansible transports.
    `host` is a Host or a name."""
    from kdeploy.model.validate import resolve_path

    if isinstance(host, str):
        host = cluster.host(host)
    s = cluster.ssh_for(host)

    def path(p):
        return str(resolve_path(p, cluster)) if p else None

    bastion = None
    if s.bastion is not None:
        b = s.bastion
        bastion = {"address": b.address, "port": b.port, "user": b.user,
                   "key_file": path(b.key_file) or path(s.key_file)}
    return host.name, host.address, dict(
        user=s.user, port=s.port, key_file=path(s.key_file),
        known_hosts_file=path(s.known_hosts_file),
        strict_host_key_checking=s.strict_host_key_checking, netns=s.netns, bastion=bastion,
        sudo=s.sudo)


def cat_get(t, path: str, *, sudo: bool = False) -> bytes | None:
    """`get` as one command (`cat`, as root through sudo where the transport uses it): one
    round trip where SFTP takes about five. None when the file does not exist; the contents
    never reach a log (run() logs the command only)."""
    res = t.run(get_script(path), check=False)
    if res.rc == RC_MISSING:
        return None
    if res.rc != 0 and not (sudo and sudo_needs_password(res.stderr)):
        raise file_error(getattr(t, "where", f"host {t.host}"), f"cannot read {path}", res)
    return check_result(t.host, res, sudo=sudo).stdout


def write_private(local_path, chunks) -> int:
    """Write chunks to local_path, created 0600 (secrets: etcd snapshots), via a temp file and
    rename. Bytes written."""
    import os
    local_path = Path(local_path)
    tmp = local_path.with_name(f".{local_path.name}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    n = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                n += len(chunk)
        os.replace(tmp, local_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def get_file_whole(t, path: str, local_path) -> int | None:
    """get_file for transports that can only read a file whole (fake, ansible)."""
    data = t.get(path)
    return None if data is None else write_private(local_path, [data])


def upload_source(where: str, local_path) -> Path:
    """The local file a put_file sends, checked before anything touches the host."""
    local_path = Path(local_path)
    if not local_path.is_file():
        raise TransportError(f"{where}: local file to upload not found: {local_path}",
                             "check the artifact directory (kdeploy artifacts verify DIR)")
    return local_path
