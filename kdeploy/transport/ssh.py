"""SSHTransport: paramiko, one connection per host reused for every command and upload.

    t = SSHTransport.from_cluster(cluster, host); t.connect()
    t.run(["systemctl", "is-active", "kubelet"], check=False)

- Authentication: the key file when set (relative paths resolve against the inventory), and the
  ssh agent.
- Host keys: strict by default: the known_hosts file is loaded and unknown or changed keys are
  rejected (paramiko RejectPolicy) with a hint. strictHostKeyChecking: false is an explicit
  opt-out: unknown keys are accepted (AutoAddPolicy, in memory only) with a warning.
- netns: the TCP connection is created inside /run/netns/<netns> (kdeploy.netns).
- bastion: a first connection to the jump host (itself possibly in the netns), then a
  direct-tcpip channel through it is the socket of the real connection.
- Retries: connection refused / timeouts / no banner (a machine still booting) are retried with
  backoff (3 tries over ~5 s by default); auth and host-key failures are not.
- sudo: commands run as `sudo -n -- ...`; files are uploaded to a private temp dir of the ssh
  user, then placed with `sudo install -m MODE -o OWNER -g GROUP` + `mv`.
- Every paramiko/socket exception is translated here into
  TransportError("host <name> (<address>:<port>): <what happened>", hint).
"""
from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import select
import shlex
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import paramiko
from paramiko.sftp import CMD_HANDLE, CMD_OPEN, SFTP_FLAG_CREATE, SFTP_FLAG_EXCL, SFTP_FLAG_WRITE
from paramiko.sftp_attr import SFTPAttributes
from paramiko.sftp_file import SFTPFile

from kdeploy.errors import KdeployError, TransportError
from kdeploy.netns import connect_in_netns
from kdeploy.transport import blobs
from kdeploy.transport.base import (
    unpack_script, upload_source, write_private, RC_MISSING,
    ssh_kwargs, cat_get,
    CommandResult, check_abs, check_result, command_line, display,
    install_script, tmp_path_for, Put, write_many_script, file_error, sudo_needs_password,
    sha256_check,
)

log = logging.getLogger("kdeploy.transport.ssh")

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
_CHUNK = 1 << 18  # 256 KiB SFTP writes (paramiko splits into 32 KiB packets, pipelined)
# compressed uploads streaming at once from this process: each costs deployer CPU (encryption
# in paramiko); more would not send faster and would starve the live display and the gates
def _streams() -> int:
    v = os.environ.get("KDEPLOY_UPLOAD_STREAMS", "8")
    return int(v) if v.isdigit() and int(v) > 0 else 8  # a bad value is the default, not a traceback


STREAMS = threading.BoundedSemaphore(_streams())
# commands (exec sessions) open at once on one connection: sshd refuses more than MaxSessions
# (10 by default) per connection, the SFTP session holds one, and a closed session frees its
# slot only once sshd has processed the close (later on a busy host)
SESSIONS_PER_CONNECTION = 6
MANY_BYTES = 1 << 20     # put_many: file contents per command (base64 in a script on stdin)
SESSION_RETRY_S = 20.0   # a refused session is retried this long (hardened hosts: MaxSessions 2-4)


class _Transient(Exception):
    """A connection failure worth retrying (wraps the reason text)."""


class SSHTransport:
    compresses_uploads = True  # put_file sends big files as zstd or gzip blobs (kdeploy.transport.blobs)

    def __init__(self, host: str, address: str, *, user: str = "root", port: int = 22,
                 key_file: str | os.PathLike | None = None,
                 known_hosts_file: str | os.PathLike | None = None,
                 strict_host_key_checking: bool = True, netns: str | None = None,
                 bastion: dict | None = None, sudo: bool | None = None,
                 connect_timeout: float = 10.0, retries: int = 3, retry_window: float = 5.0,
                 allow_agent: bool = True):
        self.host = host
        self.address = address
        self.user = user
        self.port = port
        self.key_file = str(key_file) if key_file else None
        self.known_hosts_file = os.path.expanduser(str(known_hosts_file or DEFAULT_KNOWN_HOSTS))
        self.strict = strict_host_key_checking
        self.netns = netns
        self.bastion = bastion  # {"address", "port", "user", "key_file"} (key_file resolved)
        self.sudo = (user != "root") if sudo is None else sudo
        self.connect_timeout = connect_timeout
        self.retries = max(1, retries)
        self.retry_window = retry_window
        self.allow_agent = allow_agent
        self._client: paramiko.SSHClient | None = None
        self._jump: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.Lock()
        self._sftp_lock = threading.RLock()  # SFTPClient is not meant for concurrent use
        self._sessions = threading.BoundedSemaphore(SESSIONS_PER_CONNECTION)
        self._ids: dict[tuple[str, str], tuple[int, int]] = {("root", "root"): (0, 0)}
        self._dirs: set[str] = set()
        self._fmt: str | None = None   # the blob format this host decompresses (_blob_format)

    @classmethod
    def from_cluster(cls, cluster, host, **kw) -> "SSHTransport":
        """Build (not connect) the transport of an inventory host: `host` is a Host or a name."""
        name, address, settings = ssh_kwargs(cluster, host)
        return cls(name, address, **settings, **kw)

    def __repr__(self) -> str:
        return f"SSHTransport({self.host!r}, {self.user}@{self.address}:{self.port})"

    # --- errors ----------------------------------------------------------------------------
    @property
    def where(self) -> str:
        return f"host {self.host} ({self.address}:{self.port})"

    def _error(self, what: str, hint: str | None = None) -> TransportError:
        return TransportError(f"{self.where}: {what}", hint)

    # --- connection ------------------------------------------------------------------------
    def connect(self) -> "SSHTransport":
        """Open the connection (idempotent). Raises TransportError; retries transient failures."""
        with self._lock:
            if self._client is not None and self._alive(self._client):
                return self
            self._close_locked()
            delays = _backoff(self.retries, self.retry_window)
            last = ""
            for attempt in range(self.retries):
                try:
                    t0 = time.monotonic()
                    self._client = self._open()
                    log.debug("%s: connected in %.3fs (attempt %d)", self.where,
                              time.monotonic() - t0, attempt + 1)
                    return self
                except _Transient as e:
                    self._close_locked()
                    last = str(e)
                    if attempt + 1 < self.retries:
                        log.info("%s: %s; retrying in %.1fs", self.where, last, delays[attempt])
                        time.sleep(delays[attempt])
                except BaseException:
                    self._close_locked()
                    raise
            raise self._error(
                f"unreachable after {self.retries} attempts: {last}",
                "check that the machine is up, the address and port are right and sshd runs"
                + (f" (connecting from network namespace {self.netns})" if self.netns else ""))

    def _open(self) -> paramiko.SSHClient:
        sock = None
        if self.bastion:
            sock = self._open_via_bastion()
        else:
            sock = self._tcp(self.address, self.port, self.where)
        return self._ssh(sock, self.address, self.port, self.user, self.key_file, self.where)

    def _tcp(self, address: str, port: int, where: str) -> socket.socket:
        try:
            return connect_in_netns(self.netns, address, port, self.connect_timeout)
        except KdeployError:
            raise
        except (ConnectionRefusedError, ConnectionResetError) as e:
            raise _Transient("connection refused" if isinstance(e, ConnectionRefusedError)
                             else "connection reset") from None
        except (socket.timeout, TimeoutError):
            raise _Transient(f"connection timed out after {self.connect_timeout:g}s") from None
        except socket.gaierror as e:
            raise TransportError(f"{where}: cannot resolve address: {e.strerror or e}",
                                 "check the host's address in the inventory") from None
        except OSError as e:  # EHOSTUNREACH, ENETUNREACH (a booting machine's link may be down)
            raise _Transient(e.strerror or str(e)) from None

    def _open_via_bastion(self):
        b = self.bastion
        bwhere = f"host {self.host}: bastion {b['address']}:{b['port']}"
        try:
            jump = _JUMPS.acquire(self, bwhere)
        except TransportError as e:
            raise TransportError(f"{self.where}: via bastion: {e.message}", e.hint) from None
        self._jump = jump
        try:
            return jump.get_transport().open_channel(
                "direct-tcpip", (self.address, self.port), ("127.0.0.1", 0),
                timeout=self.connect_timeout)
        except paramiko.ChannelException as e:
            # the bastion could not reach the target: as transient as a refused connection
            raise _Transient(f"the bastion {b['address']} cannot connect: {e.text or e}") from None
        except (paramiko.SSHException, OSError, EOFError, AttributeError) as e:
            _JUMPS.drop(jump)  # a dead shared connection: the next try opens a new one
            raise _Transient(f"bastion channel failed: {e}") from None

    def _jump_key(self) -> tuple:
        b = self.bastion
        return (self.netns, b["address"], int(b["port"]), b.get("user") or "root", b.get("key_file"),
                self.strict, self.known_hosts_file)

    def _open_jump(self, bwhere: str) -> paramiko.SSHClient:
        b = self.bastion
        return self._ssh(self._tcp(b["address"], int(b["port"]), bwhere), b["address"],
                         int(b["port"]), b.get("user") or "root", b.get("key_file"), bwhere)

    def _ssh(self, sock, address: str, port: int, user: str, key_file: str | None,
             where: str) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        if self.strict:
            if os.path.exists(self.known_hosts_file):
                try:
                    client.load_host_keys(self.known_hosts_file)
                except (OSError, paramiko.SSHException) as e:
                    raise TransportError(f"{where}: cannot read known_hosts file "
                                         f"{self.known_hosts_file}: {e}") from None
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        else:
            client.set_missing_host_key_policy(_WarnAutoAdd(where))
            if os.path.exists(self.known_hosts_file):  # a changed key is still an error
                try:
                    client.load_host_keys(self.known_hosts_file)
                except (OSError, paramiko.SSHException):
                    pass
        if key_file and not os.path.exists(key_file):
            _close_quiet(sock)
            raise TransportError(f"{where}: ssh key file not found: {key_file}",
                                 "set ssh.keyFile in the inventory (relative paths are "
                                 "relative to the inventory file)")
        try:
            client.connect(
                address, port=port, username=user, sock=sock, key_filename=key_file,
                allow_agent=self.allow_agent, look_for_keys=False,
                timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout, channel_timeout=self.connect_timeout)
        except paramiko.BadHostKeyException as e:
            client.close()
            raise TransportError(
                f"{where}: host key mismatch: the server presented a {e.key.get_name()} key "
                f"(SHA256:{_fp(e.key)}) that differs from the one in {self.known_hosts_file}",
                "the machine was reinstalled or someone is intercepting the connection. If the "
                f"change is expected, remove the old entry (ssh-keygen -R '{_kh_name(address, port)}' "
                f"-f {self.known_hosts_file}) and add the new key") from None
        except paramiko.AuthenticationException as e:
            client.close()
            raise TransportError(
                f"{where}: authentication failed for user {user}: {e}",
                f"check ssh.user and ssh.keyFile ({key_file or 'no key file: ssh agent only'}); "
                "the public key must be in the user's ~/.ssh/authorized_keys") from None
        except paramiko.SSHException as e:
            client.close()
            text = str(e)
            if "not found in known_hosts" in text:
                key = client.get_transport().get_remote_server_key() if client.get_transport() else None
                fp = f" ({key.get_name()} SHA256:{_fp(key)})" if key else ""
                raise TransportError(
                    f"{where}: unknown host key{fp}: {_kh_name(address, port)} is not in "
                    f"{self.known_hosts_file}",
                    f"add the host's key to {self.known_hosts_file} (e.g. ssh-keyscan -p {port} "
                    f"{address} >> {self.known_hosts_file}, after checking its fingerprint), or "
                    "opt out explicitly with ssh.strictHostKeyChecking: false in the inventory") from None
            if "banner" in text.lower() or "closed" in text.lower() or "reset" in text.lower():
                raise _Transient(f"ssh handshake failed: {text}") from None
            raise TransportError(f"{where}: ssh handshake failed: {text}") from None
        except (socket.timeout, TimeoutError):
            client.close()
            raise _Transient("ssh handshake timed out") from None
        except (EOFError, ConnectionResetError) as e:
            client.close()
            raise _Transient(f"connection closed during the ssh handshake ({type(e).__name__})") from None
        except OSError as e:
            client.close()
            raise _Transient(e.strerror or str(e)) from None
        except ValueError as e:  # e.g. an unsupported key file format
            client.close()
            raise TransportError(f"{where}: cannot use ssh key {key_file}: {e}") from None
        tr = client.get_transport()
        if tr is not None:
            tr.set_keepalive(30)
        return client

    @staticmethod
    def _alive(client: paramiko.SSHClient) -> bool:
        tr = client.get_transport()
        return tr is not None and tr.is_active()

    def _transport(self) -> paramiko.Transport:
        if self._client is None or not self._alive(self._client):
            self.connect()
        return self._client.get_transport()

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        for obj in (self._sftp, self._client):
            if obj is not None:
                try:
                    obj.close()
                except Exception:
                    pass
        if self._jump is not None:
            _JUMPS.release(self._jump)
        self._sftp = self._client = self._jump = None
        self._dirs.clear()

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- commands --------------------------------------------------------------------------
    def run(self, cmd: str | Sequence[str], *, input: bytes | None = None,
            timeout: float | None = 300, check: bool = True, secret: bool = False) -> CommandResult:
        shown = display(cmd, secret)
        line = command_line(cmd, sudo=self.sudo)
        log.debug("%s: run %s", self.where, shown)
        try:
            res = self._exec(line, shown, input, timeout)
        except TransportError:
            raise
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise self._error(f"connection lost while running {shown}: {e or type(e).__name__}") from None
        return check_result(self.host, res, sudo=self.sudo) if check else res

    def _exec(self, line: str, shown: str, input: bytes | Path | None,
              timeout: float | None) -> CommandResult:
        # lanes and parallel uploads run several commands on one host at once: never more
        # sessions than sshd allows on one connection
        with self._sessions:
            return self._exec_session(line, shown, input, timeout)

    def _exec_session(self, line: str, shown: str, input: bytes | Path | None,
                      timeout: float | None) -> CommandResult:
        chan = self._open_session(shown, reconnect=True)
        with chan:
            chan.exec_command(stdin_safe(line, bool(input)))
            writer = None
            if input:  # bytes, or a local file streamed in chunks
                writer = threading.Thread(target=_feed, args=(chan, input), daemon=True)
                writer.start()
            out, err = [], []
            deadline = None if timeout is None else time.monotonic() + timeout
            exited_at = None
            while True:
                got = False
                while chan.recv_ready():
                    out.append(chan.recv(65536)); got = True
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(65536)); got = True
                if got:
                    continue
                if chan.eof_received or chan.closed:
                    break  # both streams are complete (EOF wakes the select below)
                if chan.exit_status_ready():
                    # exited, but a background child still holds stdout open: don't wait for it
                    exited_at = exited_at or time.monotonic()
                    if time.monotonic() - exited_at > 1.0:
                        break
                if deadline is not None and time.monotonic() > deadline:
                    chan.close()
                    raise self._error(f"command timed out after {timeout:g}s: {shown}")
                wait = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
                select.select([chan], [], [], wait)
            # the exit status follows EOF (it does not wake the select: wait on its event)
            left = None if deadline is None else max(0.1, deadline - time.monotonic())
            if not chan.status_event.wait(left):
                chan.close()
                raise self._error(f"command timed out after {timeout:g}s: {shown}")
            rc = chan.exit_status
            if writer is not None:
                writer.join(1)
        return CommandResult(shown, rc, b"".join(out), b"".join(err))

    # --- files -----------------------------------------------------------------------------
    def _open_session(self, shown: str, *, reconnect: bool = False) -> paramiko.Channel:
        """A session channel on the connection. One the server refuses (MaxSessions; a slot
        frees when another command's close is through) is retried for SESSION_RETRY_S, never by
        dropping the connection, which would kill the other threads' commands on it; a dead
        connection (host rebooted) is reconnected once when `reconnect`."""
        tr = self._transport()
        deadline = time.monotonic() + SESSION_RETRY_S
        wait = 0.05
        while True:
            try:
                return tr.open_session(timeout=self.connect_timeout)
            except paramiko.SSHException as e:
                if not tr.is_active():
                    if not reconnect:
                        raise
                    self.close()
                    return self._transport().open_session(timeout=self.connect_timeout)
                if time.monotonic() > deadline:
                    raise self._error(f"the host refused a session for {shown}: {e or type(e).__name__}",
                                      "raise MaxSessions in the host's sshd_config") from None
                time.sleep(wait)
                wait = min(1.0, wait * 2)

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None or self._sftp.get_channel().closed:
            chan = self._open_session("SFTP")
            chan.invoke_subsystem("sftp")
            self._sftp = paramiko.SFTPClient(chan)
        return self._sftp

    def put(self, path: str, data: bytes, *, mode: int = 0o644, owner: str = "root",
            group: str = "root") -> None:
        path = check_abs(self.host, path)
        if len(data) <= MANY_BYTES:   # one command, not about eight SFTP requests
            self.put_many([Put(path, data, mode, owner, group)])
            return
        log.debug("%s: put %s (%d bytes, mode %04o)", self.where, path, len(data), mode)

        def write(f) -> None:
            f.write(data)

        self._put(path, write, mode, owner, group, None)

    def put_many(self, files: Sequence[Put]) -> None:
        """Small files in one command per MANY_BYTES (kdeploy.transport.base.write_many_script):
        one round trip instead of about six SFTP requests per file."""
        batches: list[list[Put]] = [[]]
        size = 0
        for f in files:
            if batches[-1] and size + len(f.data) > MANY_BYTES:
                batches.append([])
                size = 0
            batches[-1].append(Put(check_abs(self.host, f.path), f.data, f.mode, f.owner, f.group))
            size += len(f.data)
        for batch in filter(None, batches):
            names = ", ".join(posixpath.basename(b.path) for b in batch)
            shown = f"write {len(batch)} files ({names})"
            log.debug("%s: %s", self.where, shown)
            try:
                res = self._exec(command_line(["sh", "-s"], sudo=self.sudo), shown,
                                 write_many_script(batch), 120)
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise self._error(f"connection lost while writing {names}: {e or type(e).__name__}") from None
            if res.rc != 0 and not (self.sudo and sudo_needs_password(res.stderr)):
                raise file_error(self.where, "cannot write " + ", ".join(b.path for b in batch), res)
            check_result(self.host, res, sudo=self.sudo)

    def put_file(self, path: str, local_path: Path, *, mode: int = 0o755,
                 sha256: str | None = None) -> None:
        path = check_abs(self.host, path)
        local_path = upload_source(self.where, local_path)
        log.debug("%s: put_file %s -> %s", self.where, local_path, path)
        if sha256:
            sha256 = sha256.lower()
        if blobs.wanted(local_path.stat().st_size, sha256):
            self._put_blob(path, local_path, mode, sha256)
            return

        def write(f) -> None:
            h = hashlib.sha256()
            with open(local_path, "rb") as src:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    h.update(chunk)
                    f.write(chunk)
            if sha256 and h.hexdigest() != sha256:
                raise TransportError(f"local file {local_path} does not match its sha256: "
                                     f"expected {sha256}, got {h.hexdigest()}",
                                     "the artifact cache is corrupt: delete the file and fetch it again")

        self._put(path, write, mode, "root", "root", sha256)

    def _blob_format(self) -> str:
        """The best blob format (kdeploy.transport.blobs.FORMATS) both ends handle: asked of the
        host once (`command -v TOOL`); gzip is on every host."""
        if self._fmt is None:
            fmt = "gzip"
            for name in blobs.preferred():
                tool = blobs.FORMATS[name].tool
                if self._exec(f"command -v {shlex.quote(tool)}", f"command -v {tool}", None, 30).rc == 0:
                    fmt = name
                    break
            self._fmt = fmt
        return self._fmt

    def _put_blob(self, path: str, local_path: Path, mode: int, sha256: str) -> None:
        """Stream the file's cached blob (zstd or gzip) into its decompressor on the host (one
        command, no SFTP); the host checks the sha256 of the output before it renames it into
        place. A blob whose output does not verify is rebuilt from the source once."""
        fmt = self._blob_format()
        script = command_line(unpack_script(path, mode=mode, sha256=sha256,
                                            decompress=blobs.FORMATS[fmt].decompress), sudo=self.sudo)
        shown = f"upload {path} ({fmt})"
        for attempt in (1, 2):
            blob = blobs.blob(local_path, sha256, fmt)
            try:
                with STREAMS:
                    res = self._exec(script, shown, blob, timeout=600)
            except TransportError:
                raise
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise self._error(f"connection lost while writing {path}: {e or type(e).__name__}") from None
            if res.rc == 65 and attempt == 1:
                log.warning("%s: %s did not verify after upload; rebuilding its blob", self.where, path)
                blobs.forget(sha256, fmt)
                continue
            self._checked(res, path, sha256)
            return

    def _put(self, path: str, write: Callable, mode: int, owner: str, group: str,
             verify_sha: str | None) -> None:
        try:
            with self._sftp_lock:
                if self.sudo:
                    self._put_sudo(path, write, mode, owner, group, verify_sha)
                else:
                    self._put_root(path, write, mode, owner, group, verify_sha)
        except TransportError:
            raise
        except (IOError, OSError, paramiko.SSHException, EOFError) as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise self._error(f"cannot write {path}: {reason}") from None

    def _put_root(self, path, write, mode, owner, group, verify_sha) -> None:
        sftp = self._sftp_client()
        d = posixpath.dirname(path)
        tmp = tmp_path_for(path)
        uid, gid = self._resolve_ids(owner, group)
        if d not in self._dirs:
            _sftp_makedirs(sftp, d)
            self._dirs.add(d)
        try:
            sftp.remove(tmp)  # a leftover could carry wider permissions: never reuse it
        except FileNotFoundError:
            pass
        f = _open_exclusive(sftp, tmp, mode & 0o7777)
        try:
            with f:
                f.set_pipelined(True)
                write(f)
                f.chmod(mode & 0o7777)   # fsetstat: the server's umask may have dropped bits
                if (uid, gid) != (0, 0) or self.user != "root":
                    f.chown(uid, gid)
                    f.chmod(mode & 0o7777)  # chown clears setuid/setgid
                _fsync(f)
            if verify_sha:
                self._verify_remote(tmp, path, verify_sha)
            sftp.posix_rename(tmp, path)
        except BaseException:
            try:
                sftp.remove(tmp)
            except Exception:
                pass
            raise

    def _put_sudo(self, path, write, mode, owner, group, verify_sha) -> None:
        sftp = self._sftp_client()
        # a private (0700) temp dir owned by the ssh user; the file inside inherits that privacy
        tdir = self._exec("mktemp -d /tmp/kdeploy.XXXXXXXX", "mktemp -d", None, 30)
        if tdir.rc != 0:
            raise self._error(f"cannot create a temp dir: {tdir.err}")
        tdir = tdir.out.strip()
        src = posixpath.join(tdir, "data")
        try:
            f = _open_exclusive(sftp, src, 0o600)
            with f:
                f.set_pipelined(True)
                write(f)
            res = self.run(install_script(src, path, mode=mode, owner=owner, group=group,
                                          sha256=verify_sha, remove_src=True), check=False)
            self._checked(res, path, verify_sha)
        finally:
            try:
                self._exec(f"rm -rf {shlex.quote(tdir)}", "rm -rf TMPDIR", None, 30)
            except Exception:
                pass

    def _verify_remote(self, tmp: str, path: str, sha: str) -> None:
        """The host hashes the uploaded temp file (openssl where it has it) and deletes it if
        it does not match."""
        self._checked(self.run(sha256_check(tmp, sha), check=False), path, sha)

    def _checked(self, res: CommandResult, path: str, sha: str | None) -> None:
        """The result of a command that placed or checked `path`: exit 65 is sha256_check's
        mismatch, anything else failing is the command's error."""
        if res.rc == 65:
            raise self._error(f"sha256 mismatch for {path} after upload (expected {sha})",
                              "the upload was corrupted in transit; retry")
        check_result(self.host, res, sudo=self.sudo)

    def _resolve_ids(self, owner: str, group: str) -> tuple[int, int]:
        key = (owner, group)
        if key not in self._ids:
            res = self._exec(
                f"id -u {shlex.quote(owner)} && getent group {shlex.quote(group)} | cut -d: -f3",
                "id -u OWNER; getent group GROUP", None, 30)
            parts = res.out.split()
            if res.rc != 0 or len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise self._error(f"unknown owner or group {owner}:{group}",
                                  "create the user/group first (an earlier phase should)")
            self._ids[key] = (int(parts[0]), int(parts[1]))
        return self._ids[key]

    def get_file(self, path: str, local_path: Path) -> int | None:
        path = check_abs(self.host, path)
        src, tdir = path, None
        try:
            if self.sudo:  # a private copy the ssh user can read, removed afterwards
                r = self.run(f"[ -e {shlex.quote(path)} ] || exit {RC_MISSING}; d=$(mktemp -d "
                             f"/tmp/kdeploy.XXXXXXXX) && install -m 0600 -o {shlex.quote(self.user)} "
                             f"-- {shlex.quote(path)} \"$d/data\" && chown {shlex.quote(self.user)} "
                             f"\"$d\" && echo \"$d\"", check=False)
                if r.rc == RC_MISSING:
                    return None
                tdir = check_result(self.host, r, sudo=True).out.strip()
                src = posixpath.join(tdir, "data")
            return self._read(src, path, lambda f: write_private(
                local_path, iter(lambda: f.read(1 << 20), b"")))
        finally:
            if tdir:
                self.run(f"rm -rf -- {shlex.quote(tdir)}", check=False)

    def get(self, path: str) -> bytes | None:
        return cat_get(self, check_abs(self.host, path), sudo=self.sudo)

    def _read(self, src: str, path: str, consume):
        """consume(an open SFTP file of src); None when it does not exist; errors name path."""
        try:
            with self._sftp_lock:
                sftp = self._sftp_client()
                with sftp.open(src, "rb") as f:
                    f.prefetch()
                    return consume(f)
        except FileNotFoundError:
            return None
        except TransportError:
            raise
        except (IOError, OSError, paramiko.SSHException, EOFError) as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise self._error(f"cannot read {path}: {reason}") from None


# --- helpers ---------------------------------------------------------------------------------

class _JumpPool:
    """One connection per bastion (same address, port, user, key, netns, host-key policy) shared
    by every host behind it: each host is a direct-tcpip channel of that connection (fan-out),
    not a login of its own. 24 hosts behind one bastion used to be 24 logins at once, past
    sshd's default MaxStartups (10 unauthenticated connections, then random drops). Closed when
    the last host using it closes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_key: dict[tuple, list] = {}     # key -> [client, users]
        self._key_of: dict[int, tuple] = {}

    def acquire(self, t: "SSHTransport", bwhere: str) -> paramiko.SSHClient:
        key = t._jump_key()
        with self._lock:  # one login at a time per pool: the others reuse it
            entry = self._by_key.get(key)
            if entry is not None and not SSHTransport._alive(entry[0]):
                self._forget(key)
                entry = None
            if entry is None:
                client = t._open_jump(bwhere)
                entry = self._by_key[key] = [client, 0]
                self._key_of[id(client)] = key
            entry[1] += 1
            return entry[0]

    def release(self, client: paramiko.SSHClient) -> None:
        with self._lock:
            key = self._key_of.get(id(client))
            entry = self._by_key.get(key) if key else None
            if entry is None or entry[0] is not client:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                self._forget(key)

    def drop(self, client: paramiko.SSHClient) -> None:
        with self._lock:
            key = self._key_of.get(id(client))
            if key and self._by_key.get(key, [None])[0] is client:
                self._forget(key)

    def _forget(self, key: tuple) -> None:
        client = self._by_key.pop(key)[0]
        self._key_of.pop(id(client), None)
        try:
            client.close()
        except Exception:
            pass

    def open_count(self) -> int:
        with self._lock:
            return len(self._by_key)


_JUMPS = _JumpPool()


class _WarnAutoAdd(paramiko.MissingHostKeyPolicy):
    def __init__(self, where: str):
        self.where = where

    def missing_host_key(self, client, hostname, key):
        log.warning("%s: accepting unknown host key %s SHA256:%s without checking "
                    "(strictHostKeyChecking: false)", self.where, key.get_name(), _fp(key))
        client.get_host_keys().add(hostname, key.get_name(), key)  # memory only: never saved


def _open_exclusive(sftp: paramiko.SFTPClient, path: str, mode: int) -> SFTPFile:
    """SFTP open(O_WRONLY|O_CREAT|O_EXCL) with the permissions given at creation, so the file
    never exists with wider permissions (paramiko's open() sends no attributes)."""
    attrs = SFTPAttributes()
    attrs.st_mode = mode
    t, msg = sftp._request(CMD_OPEN, path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL, attrs)
    if t != CMD_HANDLE:
        raise paramiko.SFTPError("Expected handle")
    return SFTPFile(sftp, msg.get_binary(), "wb", -1)


def _sftp_makedirs(sftp: paramiko.SFTPClient, d: str) -> None:
    """mkdir -p over SFTP (no shell): missing directories are created 0755."""
    missing = []
    while d not in ("", "/"):
        try:
            sftp.stat(d)
            break
        except FileNotFoundError:
            missing.append(d)
            d = posixpath.dirname(d)
    for m in reversed(missing):
        try:
            sftp.mkdir(m, 0o755)
        except IOError:
            sftp.stat(m)  # raced with another writer: fine if it exists now
        sftp.chmod(m, 0o755)  # mkdir's mode is subject to the server's umask


def _fsync(f: SFTPFile) -> None:
    f.flush()
    try:
        from paramiko.sftp import CMD_EXTENDED
        f.sftp._request(CMD_EXTENDED, "fsync@openssh.com", f.handle)
    except (IOError, paramiko.SFTPError):
        pass  # server without the extension: rename is still atomic, durability best effort


def stdin_safe(line: str, input: bool) -> str:
    """The command line as sent, such that this side never sends on a channel the host has
    closed: sshd drops the whole connection (every command on it) at an EOF or data packet for
    a channel it has freed ("ieof packet referred to nonexistent channel"), and paramiko may
    put our EOF on the wire after the CLOSE it sends back for a command that exited at once
    (it builds the EOF under the channel's lock and sends it after). A command without input
    reads /dev/null on the host and is sent no EOF at all; one with input reads it to the end
    even when it exits early, so the host closes only after our EOF. `line` is one simple
    command (command_line's, or a raw one that reads no stdin)."""
    if not input:
        return f"{line} </dev/null"
    return f"{line}; kd_rc=$?; cat >/dev/null; exit $kd_rc"


def _feed(chan: paramiko.Channel, data: bytes | Path) -> None:
    try:
        if isinstance(data, Path):
            with open(data, "rb") as f:
                while chunk := f.read(_CHUNK):
                    chan.sendall(chunk)
        else:
            chan.sendall(data)
        chan.shutdown_write()
    except Exception:  # the connection or the channel went away: the reader reports it
        pass


def _backoff(tries: int, window: float) -> list[float]:
    """Delays between tries, doubling, summing to ~window: 3 tries / 5 s -> [1.67, 3.33]."""
    n = max(0, tries - 1)
    if n == 0:
        return []
    unit = window / (2 ** n - 1)
    return [unit * 2 ** i for i in range(n)]


def _fp(key) -> str:
    import base64
    return base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def _kh_name(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def _close_quiet(sock) -> None:
    try:
        if sock is not None:
            sock.close()
    except Exception:
        pass
