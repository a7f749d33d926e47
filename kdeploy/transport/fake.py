"""FakeTransport: an in-memory host for unit tests.

    fake = FakeTransport("cp1", files={"/etc/hosts": b"127.0.0.1 localhost\\n"},
                         units={"kubelet": {"active": "active", "enabled": "enabled"}},
                         responses={r"^kubeadm": CommandResult("kubeadm", 1, b"", b"boom")})
    fake.put("/etc/x", b"data", mode=0o600)
    assert fake.fs["/etc/x"] == (b"data", 0o600, "root", "root")
    assert fake.commands == [...]; fake.restarts == ["kubelet"]

- fs: {path: FakeFile(data, mode, owner, group)} (FakeFile is a tuple)
- log: every call as FakeCall(op, display, input); `commands` lists the run() displays
- responses: {regex: CommandResult | callable(cmd_text, input) -> CommandResult}, searched in
  order against the command text (a list is shlex-joined), or one callable that returns a
  CommandResult or None (fall through). Scripted responses win over the built-ins.
- built-ins: systemctl (is-active, is-enabled, start/stop/restart/reload/enable/disable/
  daemon-reload), cat, sha256sum, rm -f, mkdir -p, test -e, true, and the facts script (its
  output is computed from the state: fs, units, `listening` ports, `system` info).
- failures: unreachable="reason" (connect() and every call raise TransportError), fail_paths
  (put to these paths raises), or a response with rc != 0 for a command.
"""
from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
import threading
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from kdeploy.errors import TransportError
from kdeploy.transport.base import (
    upload_source, get_file_whole,
    CommandResult, check_abs, check_result, display,
)

Responder = Callable[[str, "bytes | None"], "CommandResult | None"]


class FakeFile(NamedTuple):
    data: bytes
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"


class FakeCall(NamedTuple):
    op: str                 # run | put | put_many | put_file | get
    what: str               # command display or path
    input: bytes | None = None


DEFAULT_SYSTEM = {
    "os_release": {"ID": "debian", "VERSION_ID": "12", "VERSION_CODENAME": "bookworm",
                   "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)"},
    "machine": "x86_64", "kernel": "6.1.0-fake-amd64", "hostname": None,
    "hostname_resolves": True, "swap": False, "clock_offset": 0.0, "disk_free": 50 << 30,
    "systemd": True, "python3": "/usr/bin/python3", "cgroup": 2, "cpus": 2, "mem_bytes": 4 << 30,
    "modules": {"br_netfilter": "loaded", "overlay": "loaded"},
}


class FakeTransport:
    def __init__(self, host: str = "fake", *, files: dict | None = None,
                 responses: dict | Responder | None = None, units: dict | None = None,
                 listening: Sequence[int] = (), system: dict | None = None,
                 unreachable: str | None = None, fail_paths: Sequence[str] = (),
                 sudo: bool = False, address: str = "192.0.2.1"):
        self.host = host
        self.address = address
        self.sudo = sudo
        self.fs: dict[str, FakeFile] = {}
        for p, v in (files or {}).items():
            self.fs[p] = v if isinstance(v, FakeFile) else (
                FakeFile(v) if isinstance(v, bytes) else FakeFile(*v))
        self.dirs: set[str] = set()
        self.units: dict[str, dict[str, str]] = {k: dict(v) for k, v in (units or {}).items()}
        self.listening: set[int] = set(listening)
        self.system = {**DEFAULT_SYSTEM, **(system or {})}
        if self.system["hostname"] is None:
            self.system["hostname"] = host
        self.responses = responses or {}
        self.unreachable = unreachable
        self.fail_paths = set(fail_paths)
        self.log: list[FakeCall] = []
        self.restarts: list[str] = []
        self.connected = False
        self.closed = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FakeTransport({self.host!r})"

    @staticmethod
    def factory(fakes: dict[str, "FakeTransport"]):
        """A pool factory (kdeploy.transport.pool) serving these fakes by host name."""
        def make(cluster, host):
            name = host if isinstance(host, str) else host.name
            if name not in fakes:
                raise TransportError(f"host {name} (fake): no fake transport configured")
            return fakes[name].connect()
        return make

    # --- state helpers -------------------------------------------------------------------
    def connect(self) -> "FakeTransport":
        self._reachable()
        self.connected = True
        self.closed = False
        return self

    def _reachable(self) -> None:
        if self.unreachable:
            raise TransportError(f"host {self.host} ({self.address}:22): {self.unreachable}",
                                 "check that the machine is up")

    def is_dir(self, path: str) -> bool:
        path = path.rstrip("/") or "/"
        return path in self.dirs or any(p.startswith(path + "/") for p in self.fs)

    @property
    def commands(self) -> list[str]:
        return [c.what for c in self.log if c.op == "run"]

    def text(self, path: str) -> str | None:
        f = self.fs.get(path)
        return None if f is None else f.data.decode()

    # --- Transport -------------------------------------------------------------------------
    def run(self, cmd: str | Sequence[str], *, input: bytes | None = None,
            timeout: float | None = 300, check: bool = True, secret: bool = False) -> CommandResult:
        self._reachable()
        shown = display(cmd, secret)
        text = cmd if isinstance(cmd, str) else shlex.join(str(a) for a in cmd)
        with self._lock:
            self.log.append(FakeCall("run", shown, input))
        res = self._respond(text, input)
        res = CommandResult(shown, res.rc, res.stdout, res.stderr)
        return check_result(self.host, res, sudo=self.sudo) if check else res

    def _respond(self, text: str, input: bytes | None) -> CommandResult:
        """A scripted response (outside the fake's lock: commands run side by side, as on a
        host; a responder that keeps state locks it itself), else the built-ins (locked)."""
        if callable(self.responses):
            r = self.responses(text, input)
            if r is not None:
                return r
        else:
            for pattern, r in self.responses.items():
                if re.search(pattern, text):
                    return r(text, input) if callable(r) else r
        with self._lock:
            return self._builtin(text, input)

    def _builtin(self, text: str, input: bytes | None) -> CommandResult:
        from kdeploy.facts.parse import MARKER
        if MARKER in text.split("\n", 1)[0]:
            from kdeploy.facts.gather import fake_output
            return CommandResult(text, 0, fake_output(self, text).encode())
        try:
            argv = shlex.split(text)
        except ValueError:
            argv = []
        if argv[:3] == ["sudo", "-n", "--"]:
            argv = argv[3:]
        ok = CommandResult(text, 0)
        if not argv:
            return ok
        cmd, args = argv[0], argv[1:]
        if cmd == "systemctl":
            return self._systemctl(text, [a for a in args if not a.startswith("-")])
        if cmd == "cat" and args:
            f = self.fs.get(args[-1])
            if f is None:
                return CommandResult(text, 1, b"", f"cat: {args[-1]}: No such file or directory\n".encode())
            return CommandResult(text, 0, f.data)
        if cmd == "sha256sum" and args:
            p = args[-1]
            f = self.fs.get(p)
            if f is None:
                return CommandResult(text, 1, b"", f"sha256sum: {p}: No such file or directory\n".encode())
            return CommandResult(text, 0, f"{hashlib.sha256(f.data).hexdigest()}  {p}\n".encode())
        if cmd == "rm":
            for p in (a for a in args if not a.startswith("-")):
                self.fs.pop(p, None)
            return ok
        if cmd == "mkdir":
            self.dirs.update(a for a in args if a.startswith("/"))
            return ok
        if cmd == "test" and len(args) == 2 and args[0] in ("-e", "-f"):
            return ok if (args[1] in self.fs or (args[0] == "-e" and self.is_dir(args[1]))) \
                else CommandResult(text, 1)
        return ok  # anything else "succeeds" silently; script failures with `responses`

    def _systemctl(self, text: str, args: list[str]) -> CommandResult:
        if not self.system["systemd"]:
            return CommandResult(text, 1, b"", b"System has not been booted with systemd\n")
        args = [a for a in args if a != "--no-reload"]  # systemctl --no-reload enable U
        if not args:
            return CommandResult(text, 0)
        verb, names = args[0], args[1:]
        if verb == "daemon-reload":
            return CommandResult(text, 0)
        if verb in ("is-active", "is-enabled"):
            key = "active" if verb == "is-active" else "enabled"
            vals = [self.units.get(n, {}).get(key, "inactive" if key == "active" else "not-found")
                    for n in names]
            good = {"active"} if key == "active" else {"enabled", "static", "alias"}
            rc = 0 if vals and all(v in good for v in vals) else (3 if key == "active" else 1)
            return CommandResult(text, rc, ("\n".join(vals) + "\n").encode())
        for n in names:
            if n not in self.units and verb in ("start", "restart", "reload", "enable"):
                return CommandResult(text, 5, b"", f"Failed to {verb} {n}: Unit {n} not found.\n".encode())
            st = self.units.setdefault(n, {"active": "inactive", "enabled": "disabled"})
            if verb in ("start", "restart", "reload", "try-restart"):
                st["active"] = "active"
                if verb in ("restart", "try-restart"):
                    self.restarts.append(n)
            elif verb == "stop":
                st["active"] = "inactive"
            elif verb == "enable":
                st["enabled"] = "enabled"
            elif verb == "disable":
                st["enabled"] = "disabled"
        return CommandResult(text, 0)

    def put(self, path: str, data: bytes, *, mode: int = 0o644, owner: str = "root",
            group: str = "root") -> None:
        self._reachable()
        path = check_abs(self.host, path)
        with self._lock:
            self.log.append(FakeCall("put", path))
            self._write(path, bytes(data), mode, owner, group)

    def put_many(self, files) -> None:
        """One call, as ssh writes them (one script): every file or, when one cannot be
        written (fail_paths), none."""
        self._reachable()
        paths = [check_abs(self.host, f.path) for f in files]
        with self._lock:
            self.log.append(FakeCall("put_many", " ".join(paths)))
            for p in paths:
                if p in self.fail_paths:
                    raise TransportError(f"host {self.host}: cannot write {p}: Permission denied")
            for p, f in zip(paths, files):
                self._write(p, bytes(f.data), f.mode, f.owner, f.group)

    def put_file(self, path: str, local_path: Path, *, mode: int = 0o755,
                 sha256: str | None = None) -> None:
        self._reachable()
        path = check_abs(self.host, path)
        local_path = upload_source(f"host {self.host}", local_path)
        data = local_path.read_bytes()
        if sha256 and hashlib.sha256(data).hexdigest() != sha256.lower():
            raise TransportError(f"host {self.host}: sha256 mismatch for {path} after upload: "
                                 f"expected {sha256}, got {hashlib.sha256(data).hexdigest()}")
        with self._lock:
            self.log.append(FakeCall("put_file", path))
            self._write(path, data, mode, "root", "root")

    def _write(self, path: str, data: bytes, mode: int, owner: str, group: str) -> None:
        if path in self.fail_paths:
            raise TransportError(f"host {self.host}: cannot write {path}: Permission denied")
        d = posixpath.dirname(path)
        while d and d != "/":
            self.dirs.add(d)
            d = posixpath.dirname(d)
        self.fs[path] = FakeFile(data, mode, owner, group)

    def get(self, path: str) -> bytes | None:
        self._reachable()
        path = check_abs(self.host, path)
        with self._lock:
            self.log.append(FakeCall("get", path))
            f = self.fs.get(path)
        return None if f is None else f.data

    def get_file(self, path: str, local_path) -> int | None:
        return get_file_whole(self, path, local_path)

    def close(self) -> None:
        self.closed = True
        self.connected = False
