"""AnsibleTransport: the Transport protocol over ansible-runner and playbooks/transport/.

    t = AnsibleTransport.from_cluster(cluster, "cp1").connect()
    t.run(["systemctl", "is-active", "kubelet"], check=False)
    t.put("/etc/kubernetes/pki/ca.key", key, mode=0o600)
    t.close()                        # removes the private data dir, ends the ssh master

One typed adapter around ansible_runner.run (nothing else in kdeploy imports ansible_runner):
  - every call runs one small playbook (run.yml, put.yml, get.yml) against a one-host inventory
    in a FRESH private data dir (0700) that is deleted when the call returns; the transport's
    own dir (0700: ansible.cfg, ssh ControlPath) is removed by close();
  - results are pushed by ansible-runner's event_handler (no polling of artifacts) and mapped to
    StepResult (host, task, status, rc, msg, duration); the handler returns False, so no event
    (which may hold command output or file contents) is ever written to disk;
  - every string kdeploy passes is base64 in an extravars JSON file, decoded by the playbooks:
    Ansible never templates a command or a path (a `{{` in a kubectl go-template stays literal);
  - stdin and put() data are written 0600 in the call's data dir and deleted right after the run;
    ANSIBLE_NO_TARGET_SYSLOG keeps module arguments (stdin!) out of the host's journal;
  - secret=True runs the command with no_log: true. no_log also censors what Ansible reports, so
    the command is wrapped to write rc/stdout/stderr to a private remote file (umask 077,
    noclobber, random name) read back by slurp and always removed; callers still get the output;
  - ssh settings come from Cluster.ssh_for(host), like SSHTransport: key file, known_hosts with
    StrictHostKeyChecking=yes (accept-new when strictHostKeyChecking: false: a new host's key is
    accepted and remembered, a changed one refused, as the ssh transport does), sudo -> become,
    netns -> ProxyCommand `python3 -m kdeploy.netns_proxy`, bastion -> ProxyCommand `ssh -W`;
    connections are reused between calls with an ssh ControlMaster private to this transport;
  - failures (unreachable, non-zero rc with check=True, module failure, timeout) raise
    TransportError("host <name> (<address>:<port>): ansible task '<task>': ..."), never a
    traceback; secret commands and their output are never put in messages.

Differences from SSHTransport (Ansible's, documented in docs/ansible.md): targets need python3;
stdout/stderr are text (the command module decodes them and strips trailing newlines; a secret
command's output is exact); every call starts ansible-playbook (seconds, not milliseconds).
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets as _secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from kdeploy.errors import KdeployError, TransportError
from kdeploy.transport.base import (
    upload_source, get_file_whole,
    CommandResult, check_abs, check_result, display, ssh_kwargs, stderr_tail,
)

log = logging.getLogger("kdeploy.transport.ansible")

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
UPLOAD_DIR = "/var/lib/kdeploy"   # apply: a step's binaries (one tar, 0600) until placed
# Debian's python3 on the targets; not "auto": discovery may pick a user's shim (pyenv) first
DEFAULT_REMOTE_PYTHON = "/usr/bin/python3"
# playbooks/ lives at the repo root; kdeploy/playbooks is a symlink to it, which wheels ship as
# package data (like kdeploy/templates)
PLAYBOOKS = Path(os.environ.get("KDEPLOY_PLAYBOOKS")
                 or Path(__file__).resolve().parent.parent / "playbooks")
CONTROL_PERSIST = "60s"
_FILE_NOT_FOUND = "File not found"


class _BinaryOutput(Exception):
    """run(): the command's output is not text; run again with the exact-bytes capture."""


# --- typed results ---------------------------------------------------------------------------

@dataclass(frozen=True)
class StepResult:
    """One task's outcome on one host, from an ansible-runner event. Holds no output: `msg` is
    Ansible's message (censored by no_log for secret tasks)."""
    host: str
    task: str
    status: str  # ok | changed | failed | unreachable | skipped
    rc: int | None = None
    msg: str = ""
    duration: float | None = None


@dataclass
class _Call:
    """What one playbook run produced: typed steps + the raw results (memory only)."""
    steps: list[StepResult] = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)  # task name -> last result
    status: str = ""
    rc: int | None = None
    stdout_tail: str = ""
    seconds: float = 0.0

    def step(self, task: str) -> StepResult | None:
        for s in reversed(self.steps):
            if s.task == task:
                return s
        return None

    def failed_step(self) -> StepResult | None:
        for s in self.steps:
            if s.status in ("failed", "unreachable"):
                return s
        return None


_EVENT_STATUS = {
    "runner_on_ok": "ok", "runner_on_failed": "failed", "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}


def event_to_step(event: Mapping[str, Any]) -> tuple[StepResult, dict] | None:
    """Map an ansible-runner event to (StepResult, raw result); None for other events. Pure."""
    kind = event.get("event")
    status = _EVENT_STATUS.get(kind)
    if status is None:
        return None
    data = event.get("event_data") or {}
    res = data.get("res") or {}
    if status == "failed" and data.get("ignore_errors"):
        status = "ok"
    if status == "ok" and res.get("changed"):
        status = "changed"
    rc = res.get("rc")
    msg = res.get("msg") or ""
    if "censored" in res:
        msg = "output hidden (no_log)"
    return (StepResult(host=str(data.get("host", "")), task=str(data.get("task", "")),
                       status=status, rc=rc if isinstance(rc, int) else None, msg=str(msg),
                       duration=data.get("duration")), res)


# --- pure builders: ssh args, inventory, extravars ------------------------------------------

def proxy_command(netns: str | None, bastion: Mapping | None, *, known_hosts: str,
                  strict: bool, python: str = sys.executable) -> str | None:
    """The ssh ProxyCommand for a netns and/or a bastion (None when neither is set)."""
    q = shlex.quote
    if bastion:
        addr, port = bastion["address"], int(bastion.get("port") or 22)
        argv = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={known_hosts}",
                "-o", f"StrictHostKeyChecking={'yes' if strict else 'accept-new'}",
                "-p", str(port), "-W", "%h:%p"]
        if bastion.get("key_file"):
            argv += ["-i", str(bastion["key_file"]), "-o", "IdentitiesOnly=yes"]
        if netns:  # the jump host itself is reached from inside the namespace
            inner = shlex.join([python, "-m", "kdeploy.netns_proxy", netns, addr, str(port)])
            argv += ["-o", f"ProxyCommand={inner}"]
        argv.append(f"{bastion.get('user') or 'root'}@{addr}")
        return " ".join(a if a == "%h:%p" else q(a) for a in argv)
    if netns:
        return f"{q(python)} -m kdeploy.netns_proxy {q(netns)} %h %p"
    return None


def ssh_common_args(*, known_hosts: str, strict: bool, netns: str | None = None,
                    bastion: Mapping | None = None, python: str = sys.executable) -> str:
    """ansible_ssh_common_args (Ansible shlex-splits it back into ssh's argv)."""
    args = ["-o", f"UserKnownHostsFile={known_hosts}",
            "-o", f"StrictHostKeyChecking={'yes' if strict else 'accept-new'}"]
    pc = proxy_command(netns, bastion, known_hosts=known_hosts, strict=strict, python=python)
    if pc:
        args += ["-o", f"ProxyCommand={pc}"]
    return shlex.join(args)


def inventory(host: str, address: str, *, user: str = "root", port: int = 22,
              key_file: str | None = None, known_hosts_file: str | None = None,
              strict_host_key_checking: bool = True, netns: str | None = None,
              bastion: Mapping | None = None, sudo: bool = False,
              python: str = sys.executable,
              python_interpreter: str = DEFAULT_REMOTE_PYTHON) -> dict:
    """The one-host Ansible inventory (YAML/JSON structure) of a host. Pure."""
    kh = os.path.expanduser(str(known_hosts_file or DEFAULT_KNOWN_HOSTS))
    hv: dict[str, Any] = {
        "ansible_host": address, "ansible_port": int(port), "ansible_user": user,
        "ansible_connection": "ssh",
        "ansible_ssh_common_args": ssh_common_args(known_hosts=kh, strict=strict_host_key_checking,
                                                   netns=netns, bastion=bastion, python=python),
        "ansible_python_interpreter": python_interpreter,
        "ansible_become": bool(sudo),
    }
    if key_file:
        hv["ansible_ssh_private_key_file"] = str(key_file)
    if sudo:
        hv.update(ansible_become_method="sudo", ansible_become_user="root")
    return {"all": {"hosts": {host: hv}}}


def capture_wrap(argv: Sequence[str], capture: str) -> list[str]:
    """Wrap argv so rc/stdout/stderr go to `capture` (private, noclobber) and the wrapper exits 0:
    line 1 rc, line 2 base64(stdout), line 3 base64(stderr)."""
    script = ('set -C; umask 077; f=$1; shift; "$@" >"$f.o" 2>"$f.e"; rc=$?; '
              '{ echo "$rc"; base64 -w0 "$f.o"; echo; base64 -w0 "$f.e"; echo; } >"$f"; '
              'rm -f "$f.o" "$f.e"')
    return ["sh", "-c", script, "sh", capture, *argv]


def parse_capture(data: bytes) -> tuple[int, bytes, bytes]:
    lines = data.decode("ascii").split("\n")
    return int(lines[0]), base64.b64decode(lines[1]), base64.b64decode(lines[2])


def b64_stdin_wrap(argv: Sequence[str]) -> list[str]:
    """argv reading its stdin base64-decoded (for binary input: the command module only takes
    text on stdin)."""
    return ["sh", "-c", 'base64 -d | "$@"', "sh", *argv]


def run_argv(cmd: str | Sequence[str]) -> list[str]:
    """The argv the command module runs: a string is `sh -c <script>` (as in every transport)."""
    if isinstance(cmd, str):
        return ["sh", "-c", cmd]
    argv = [str(a) for a in cmd]
    if not argv:
        raise ValueError("empty command")
    return argv


def sha256_validate(sha256: str) -> str:
    """copy's `validate` command (Python %-formatted by the module: %s = the temp file)."""
    if not all(c in "0123456789abcdef" for c in sha256) or len(sha256) != 64:
        raise ValueError(f"not a sha256: {sha256!r}")
    return ("sh -c '[ \"$(sha256sum < \"$1\" | cut -d\" \" -f1)\" = \"$2\" ]' sh %s " + sha256)


def _b64_tree(v):
    if isinstance(v, str):
        return base64.b64encode(v.encode("utf-8", "surrogateescape")).decode("ascii")
    if isinstance(v, (list, tuple)):
        return [_b64_tree(x) for x in v]
    if isinstance(v, dict):
        return {k: _b64_tree(x) for k, x in v.items()}
    return v


def dump_extravars(extravars: Mapping[str, Any]) -> str:
    """JSON for `-e @file`, every string base64-encoded (the playbooks `b64decode` them). Ansible
    templates extra vars (a `{{` in a kubectl go-template would be evaluated) and its YAML
    `!unsafe` tag turns "false" or "123" into a bool or an int; a filter's output is never
    templated again, so base64 is exact. Pure."""
    import json
    return json.dumps(_b64_tree(dict(extravars)), sort_keys=True)


def _write_private(path: Path, data: bytes | str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return path


def _path_env() -> str:
    """PATH with this interpreter's bin dir first: its ansible-playbook, not a (slow) shim."""
    here = str(Path(sys.executable).parent)
    rest = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p and p != here]
    return os.pathsep.join([here, *rest])


# --- the transport ---------------------------------------------------------------------------

class AnsibleTransport:
    def __init__(self, host: str, address: str, *, user: str = "root", port: int = 22,
                 key_file: str | os.PathLike | None = None,
                 known_hosts_file: str | os.PathLike | None = None,
                 strict_host_key_checking: bool = True, netns: str | None = None,
                 bastion: dict | None = None, sudo: bool | None = None,
                 connect_timeout: float = 10.0, control_persist: bool = True,
                 on_step: Callable[[StepResult], None] | None = None,
                 playbooks: str | os.PathLike | None = None,
                 python_interpreter: str = DEFAULT_REMOTE_PYTHON):
        self.host = host
        self.address = address
        self.user = user
        self.port = int(port)
        self.key_file = str(key_file) if key_file else None
        self.known_hosts_file = os.path.expanduser(str(known_hosts_file or DEFAULT_KNOWN_HOSTS))
        self.strict = strict_host_key_checking
        self.netns = netns
        self.bastion = bastion
        self.sudo = (user != "root") if sudo is None else sudo
        self.connect_timeout = connect_timeout
        self.control_persist = control_persist
        self.on_step = on_step
        self.playbooks = Path(playbooks) if playbooks else PLAYBOOKS
        self.python_interpreter = python_interpreter
        self.last_call_seconds: float | None = None
        self._root: Path | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()
        self._cancel = threading.Event()

    @classmethod
    def from_cluster(cls, cluster, host, **kw) -> "AnsibleTransport":
        """Build the transport of an inventory host (`host`: a Host or a name), with the same
        ssh settings SSHTransport.from_cluster resolves."""
        name, address, settings = ssh_kwargs(cluster, host)
        return cls(name, address, **settings, **kw)

    @staticmethod
    def group_of(transports) -> "AnsibleGroup":
        """kdeploy.transport.pool.group_of: these transports in one run per call."""
        return AnsibleGroup(transports)

    def __repr__(self) -> str:
        return f"AnsibleTransport({self.host!r}, {self.user}@{self.address}:{self.port})"

    @property
    def where(self) -> str:
        return f"host {self.host} ({self.address}:{self.port})"

    def _error(self, what: str, hint: str | None = None) -> TransportError:
        return TransportError(f"{self.where}: {what}", hint)

    # --- lifecycle -------------------------------------------------------------------------
    @property
    def data_root(self) -> Path | None:
        return self._root

    def _ensure_root(self) -> Path:
        with self._lock:
            if self._root is None:
                root = Path(tempfile.mkdtemp(prefix="kdeploy-ansible-"))  # 0700
                os.chmod(root, 0o700)
                (root / "cp").mkdir(mode=0o700)
                _write_private(root / "ansible.cfg", "# kdeploy: no user/site ansible.cfg\n")
                self._root = root
                # a transport never closed (crash, forgotten close) still leaves nothing behind
                self._finalizer = weakref.finalize(self, shutil.rmtree, str(root), True)
            return self._root

    def connect(self) -> "AnsibleTransport":
        """Check the host answers (one `true` through run.yml; also opens the ssh master)."""
        self.run(["true"], timeout=60)
        return self

    def close(self) -> None:
        with self._lock:
            root, self._root = self._root, None
            fin, self._finalizer = self._finalizer, None
        if root is None:
            return
        cp = root / "cp" / "cm"
        if cp.exists():  # end this transport's ssh ControlMaster now, not after ControlPersist
            try:
                subprocess.run(["ssh", "-F", "/dev/null", "-o", f"ControlPath={cp}", "-O", "exit",
                                "kdeploy-control-master"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
            except (OSError, subprocess.SubprocessError):
                pass
        shutil.rmtree(root, ignore_errors=True)
        if fin is not None:
            fin.detach()

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    def inventory(self) -> dict:
        return inventory(self.host, self.address, user=self.user, port=self.port,
                         key_file=self.key_file, known_hosts_file=self.known_hosts_file,
                         strict_host_key_checking=self.strict, netns=self.netns,
                         bastion=self.bastion, sudo=self.sudo,
                         python_interpreter=self.python_interpreter)

    def envvars(self, root: Path, call_dir: Path) -> dict[str, str]:
        ssh_args = "-o ServerAliveInterval=30"
        if self.control_persist:
            ssh_args = f"-o ControlMaster=auto -o ControlPersist={CONTROL_PERSIST} " + ssh_args
        return {
            "PATH": _path_env(),
            "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
            "ANSIBLE_HOST_KEY_CHECKING": "True",  # ours (ssh_common_args) decide; never overridden
            "ANSIBLE_SSH_ARGS": ssh_args,
            "ANSIBLE_SSH_CONTROL_PATH": str(root / "cp" / "cm"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(root / "cp"),
            "ANSIBLE_TIMEOUT": str(int(self.connect_timeout)),
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_NO_TARGET_SYSLOG": "True",
            "ANSIBLE_LOCAL_TEMP": str(call_dir / "tmp"),
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "True",
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
            "ANSIBLE_SYSTEM_WARNINGS": "False",
            "ANSIBLE_COMMAND_WARNINGS": "False",
            "ANSIBLE_GATHERING": "explicit",
        }

    # --- one playbook run ------------------------------------------------------------------
    def _play(self, playbook: str, extravars: dict, files: Mapping[str, bytes] | None = None,
              *, timeout: float | None = None) -> _Call:
        """Run playbooks/transport/<playbook> with extravars; `files` are written 0600 into the
        call's private data dir, their paths given as extravars of the same name. The data dir
        is removed before returning, whatever happens."""
        import ansible_runner

        if not (self.playbooks / "transport" / playbook).is_file():
            raise self._error(f"playbook {self.playbooks / 'transport' / playbook} is missing",
                              "reinstall kdeploy (its package ships playbooks/ as "
                              "kdeploy/playbooks) or point KDEPLOY_PLAYBOOKS at a copy")
        root = self._ensure_root()
        call_dir = Path(tempfile.mkdtemp(prefix="call-", dir=root))  # 0700
        call = _Call()
        t0 = time.monotonic()
        try:
            kd = call_dir / "kd"
            kd.mkdir(mode=0o700)
            (call_dir / "tmp").mkdir(mode=0o700)
            ev = dict(extravars)
            for name, data in (files or {}).items():
                ev[name] = str(_write_private(kd / name, data))
            _write_private(call_dir / "inventory.json", json.dumps(self.inventory()))
            _write_private(kd / "extravars.json", dump_extravars(ev))

            def handler(event: dict) -> bool:
                m = event_to_step(event)
                if m is not None:
                    step, res = m
                    call.steps.append(step)
                    call.results[step.task] = res
                    if self.on_step is not None:
                        try:
                            self.on_step(step)
                        except Exception:  # a listener must not break the transport
                            log.exception("on_step listener failed")
                return False  # never write events (command output, file contents) to disk

            try:
                r = ansible_runner.run(
                    private_data_dir=str(call_dir), project_dir=str(self.playbooks),
                    playbook=f"transport/{playbook}", inventory=str(call_dir / "inventory.json"),
                    cmdline=f"-e @{shlex.quote(str(kd / 'extravars.json'))}",
                    envvars=self.envvars(root, call_dir),
                    event_handler=handler, cancel_callback=self._cancel.is_set,
                    suppress_env_files=True, quiet=True, json_mode=False,
                    timeout=None if not timeout else int(timeout) + 60 + int(self.connect_timeout),
                    settings={"suppress_ansible_output": True})
            except KdeployError:
                raise
            except Exception as e:  # ansible-runner itself (config, missing binary)
                raise self._error(f"ansible-runner could not run {playbook}: "
                                  f"{type(e).__name__}: {e}") from None
            finally:
                for name in (files or {}):  # secrets: deleted right after the run
                    try:
                        os.unlink(kd / name)
                    except FileNotFoundError:
                        pass
            call.status, call.rc = r.status, r.rc
            if not call.steps or call.failed_step():
                call.stdout_tail = _tail(call_dir / "artifacts")
        finally:
            shutil.rmtree(call_dir, ignore_errors=True)
            call.seconds = time.monotonic() - t0
            self.last_call_seconds = call.seconds
            log.debug("%s: %s in %.2fs (%s)", self.where, playbook, call.seconds, call.status)
        return call

    def _fail(self, call: _Call, playbook: str, shown: str, *, secret: bool = False) -> TransportError:
        """The TransportError of a failed call: the failing task, Ansible's message, a hint."""
        step = call.failed_step()
        if step is None:
            what = f"ansible-playbook {playbook} failed ({call.status}, rc {call.rc}) before any task ran"
            if call.status == "timeout":
                what = f"ansible-playbook {playbook} timed out"
            tail = "" if secret else call.stdout_tail
            return self._error(what + (f" ({shown})" if shown else "") + ("\n" + tail if tail else ""),
                               "run with -v / check that ansible-core and ansible-runner work "
                               "(ansible-playbook --version)")
        msg = step.msg.strip()
        if step.status == "unreachable":
            return self._error(f"unreachable during ansible task '{step.task}': {msg}", _hint(msg, self))
        hint = None
        if "sudo" in msg.lower() and ("password" in msg.lower()):
            hint = ("kdeploy never types sudo passwords: give the ssh user passwordless sudo "
                    "(NOPASSWD), or connect as root")
        elif "Timeout" in msg or "expected time frame" in msg:
            msg = f"timed out ({msg})"
        return self._error(f"ansible task '{step.task}' failed: {msg}" + (f" ({shown})" if shown else ""),
                           hint)

    # --- Transport protocol ----------------------------------------------------------------
    def run(self, cmd: str | Sequence[str], *, input: bytes | None = None,
            timeout: float | None = 300, check: bool = True, secret: bool = False) -> CommandResult:
        try:
            return self._run(cmd, input=input, timeout=timeout, check=check, secret=secret)
        except _BinaryOutput:
            # the command module cannot return bytes that are not UTF-8 (an etcd value, a
            # snapshot): run it again with its output captured on the host and read back exact
            return self._run(cmd, input=input, timeout=timeout, check=check, secret=secret,
                             exact=True)

    def _run(self, cmd: str | Sequence[str], *, input: bytes | None, timeout: float | None,
             check: bool, secret: bool, exact: bool = False) -> CommandResult:
        shown = display(cmd, secret)
        argv = run_argv(cmd)
        files: dict[str, bytes] = {}
        if input:
            try:
                input.decode("utf-8")
                files["kd_stdin_file"] = input
            except UnicodeDecodeError:
                files["kd_stdin_file"] = base64.b64encode(input)
                argv = b64_stdin_wrap(argv)
        capture = ""
        if secret or exact:
            capture = f"/tmp/.kdeploy-out-{_secrets.token_hex(16)}"
            argv = capture_wrap(argv, capture)
        ev = {"kd_argv": argv, "kd_stdin_file": "", "kd_timeout": int(timeout or 0),
              "kd_no_log": bool(secret), "kd_capture": capture}
        log.debug("%s: run %s", self.where, shown)
        call = self._play("run.yml", ev, files, timeout=timeout)
        step, bad = call.step("run"), call.failed_step()
        res = call.results.get("run") or {}
        command_failed = (step is not None and step.status == "failed" and not secret
                          and isinstance(res.get("rc"), int) and bad is step)
        if (not secret and not exact and bad is not None
                and "surrogates not allowed" in (bad.msg or "")):
            raise _BinaryOutput()
        if step is None or (bad is not None and not command_failed):
            raise self._fail(call, "run.yml", shown, secret=secret)
        if secret or exact:
            got = call.results.get("read captured output") or {}
            try:
                rc, out, err = parse_capture(base64.b64decode(got.get("content", "")))
            except (ValueError, IndexError, UnicodeDecodeError):
                raise self._error(f"ansible task 'read captured output': unreadable result ({shown})") from None
        else:
            rc = res["rc"] if isinstance(res.get("rc"), int) else 0
            out = str(res.get("stdout", "")).encode("utf-8", "surrogateescape")
            err = str(res.get("stderr", "")).encode("utf-8", "surrogateescape")
            msg = str(res.get("msg") or "")
            if rc == 2 and not out and not err and ("[Errno 2]" in msg or "Error executing" in msg):
                # the command module could not exec argv[0]: say what a shell would (127)
                rc, err = 127, f"{argv[0]}: command not found or not executable ({msg})".encode()
        result = CommandResult(shown, rc, out, err)
        if check and result.rc != 0:
            try:
                # a secret command's stdout may be the secret: only stderr goes in the error
                check_result(self.host, CommandResult(shown, rc, b"", err) if secret else result,
                             sudo=self.sudo)
            except TransportError as e:
                raise TransportError(e.message.replace(f"host {self.host}: ",
                                                       f"{self.where}: ansible task 'run': ", 1),
                                     e.hint) from None
        return result

    def put(self, path: str, data: bytes, *, mode: int = 0o644, owner: str = "root",
            group: str = "root") -> None:
        path = check_abs(self.host, path)
        log.debug("%s: put %s (%d bytes, %04o %s:%s)", self.where, path, len(data), mode, owner, group)
        # contents never travel as task arguments (copy src is a file), so they never show in
        # results; a private file (no world read) is treated as a secret all the same
        self._put(path, {"kd_src": bytes(data)}, None, mode=mode, owner=owner, group=group,
                  secret=not (mode & 0o004), sha256=hashlib.sha256(data).hexdigest())

    def put_file(self, path: str, local_path: Path, *, mode: int = 0o755,
                 sha256: str | None = None) -> None:
        path = check_abs(self.host, path)
        local_path = upload_source(self.where, local_path)
        if sha256:
            sha256 = sha256.lower()
            h = hashlib.sha256()
            with open(local_path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            if h.hexdigest() != sha256:
                raise TransportError(f"local file {local_path} does not match its sha256: "
                                     f"expected {sha256}, got {h.hexdigest()}",
                                     "the artifact cache is corrupt: delete the file and fetch it again")
        log.debug("%s: put_file %s -> %s", self.where, local_path, path)
        self._put(path, None, str(local_path.resolve()), mode=mode, owner="root", group="root",
                  secret=False, sha256=sha256)

    def _put(self, path: str, files: dict | None, src: str | None, *, mode: int, owner: str,
             group: str, secret: bool, sha256: str | None) -> None:
        ev = {"kd_dest": path, "kd_mode": f"{mode:04o}", "kd_owner": owner, "kd_group": group,
              "kd_no_log": secret, "kd_validate": sha256_validate(sha256) if sha256 else ""}
        if src is not None:
            ev["kd_src"] = src
        call = self._play("put.yml", ev, files)
        if call.failed_step() is not None or call.step("copy") is None:
            err = self._fail(call, "put.yml", f"put {path}")
            if "failed to validate" in err.message.lower():
                raise self._error(f"sha256 mismatch for {path} after upload (expected {sha256})",
                                  "the upload was corrupted in transit; retry")
            raise err

    def get_file(self, path: str, local_path: Path) -> int | None:
        # TODO(issue 12): the fetch module, streamed; today whole through get.yml
        return get_file_whole(self, path, local_path)

    def get(self, path: str) -> bytes | None:
        path = check_abs(self.host, path)
        call = self._play("get.yml", {"kd_path": path})
        step = call.failed_step()
        if step is not None and step.status == "failed" and step.msg.startswith(_FILE_NOT_FOUND):
            return None
        if step is not None or call.step("get") is None:
            raise self._fail(call, "get.yml", f"get {path}")
        return base64.b64decode(call.results["get"].get("content", ""))


def _tail(artifacts: Path) -> str:
    try:
        outs = sorted(artifacts.glob("*/stdout"), key=lambda p: p.stat().st_mtime)
        if not outs:
            return ""
        return stderr_tail(outs[-1].read_bytes())
    except OSError:
        return ""


def _hint(msg: str, t: AnsibleTransport) -> str | None:
    low = msg.lower()
    if "host key verification failed" in low or "remote host identification has changed" in low:
        return (f"the host key of {t.address}:{t.port} is unknown or changed in {t.known_hosts_file}: "
                f"add it after checking its fingerprint (ssh-keyscan -p {t.port} {t.address}), or "
                "opt out explicitly with ssh.strictHostKeyChecking: false in the inventory")
    if "permission denied" in low:
        return (f"check ssh.user and ssh.keyFile ({t.key_file or 'no key file: ssh agent only'}); "
                "the public key must be in the user's ~/.ssh/authorized_keys")
    if "kdeploy.netns_proxy" in msg:
        return "is the lab up? see `kdeploy lab status`"
    return ("check that the machine is up, the address and port are right and sshd runs"
            + (f" (connecting from network namespace {t.netns})" if t.netns else ""))


def ansible_factory(cluster, host) -> AnsibleTransport:
    """kdeploy.transport.pool factory: a checked AnsibleTransport (raises TransportError)."""
    t = AnsibleTransport.from_cluster(cluster, host)
    try:
        return t.connect()
    except BaseException:
        t.close()
        raise


# --- many hosts in one run: facts, and the engine's batch hook ---------------------------------

class AnsibleGroup:
    """Several AnsibleTransports driven by ONE ansible-runner run per call (hosts in parallel,
    Ansible forks): `run_many` (the facts script on every host) and `apply` (the engine's batch
    hook, kdeploy.execute.batch.BatchApplier: a step's work on every host of a batch).

    Same properties as the single-host calls: a fresh private data dir (0700) per run, removed
    when it returns; per-host data as 0600 files there, deleted right after the run; every
    string base64 in the (JSON) inventory's host vars; no event written to disk; each host's
    own ssh ControlMaster (opened by its transport's connect) reused."""

    def __init__(self, transports: Mapping[str, "AnsibleTransport"]):
        if not transports or not all(isinstance(t, AnsibleTransport) for t in transports.values()):
            raise TypeError("AnsibleGroup needs AnsibleTransports")
        self.t = dict(transports)
        self._root: Path | None = None
        self._lock = threading.Lock()
        self.last_call_seconds: float | None = None

    @classmethod
    def of(cls, transports: Mapping[str, Any]) -> "AnsibleGroup | None":
        """The group of these transports, or None unless every one is an AnsibleTransport."""
        if transports and all(isinstance(t, AnsibleTransport) for t in transports.values()):
            return cls(transports)
        return None

    def close(self) -> None:
        with self._lock:
            root, self._root = self._root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def __del__(self):  # a group never closed leaves nothing behind
        try:
            self.close()
        except Exception:
            pass

    def _ensure_root(self) -> Path:
        with self._lock:
            if self._root is None:
                root = Path(tempfile.mkdtemp(prefix="kdeploy-ansible-group-"))
                os.chmod(root, 0o700)
                _write_private(root / "ansible.cfg", "# kdeploy: no user/site ansible.cfg\n")
                self._root = root
            return self._root

    def inventory(self, hostvars: Mapping[str, Mapping[str, Any]]) -> dict:
        """The hosts' inventory (their transports' connection vars, each host's own ssh
        ControlPath) with `hostvars` (base64) added. Pure but for the transports' data dirs."""
        hosts: dict[str, Any] = {}
        for name, hv in hostvars.items():
            t = self.t[name]
            entry = dict(t.inventory()["all"]["hosts"][name])
            if t.control_persist:
                entry["ansible_control_path"] = str(t._ensure_root() / "cp" / "cm")
            entry.update(_b64_tree(dict(hv)))
            hosts[name] = entry
        return {"all": {"hosts": hosts}}

    def play(self, playbook: str, hostvars: Mapping[str, Mapping[str, Any]],
             files: Mapping[str, Mapping[str, bytes]] | None = None, *,
             on_event: Callable[[dict], None] | None = None,
             cancel: Callable[[], bool] | None = None) -> dict[str, _Call]:
        """Run playbooks/transport/<playbook> on the hosts of `hostvars`; `files[host][name]`
        are written 0600 into the run's private data dir and given as host var `name`.
        {host: _Call} (steps and results of that host)."""
        import ansible_runner

        first = next(iter(self.t.values()))
        pb = first.playbooks / "transport" / playbook
        if not pb.is_file():
            raise TransportError(f"playbook {pb} is missing",
                                 "reinstall kdeploy (its package ships playbooks/ as "
                                 "kdeploy/playbooks) or point KDEPLOY_PLAYBOOKS at a copy")
        root = self._ensure_root()
        call_dir = Path(tempfile.mkdtemp(prefix="call-", dir=root))  # 0700
        calls = {h: _Call() for h in hostvars}
        t0 = time.monotonic()
        written: list[Path] = []
        try:
            kd = call_dir / "kd"
            kd.mkdir(mode=0o700)
            (call_dir / "tmp").mkdir(mode=0o700)
            hv_all: dict[str, dict] = {}
            for i, (h, hv) in enumerate(hostvars.items()):
                hv = dict(hv)
                for name, data in ((files or {}).get(h) or {}).items():
                    p = _write_private(kd / f"{i}-{name}", data)
                    written.append(p)
                    hv[name] = str(p)
                hv_all[h] = hv
            _write_private(call_dir / "inventory.json", json.dumps(self.inventory(hv_all)))

            def handler(event: dict) -> bool:
                if on_event is not None:
                    try:
                        on_event(event)
                    except Exception:
                        log.exception("on_event listener failed")
                m = event_to_step(event)
                if m is not None:
                    step, res = m
                    c = calls.get(step.host)
                    if c is not None:
                        c.steps.append(step)
                        c.results[step.task] = res
                        t = self.t.get(step.host)
                        if t is not None and t.on_step is not None:
                            try:
                                t.on_step(step)
                            except Exception:
                                log.exception("on_step listener failed")
                return False  # never write events (command output, file contents) to disk

            env = first.envvars(root, call_dir)
            env["ANSIBLE_FORKS"] = str(max(1, min(32, len(hostvars))))
            try:
                r = ansible_runner.run(
                    private_data_dir=str(call_dir), project_dir=str(first.playbooks),
                    playbook=f"transport/{playbook}", inventory=str(call_dir / "inventory.json"),
                    envvars=env, event_handler=handler,
                    cancel_callback=cancel or (lambda: False),
                    suppress_env_files=True, quiet=True, json_mode=False,
                    settings={"suppress_ansible_output": True})
            except Exception as e:  # ansible-runner itself (config, missing binary)
                raise TransportError(f"ansible-runner could not run {playbook} on "
                                     f"{', '.join(hostvars)}: {type(e).__name__}: {e}") from None
            finally:
                for p in written:  # secrets: deleted right after the run
                    try:
                        os.unlink(p)
                    except FileNotFoundError:
                        pass
            tail = ""
            if any(not c.steps or c.failed_step() for c in calls.values()):
                tail = _tail(call_dir / "artifacts")
            for c in calls.values():
                c.status, c.rc, c.stdout_tail = r.status, r.rc, tail
        finally:
            shutil.rmtree(call_dir, ignore_errors=True)
            self.last_call_seconds = time.monotonic() - t0
            for c in calls.values():
                c.seconds = self.last_call_seconds
            log.debug("%s on %d host(s) in %.2fs", playbook, len(hostvars), self.last_call_seconds)
        return calls

    # --- many commands ------------------------------------------------------------------------
    def run_many(self, cmds: Mapping[str, str | Sequence[str]], *, timeout: float | None = 300
                 ) -> dict[str, CommandResult | TransportError]:
        """One (non-secret, no stdin) command per host, all in one run: {host: result or the
        TransportError of that host}. Exit codes are results, not errors."""
        hv = {h: {"kd_argv": run_argv(c), "kd_stdin_file": "", "kd_timeout": int(timeout or 0),
                  "kd_no_log": False, "kd_capture": ""} for h, c in cmds.items()}
        calls = self.play("run.yml", hv)
        out: dict[str, CommandResult | TransportError] = {}
        for h, call in calls.items():
            t = self.t[h]
            shown = display(cmds[h])
            step, bad = call.step("run"), call.failed_step()
            res = call.results.get("run") or {}
            if step is None or (bad is not None and not (bad is step and isinstance(res.get("rc"), int))):
                out[h] = t._fail(call, "run.yml", shown)
                continue
            out[h] = CommandResult(shown, res["rc"] if isinstance(res.get("rc"), int) else 0,
                                   str(res.get("stdout", "")).encode("utf-8", "surrogateescape"),
                                   str(res.get("stderr", "")).encode("utf-8", "surrogateescape"))
        return out

    # --- the engine's batch hook -------------------------------------------------------------
    def apply(self, work: Mapping[str, Any], *, emit: Callable[[dict], None] = lambda e: None,
              stop: Callable[[], bool] = lambda: False, step: str = "") -> dict[str, str]:
        """kdeploy.execute.batch.BatchApplier: every host's HostWork in ONE run of apply.yml.
        {host: error} of the hosts that failed."""
        first = next(iter(self.t.values()))
        source = (first.playbooks / "transport" / "apply.py").read_text()
        hostvars, files, tars = {}, {}, {}
        for h, w in work.items():
            hostvars[h], files[h], members = apply_vars(w, source)
            if members:
                tars.setdefault(tuple(members), []).append(h)
        gate_of = {h: w.gates for h, w in work.items()}
        tar_dir = Path(tempfile.mkdtemp(prefix="tar-", dir=self._ensure_root())) if tars else None
        try:
            for i, (members, hosts) in enumerate(tars.items()):
                path = tar_dir / f"{i}.tar"
                write_tar(path, members)
                for h in hosts:
                    hostvars[h]["kd_tar"] = str(path)
            return self._apply(work, hostvars, files, gate_of, emit=emit, stop=stop, step=step)
        finally:
            if tar_dir is not None:
                shutil.rmtree(tar_dir, ignore_errors=True)

    def _apply(self, work, hostvars, files, gate_of, *, emit, stop, step) -> dict[str, str]:

        def on_event(event: dict) -> None:
            if event.get("event") != "runner_on_start":
                return
            d = event.get("event_data") or {}
            h, task = str(d.get("host", "")), str(d.get("task", ""))
            if task == "gates":
                for g in gate_of.get(h, ()):
                    emit({"event": "gate", "host": h, "phase": step, "what": g.what})
            elif task in ("binaries", "ops"):
                emit({"event": "ansible-task", "host": h, "phase": step, "task": task})

        calls = self.play("apply.yml", hostvars, files, on_event=on_event, cancel=stop)
        failed: dict[str, str] = {}
        for h, call in calls.items():
            bad = call.failed_step()
            if bad is None and call.steps:
                continue
            if bad is not None and bad.task in ("ops", "gates"):
                msg = _applier_error(call.results.get(bad.task) or {})
                if msg:
                    failed[h] = f"{self.t[h].where}: {msg}"
                    continue
            if bad is None and stop():
                failed[h] = f"{self.t[h].where}: interrupted"
                continue
            failed[h] = self.t[h]._fail(call, "apply.yml", f"step {step}").message
        return failed


def _applier_error(res: Mapping) -> str:
    """The error apply.py printed (its last JSON line), '' when there is none."""
    for line in reversed(str(res.get("stdout", "")).splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict) and d.get("ok") is False:
                return str(d.get("error", ""))
    return ""


def write_tar(path: Path, members: Sequence[tuple[str, str]]) -> None:
    """An uncompressed tar (0600) of local files under the given member names."""
    import tarfile
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w:", format=tarfile.GNU_FORMAT) as tar:
        for name, local in members:
            try:
                ti = tar.gettarinfo(local, arcname=name)
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = "root"
                with open(local, "rb") as src:
                    tar.addfile(ti, src)
            except OSError as e:
                raise TransportError(f"local file to upload not readable: {local} ({e.strerror})",
                                     "check the artifact directory (kdeploy artifacts verify DIR)") from None


def applier_script(source: str, bundle: Mapping) -> bytes:
    """apply.py with its BUNDLE appended (base64 JSON: no quoting issue, never templated)."""
    data = base64.b64encode(json.dumps(bundle).encode()).decode("ascii")
    return (source.rstrip("\n") + f'\n\nBUNDLE = json.loads(base64.b64decode("{data}"))\n'
            "sys.exit(main(BUNDLE))\n").encode()


def apply_vars(w, source: str) -> tuple[dict, dict[str, bytes], list[tuple[str, str]]]:
    """(host vars, private files, tar members) of a kdeploy.execute.batch.HostWork for
    apply.yml. The ops script holds file contents (secrets too): it only ever travels as a
    0600 file. Tar members: (name, local artifact) of the binaries, in the ops' order."""
    ops = []
    members: list[tuple[str, str]] = []
    for o in w.ops:
        d: dict[str, Any] = {"kind": o.kind}
        if o.kind == "binary":
            member = str(len(members))
            members.append((member, str(Path(o.local_path).resolve())))
            d.update(path=o.path, member=member, sha256=o.sha256, mode=o.mode)
            ops.append(d)
            continue
        if o.kind in ("file", "mode", "block"):
            d["path"] = o.path
        if o.kind in ("file", "block"):
            d["content"] = base64.b64encode(o.content).decode("ascii")
        if o.kind in ("file", "mode"):
            d.update(mode=o.mode, owner=o.owner, group=o.group)
        if o.kind == "block":
            d.update(begin=o.begin, end=o.end)
        if o.kind == "run":
            d.update(argv=list(o.argv), timeout=o.timeout, check=o.check, key=o.key, lock=o.lock)
        ops.append(d)
    from kdeploy.execute.journal import PATH as JOURNAL
    files: dict[str, bytes] = {}
    tar_dest = f"{UPLOAD_DIR}/.upload-{_secrets.token_hex(8)}.tar" if members else ""
    if ops or w.journal_add:
        files["kd_ops"] = applier_script(source, {
            "mode": "ops", "ops": ops, "tar": tar_dest,
            "journal": {"path": JOURNAL, "add": sorted(w.journal_add),
                        "done": sorted(w.journal_done), "known": sorted(w.known)}})
    if w.gates:
        files["kd_gates"] = applier_script(source, {
            "mode": "gates",
            "gates": [{"cmd": g.cmd, "timeout": g.timeout, "what": g.what} for g in w.gates]})
    hv = {"kd_ops": "", "kd_gates": "", "kd_tar": "", "kd_tar_dest": tar_dest}
    return hv, files, members


def _connect_many(cluster, hosts) -> tuple[dict[str, AnsibleTransport], dict[str, KdeployError]]:
    """kdeploy.transport.pool.connect_each for ansible_factory: every host checked with ONE run
    (`true` on each; it also opens each host's ssh ControlMaster)."""
    ts = {}
    for h in hosts:
        t = AnsibleTransport.from_cluster(cluster, h)
        ts[t.host] = t
    ok: dict[str, AnsibleTransport] = {}
    failed: dict[str, KdeployError] = {}
    try:
        res = AnsibleGroup(ts).run_many({h: ["true"] for h in ts}, timeout=60)
    except BaseException:
        for t in ts.values():
            t.close()
        raise
    for h, r in res.items():
        if isinstance(r, KdeployError) or r.rc != 0:
            failed[h] = r if isinstance(r, KdeployError) else ts[h]._error(
                f"`true` exited {r.rc}", "check the ssh user's shell")
            ts[h].close()
        else:
            ok[h] = ts[h]
    return ok, failed


ansible_factory.connect_many = _connect_many
