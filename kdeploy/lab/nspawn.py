"""The systemd-nspawn backend: Debian machines as containers booting systemd, each with its own
network namespace on a bridge that lives in a lab network namespace (see docs/lab.md and
/work/shared/lab-notes for why each option is there)."""
from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path

from kdeploy.errors import LabError
from kdeploy.lab import keys, prereq
from kdeploy.lab.backend import Backend, LabSpec, Log, MachineStatus
from kdeploy.lab.inventory import gateway
from kdeploy.lab.ops import HostOps
from kdeploy.lab.state import LabState, Machine, is_busy_error

CGROUP_TOP = "kdeploy-lab"
BRIDGE = "br0"
# Never let a caller's environment make nspawn write the HOST's /sys and sysctls, or switch the
# cgroup layout to pure v2 (no cpu/memory controllers on this kind of host).
ENV_UNSET = ["SYSTEMD_NSPAWN_API_VFS_WRITABLE", "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY",
             "SYSTEMD_NSPAWN_USE_CGNS"]


def nspawn_argv(netns: str, rootfs: str, unit: str, hostname: str, containerd_dir: str) -> list[str]:
    return [
        # nsenter, not `ip netns exec` (which remounts /sys and hides the host's cgroup mounts)
        "nsenter", f"--net=/run/netns/{netns}",
        "systemd-nspawn",
        "--boot",                          # systemd as PID 1
        "--register=no", "--keep-unit",    # host has no systemd/machined: stay in our own cgroups
        f"--network-bridge={BRIDGE}",      # own netns; veth host0 <-> vb-* on the lab bridge
        "--console=read-only",
        "--link-journal=no",
        "--capability=all",                # privileged pods / nested runc
        "--system-call-filter=@keyring",   # runc: "unable to join session keyring" without it
        "--bind=/dev/kmsg",                # kubelet's OOM watcher
        # containerd's overlayfs snapshotter cannot put an upperdir on the overlay root
        f"--bind={containerd_dir}:/var/lib/containerd",
        f"--hostname={hostname}",
        "-D", rootfs, "-M", unit,
    ]


class NspawnBackend(Backend):
    name = "nspawn"

    def __init__(self, ops: HostOps | None = None, poll: float = 0.2):
        self.ops = ops or HostOps()
        self.poll = poll

    def check_prerequisites(self) -> None:
        prereq.require_root()
        prereq.require("systemd-nspawn", "nsenter", "ip", "mount", "umount")

    # ------------------------------------------------------------------------------ up
    def up(self, spec: LabSpec, state: LabState, log: Log) -> None:
        rec = state.record
        assert rec is not None
        ops = self.ops
        gw = gateway(spec.subnet)
        prefix = spec.subnet.split("/")[1]

        state.will_create("netns", name=rec.netns)
        ops.netns_add(rec.netns, BRIDGE, f"{gw}/{prefix}")

        client_pub = Path(rec.key_file + ".pub").read_text().strip()
        hosts_file = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n" + "".join(
            f"{h.address} {h.name}\n" for h in spec.hosts)
        hier = ops.cgroup_hierarchies()
        known: list[str] = []
        for h in spec.hosts:
            mdir = Path(state.dir) / "machines" / h.name
            m = Machine(name=h.name, address=h.address, roles=list(h.roles),
                        unit=f"{rec.name}-{h.name}", dir=str(mdir))
            rec.machines.append(m)
            state.save()
            for sub in ("upper", "work", "rootfs", "containerd"):
                (mdir / sub).mkdir(parents=True, exist_ok=True)
            m.cgroups = self._make_cgroups(state, hier, rec.name, h.name)
            state.save()
            root = mdir / "rootfs"
            state.will_create("mount", path=str(root))
            ops.mount_overlay(rec.rootfs, str(mdir / "upper"), str(mdir / "work"), str(root))
            m.host_key_pub = self._customise(root, h.name, h.address, gw, prefix, client_pub, hosts_file)
            known.append(keys.known_hosts_line([h.name, h.address], m.host_key_pub))
            state.will_create("path", path=f"/run/systemd/nspawn/propagate/{m.unit}")
            state.save()
        Path(rec.known_hosts).write_text("\n".join(known) + "\n")

        t0 = time.monotonic()
        for m in rec.machines:
            cfg = {
                "argv": nspawn_argv(rec.netns, str(Path(m.dir) / "rootfs"), m.unit, m.name,
                                    str(Path(m.dir) / "containerd")),
                "cgroups": list(m.cgroups.values()),
                "pidfile": str(Path(m.dir) / "nspawn.pid"),
                "env_unset": ENV_UNSET,
            }
            cfgfile = Path(m.dir) / "launch.json"
            cfgfile.write_text(json.dumps(cfg, indent=1))
            pid = ops.spawn_supervisor(str(cfgfile), str(Path(m.dir) / "nspawn.log"))
            state.will_create("process", machine=m.name, pid=pid, start=ops.proc_start(pid))
        log(f"started {len(rec.machines)} machine(s); waiting for SSH")
        self._wait_ssh(state, spec.ssh_timeout, log, t0)

    def _make_cgroups(self, state: LabState, hier: dict[str, tuple[str, str]], lab: str,
                      machine: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, (mnt, own) in sorted(hier.items()):
            base = os.path.normpath(mnt + "/" + own.lstrip("/"))
            path = base
            for part in (CGROUP_TOP, lab, machine):
                parent, path = path, os.path.join(path, part)
                if not os.path.isdir(path):
                    state.will_create("cgroup", path=path)
                    self.ops.mkdir(path)
                if "cpuset" in key.split(","):  # a new cpuset cgroup starts with no cpus/mems
                    for f in ("cpuset.cpus", "cpuset.mems"):
                        cur = self.ops.read(os.path.join(path, f)).strip()
                        if not cur:
                            self.ops.write(os.path.join(path, f), self.ops.read(os.path.join(parent, f)))
            out[key or "unified"] = path
        return out

    def _customise(self, root: Path, name: str, address: str, gw: str, prefix: str,
                   client_pub: str, hosts_file: str) -> str:
        (root / "etc/hostname").write_text(name + "\n")
        (root / "etc/hosts").write_text(hosts_file)
        net = root / "etc/systemd/network"
        net.mkdir(parents=True, exist_ok=True)
        # Gateway: the bridge address in the lab netns (which routes nowhere). Kubernetes
        # components pick the node IP from the default route's interface.
        (net / "10-lab.network").write_text(
            f"[Match]\nName=host0\n\n[Network]\nAddress={address}/{prefix}\nGateway={gw}\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
        ssh = root / "root/.ssh"
        ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(ssh, 0o700)
        ak = ssh / "authorized_keys"
        ak.write_text(client_pub + "\n")
        os.chmod(ak, 0o600)
        priv, pub = keys.new_ed25519(f"root@{name}")
        kf = root / "etc/ssh/ssh_host_ed25519_key"
        fd = os.open(kf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(priv)
        Path(str(kf) + ".pub").write_text(pub + "\n")
        (root / "var/lib/containerd").mkdir(parents=True, exist_ok=True)
        return pub

    def _wait_ssh(self, state: LabState, timeout: float, log: Log, t0: float) -> None:
        rec = state.record
        pending = {m.name: m for m in rec.machines}
        deadline = time.monotonic() + timeout
        while pending:
            for name, m in list(pending.items()):
                if self.ops.ssh_banner(rec.netns, m.address, timeout=1.0):
                    log(f"  {name} ({m.address}) answers SSH after {time.monotonic() - t0:.1f}s")
                    del pending[name]
                elif not self._supervisor_alive(state, name):
                    raise LabError(f"machine {name} stopped while booting:\n  " + "\n  ".join(
                        self._log_tail(m)), f"see {Path(m.dir) / 'nspawn.log'}")
            if pending and time.monotonic() > deadline:
                raise LabError(f"machines {', '.join(sorted(pending))} do not answer SSH after {timeout:.0f}s",
                               f"see {state.dir}/machines/*/nspawn.log")
            if pending:
                time.sleep(self.poll)

    def _log_tail(self, m: Machine, n: int = 12) -> list[str]:
        try:
            return Path(m.dir, "nspawn.log").read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return []

    # ------------------------------------------------------------------------------ processes
    def _supervisors(self, state: LabState) -> dict[str, tuple[int, int | None]]:
        return {r["machine"]: (r["pid"], r.get("start")) for r in state.record.resources
                if r["kind"] == "process"}

    def _supervisor_alive(self, state: LabState, machine: str) -> bool:
        sup = self._supervisors(state).get(machine)
        return bool(sup) and self.ops.alive(*sup)

    def _nspawn_pid(self, m: Machine) -> int | None:
        try:
            pid = int(Path(m.dir, "nspawn.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if self.ops.alive(pid) else None

    def _stop_processes(self, state: LabState, log: Log, timeout: float) -> None:
        rec = state.record
        ops = self.ops
        sups = {n: s for n, s in self._supervisors(state).items() if ops.alive(*s)}
        nspawns = {m.name: p for m in rec.machines if (p := self._nspawn_pid(m))}
        # SIGTERM: the supervisor stops restarting; nspawn turns it into a clean poweroff
        for pid, _ in sups.values():
            ops.kill(pid, signal.SIGTERM)
        for pid in nspawns.values():
            ops.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        resend = time.monotonic() + 2.0
        while time.monotonic() < deadline and (
                any(ops.alive(p) for p in nspawns.values()) or any(ops.alive(*s) for s in sups.values())):
            time.sleep(self.poll)
            if time.monotonic() > resend:
                # a machine still early in boot has no handler yet for the poweroff signal
                # (SIGRTMIN+3) that nspawn forwards: ask again
                resend = time.monotonic() + 2.0
                for pid in nspawns.values():
                    if ops.alive(pid):
                        ops.kill(pid, signal.SIGTERM)
        for name, pid in nspawns.items():
            if ops.alive(pid):
                log(f"  {name}: no clean poweroff within {timeout:.0f}s, SIGKILL")
                ops.kill(pid, signal.SIGKILL)
        for pid, start in sups.values():
            if ops.alive(pid, start):
                ops.kill(pid, signal.SIGKILL)
        # whatever is left in the machines' cgroups (a crashed up, a killed nspawn's payload)
        # never the shared top dir: other labs' machines live below it
        dirs = [d for m in rec.machines for d in m.cgroups.values()] + [
            r["path"] for r in rec.resources
            if r["kind"] == "cgroup" and os.path.basename(r["path"]) != CGROUP_TOP]
        for _ in range(50):
            pids = {p for d in dirs for p in ops.cgroup_procs(d)}
            if not pids:
                break
            for p in pids:
                ops.kill(p, signal.SIGKILL)
            time.sleep(self.poll)
        else:
            raise LabError(f"processes {sorted(pids)} survive SIGKILL in the lab's cgroups",
                           "check them with ps; then run `kdeploy lab down` again")

    # ------------------------------------------------------------------------------ down
    def down(self, state: LabState, log: Log, timeout: float = 30.0) -> None:
        rec = state.record
        assert rec is not None
        ops = self.ops
        self._stop_processes(state, log, timeout)
        problems: list[str] = []
        for r in reversed(rec.resources):
            kind = r["kind"]
            try:
                if kind == "mount":
                    ops.umount(r["path"])
                elif kind == "cgroup":
                    self._rmdir_cgroup(r["path"])
                elif kind == "netns":
                    ops.netns_del(r["name"])
                elif kind == "path":
                    ops.rm_rf(r["path"])
            except (OSError, LabError) as e:
                problems.append(f"{kind} {r.get('path') or r.get('name')}: {e}")
        # the shared top dirs, whichever lab created them: removed once no lab is left in them
        tops = {os.path.dirname(os.path.dirname(d)) for m in rec.machines for d in m.cgroups.values()}
        for top in sorted(tops):
            if os.path.basename(top) == CGROUP_TOP:
                self._rmdir_cgroup(top)
        if problems:
            raise LabError("could not remove everything:\n  " + "\n  ".join(problems),
                           f"fix the cause and run `kdeploy lab down --name {rec.name}` again")

    def _rmdir_cgroup(self, path: str) -> None:
        if os.path.basename(path) == CGROUP_TOP:  # shared by all labs: only if it is empty
            try:
                os.rmdir(path)
            except OSError:
                pass
            return
        for i in range(20):
            try:
                self.ops.rmdir_tree(path)
                return
            except OSError as e:
                if e.errno == errno.ENOENT:
                    return
                if not is_busy_error(e):
                    raise
                if os.path.basename(path) == CGROUP_TOP or i == 19:
                    # the shared top dir may hold another lab's cgroups: leave it
                    if os.path.basename(path) == CGROUP_TOP:
                        return
                    raise
                time.sleep(self.poll)

    # ------------------------------------------------------------------------------ status
    def status(self, state: LabState) -> list[MachineStatus]:
        rec = state.record
        out = []
        netns_ok = self.ops.netns_exists(rec.netns)
        for m in rec.machines:
            pid = self._nspawn_pid(m)
            mem = None
            memdir = next((d for k, d in m.cgroups.items() if "memory" in k.split(",")), None)
            if memdir:
                try:
                    mem = int(self.ops.read(os.path.join(memdir, "memory.usage_in_bytes")))
                except (OSError, ValueError):
                    pass
            ssh = bool(pid) and netns_ok and self.ops.ssh_banner(rec.netns, m.address, timeout=1.0)
            out.append(MachineStatus(m.name, m.address, m.roles, "running" if pid else "stopped",
                                     ssh, pid, mem))
        return out
