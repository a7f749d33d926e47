"""`kdeploy lab up | status | ssh | down` as functions (the CLI and the tests call these)."""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from kdeploy.errors import LabError
from kdeploy.lab import inventory as inv
from kdeploy.lab import keys, prereq
from kdeploy.lab.backend import Backend, LabSpec, MachineStatus, get_backend
from kdeploy.lab.rootfs import ensure_rootfs
from kdeploy.lab.state import LabRecord, LabState, list_labs

DEFAULT_NAME = "lab"
Log = Callable[[str], None]


def netns_name(lab: str) -> str:
    return f"kdeploy-{lab}"


@contextmanager
def _no_interrupts():
    """Let cleanup finish: a second Ctrl-C (or SIGTERM) while we undo things is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _machines_alive(backend: Backend, state: LabState) -> bool:
    try:
        return any(s.state == "running" for s in backend.status(state))
    except Exception:
        return False


# Container machines share the host kernel and its per-user inotify limits: every machine's
# systemd, containerd and kubelet take instances from one pool (root's), and the default 128
# runs out with a few machines ("too many open files" from fsnotify; containerd's CRI fails
# to load). kind asks its users to raise the same two sysctls. Only ever raised, never lowered.
HOST_LIMITS = {"fs/inotify/max_user_instances": 8192, "fs/inotify/max_user_watches": 524288}


def raise_host_limits(log: Log = print, proc: Path = Path("/proc/sys")) -> dict[str, int]:
    changed = {}
    for key, want in HOST_LIMITS.items():
        f = proc / key
        try:
            have = int(f.read_text().split()[0])
            if have < want:
                f.write_text(f"{want}\n")
                changed[key.replace("/", ".")] = want
                log(f"host: {key.replace('/', '.')} {have} -> {want} (container machines share it)")
        except (OSError, ValueError) as e:
            raise LabError(f"cannot raise the host's {key.replace('/', '.')} to {want}: {e}",
                           f"run: sysctl -w {key.replace('/', '.')}={want}") from None
    return changed


def up(*, name: str = DEFAULT_NAME, masters: int = 1, workers: int = 2, output: str | os.PathLike,
       backend: str | Backend = "nspawn", subnet: str = inv.DEFAULT_SUBNET, log: Log = print,
       ssh_timeout: float = 180.0, root: Path | None = None) -> dict:
    """Bring a lab up and write its inventory to `output`. Returns timings and paths."""
    hosts = inv.topology(masters, workers, subnet)
    be = get_backend(backend) if isinstance(backend, str) else backend
    be.check_prerequisites()
    state = LabState(name, root)
    state.acquire("up")
    try:
        if state.exists():
            rec = state.load()
            what = "is up" if rec.phase == "up" and _machines_alive(be, state) else \
                "has leftovers from an earlier run (crashed or stopped machines)"
            raise LabError(f"lab '{name}' {what} (state: {state.dir})",
                           f"run `kdeploy lab down --name {name}` first, or use another --name")
        result: dict = {}
        if be.name == "nspawn":
            raise_host_limits(log)
        rootfs, built = ensure_rootfs(log=log) if be.name == "nspawn" else (Path("/nonexistent"), None)
        result["rootfs_build_s"] = built
        out = Path(output).absolute()
        if not out.parent.is_dir():
            raise LabError(f"cannot write the inventory: directory {out.parent} does not exist")
        state.dir.mkdir(parents=True, exist_ok=True)
        state.record = LabRecord(
            name=name, backend=be.name, netns=netns_name(name), bridge="br0", subnet=subnet,
            gateway=inv.gateway(subnet), rootfs=str(rootfs), key_file=str(state.dir / "id_ed25519"),
            known_hosts=str(state.dir / "known_hosts"), inventory=str(out))
        state.save()
        t0 = time.monotonic()
        try:
            keys.write_key_pair(Path(state.record.key_file), f"kdeploy-lab-{name}")
            be.up(LabSpec(name=name, hosts=hosts, subnet=subnet, ssh_timeout=ssh_timeout), state, log)
        except BaseException as e:
            with _no_interrupts():
                log(f"lab up failed ({type(e).__name__}); removing what was started ...")
                try:
                    be.down(state, log, timeout=10)
                    state.remove_dir()
                except Exception as e2:  # keep the state so `lab down` can retry
                    log(f"cleanup incomplete: {e2}; run `kdeploy lab down --name {name}`")
            raise
        result["up_to_ssh_s"] = time.monotonic() - t0
        out.write_text(inv.render(name=name, hosts=hosts, key_file=state.record.key_file,
                                  known_hosts=state.record.known_hosts, netns=state.record.netns))
        state.record.phase = "up"
        state.save()
        result.update(inventory=str(out), state_dir=str(state.dir), netns=state.record.netns,
                      key_file=state.record.key_file, known_hosts=state.record.known_hosts,
                      machines=[asdict(m) for m in state.record.machines])
        return result
    finally:
        state.release()


def down(*, name: str = DEFAULT_NAME, log: Log = print, timeout: float = 30.0,
         root: Path | None = None, backend: Backend | None = None) -> float:
    """Stop the lab and remove everything it created. Returns seconds taken."""
    state = LabState(name, root)
    if not state.exists():
        raise LabError(f"no lab named '{name}' is up", "see `kdeploy lab status` for the labs there are")
    state.acquire("down")
    try:
        rec = state.load()
        be = backend or get_backend(rec.backend)
        be.check_prerequisites()
        t0 = time.monotonic()
        with _no_interrupts():
            be.down(state, log, timeout=timeout)
            state.remove_dir()
        return time.monotonic() - t0
    finally:
        state.release()


def status(*, name: str | None = None, root: Path | None = None,
           backend: Backend | None = None) -> list[dict]:
    names = [name] if name else list_labs(root)
    out = []
    for n in names:
        state = LabState(n, root)
        rec = state.load()
        be = backend or get_backend(rec.backend)
        machines: list[MachineStatus] = be.status(state)
        out.append({"name": n, "backend": rec.backend, "phase": rec.phase, "netns": rec.netns,
                    "inventory": rec.inventory, "state_dir": str(state.dir),
                    "key_file": rec.key_file, "known_hosts": rec.known_hosts,
                    "machines": [asdict(m) for m in machines]})
    return out


def ssh_argv(*, name: str, machine: str, command: list[str] | None = None,
             root: Path | None = None, tty: bool | None = None) -> list[str]:
    prereq.require("nsenter", "ssh")
    state = LabState(name, root)
    rec = state.load()
    m = next((m for m in rec.machines if m.name == machine), None)
    if m is None:
        raise LabError(f"lab '{name}' has no machine {machine!r}",
                       f"machines: {', '.join(x.name for x in rec.machines)}")
    argv = ["nsenter", f"--net=/run/netns/{rec.netns}", "ssh", "-i", rec.key_file,
            "-o", f"UserKnownHostsFile={rec.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
            "-o", f"HostKeyAlias={m.name}"]
    if tty or (tty is None and not command):
        argv.append("-t")
    argv.append(f"root@{m.address}")
    if command:
        argv += command
    return argv
