"""Host operations the lab backends use. One class so unit tests can swap in a fake."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from kdeploy.errors import LabError
from kdeploy.netns import connect_in_netns


def _run(argv: list[str], what: str) -> None:
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if p.returncode != 0:
        raise LabError(f"{what} failed: {' '.join(argv)}: {p.stderr.strip() or p.stdout.strip()}",
                       "run `kdeploy lab down` to clean up, then retry")


class HostOps:
    # --- cgroups ------------------------------------------------------------------------
    def cgroup_hierarchies(self) -> dict[str, tuple[str, str]]:
        """hierarchy key -> (mount point, this process's cgroup path in it).

        Keys: a v1 controller list as in /proc/self/cgroup ("cpu", "memory", "name=systemd"),
        or "" for the cgroup2 hierarchy.
        """
        own: dict[str, str] = {}
        for ln in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = ln.split(":", 2)
            own[ctrls] = path
        out: dict[str, tuple[str, str]] = {}
        for ln in Path("/proc/self/mounts").read_text().splitlines():
            dev, mnt, fstype, opts = ln.split()[:4]
            if fstype == "cgroup2":
                out.setdefault("", (mnt, own.get("", "/")))
            elif fstype == "cgroup":
                for key in own:
                    if key and set(key.split(",")) <= set(opts.split(",")):
                        out.setdefault(key, (mnt, own[key]))
        return out

    def mkdir(self, path: str) -> bool:
        """mkdir; False if it already existed."""
        try:
            os.mkdir(path)
            return True
        except FileExistsError:
            return False

    def write(self, path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    def read(self, path: str) -> str:
        with open(path) as f:
            return f.read()

    def cgroup_procs(self, path: str) -> list[int]:
        pids: list[int] = []
        for dirpath, _, files in os.walk(path):
            if "cgroup.procs" in files:
                try:
                    pids += [int(x) for x in Path(dirpath, "cgroup.procs").read_text().split()]
                except OSError:
                    pass
        return pids

    def rmdir_tree(self, path: str) -> None:
        """Remove a cgroup directory and its sub-cgroups (bottom-up; cgroupfs only allows rmdir)."""
        if not os.path.isdir(path):
            return
        for dirpath, dirnames, _ in os.walk(path, topdown=False):
            os.rmdir(dirpath)

    def rm_rf(self, path: str) -> None:
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        elif os.path.isdir(path):
            shutil.rmtree(path)

    # --- network namespace ------------------------------------------------------------------
    def netns_exists(self, name: str) -> bool:
        return os.path.exists(f"/run/netns/{name}")

    def netns_add(self, name: str, bridge: str, gateway_cidr: str) -> None:
        _run(["ip", "netns", "add", name], "creating the lab network namespace")
        _run(["ip", "-n", name, "link", "set", "lo", "up"], "lab netns: lo up")
        _run(["ip", "-n", name, "link", "add", bridge, "type", "bridge"], "lab netns: bridge")
        _run(["ip", "-n", name, "addr", "add", gateway_cidr, "dev", bridge], "lab netns: bridge address")
        _run(["ip", "-n", name, "link", "set", bridge, "up"], "lab netns: bridge up")

    def netns_del(self, name: str) -> None:
        if self.netns_exists(name):
            _run(["ip", "netns", "del", name], "deleting the lab network namespace")

    def bridge_exists(self, netns: str, bridge: str) -> bool:
        if not self.netns_exists(netns):
            return False
        return subprocess.run(["ip", "-n", netns, "link", "show", bridge], capture_output=True).returncode == 0

    # --- mounts -------------------------------------------------------------------------
    def is_mounted(self, target: str) -> bool:
        t = os.path.realpath(target)
        for ln in Path("/proc/self/mounts").read_text().splitlines():
            if ln.split()[1].replace("\\040", " ") == t:
                return True
        return False

    def mount_overlay(self, lower: str, upper: str, work: str, target: str) -> None:
        _run(["mount", "-t", "overlay", "overlay", "-o",
              f"lowerdir={lower},upperdir={upper},workdir={work}", target],
             "mounting the machine's overlay root")

    def umount(self, target: str) -> None:
        while self.is_mounted(target):
            p = subprocess.run(["umount", target], capture_output=True, text=True)
            if p.returncode != 0:
                _run(["umount", "-l", target], "unmounting")  # busy: detach lazily

    # --- processes ----------------------------------------------------------------------
    def spawn_supervisor(self, config: str, log: str) -> int:
        with open(log, "ab") as lf:
            p = subprocess.Popen([sys.executable, "-m", "kdeploy.lab.supervisor", config],
                                 stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                                 start_new_session=True, close_fds=True, cwd="/")
        return p.pid

    def proc_start(self, pid: int) -> int | None:
        """Start time of pid (clock ticks since boot) to tell a PID from a reused one."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        return int(stat.rsplit(")", 1)[1].split()[19])

    def alive(self, pid: int, start: int | None = None) -> bool:
        s = self.proc_start(pid)
        if s is None:
            return False
        try:  # a zombie is not alive
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                try:
                    os.waitpid(pid, os.WNOHANG)  # our child (lab up in the same process)
                except ChildProcessError:
                    pass
                return False
        except OSError:
            return False
        return start is None or s == start

    def kill(self, pid: int, sig: int = signal.SIGTERM) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    # --- probes -------------------------------------------------------------------------
    def ssh_banner(self, netns: str, host: str, timeout: float = 1.0) -> bool:
        try:
            s = connect_in_netns(netns, host, 22, timeout)
        except OSError:
            return False
        try:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
        except OSError:
            return False
        finally:
            s.close()
