"""A fake HostOps: no namespaces, mounts or processes; it records what was created and checks
that each resource was in the ledger (state.json) before it was created."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from kdeploy.lab.nspawn import NspawnBackend
from kdeploy.lab.ops import HostOps


class FakeOps(HostOps):
    def __init__(self, tmp: Path, state_file: Path | None = None):
        self.tmp = tmp
        self.cgroot = tmp / "cgroup"
        for h in ("memory", "pids", "name=systemd"):
            (self.cgroot / h.replace("name=", "")).mkdir(parents=True, exist_ok=True)
        self.state_file = state_file
        self.netns: set[str] = set()
        self.mounts: set[str] = set()
        self.procs: dict[int, dict] = {}   # pid -> {"alive": bool, "cgroup": [...]}
        self.cg_procs: dict[str, set[int]] = {}
        self._pids = itertools.count(40000)
        self.spawned: list[int] = []
        self.fail_spawn_at: int | None = None  # raise on the n-th spawn (crash in the middle)
        self.ignore_term: set[int] = set()
        self.killed: list[tuple[int, int]] = []

    def _recorded(self, kind: str, **what):
        if self.state_file is None:
            return
        res = json.loads(self.state_file.read_text())["resources"]
        assert any(r["kind"] == kind and all(r.get(k) == v for k, v in what.items()) for r in res), \
            f"{kind} {what} created before it was recorded"

    def cgroup_hierarchies(self):
        return {h: (str(self.cgroot / h.replace("name=", "")), "/") for h in ("memory", "pids", "name=systemd")}

    def mkdir(self, path):
        self._recorded("cgroup", path=path)
        return super().mkdir(path)

    def netns_exists(self, name):
        return name in self.netns

    def netns_add(self, name, bridge, gateway_cidr):
        self._recorded("netns", name=name)
        self.netns.add(name)

    def netns_del(self, name):
        self.netns.discard(name)

    def is_mounted(self, target):
        return target in self.mounts

    def mount_overlay(self, lower, upper, work, target):
        self._recorded("mount", path=target)
        self.mounts.add(target)
        (Path(target) / "etc/ssh").mkdir(parents=True, exist_ok=True)  # what the base has

    def umount(self, target):
        self.mounts.discard(target)

    def spawn_supervisor(self, config, log):
        if self.fail_spawn_at is not None and len(self.spawned) == self.fail_spawn_at:
            raise KeyboardInterrupt  # Ctrl-C while machines start
        cfg = json.loads(Path(config).read_text())
        pid = next(self._pids)
        child = next(self._pids)
        self.procs[pid] = {"alive": True}
        self.procs[child] = {"alive": True}
        for d in cfg["cgroups"]:
            self.cg_procs.setdefault(d, set()).update({pid, child})
        Path(cfg["pidfile"]).write_text(str(child))
        self.spawned.append(pid)
        return pid

    def proc_start(self, pid):
        return 1000 + pid if pid in self.procs else None

    def alive(self, pid, start=None):
        p = self.procs.get(pid)
        return bool(p and p["alive"]) and (start is None or start == 1000 + pid)

    def kill(self, pid, sig=15):
        self.killed.append((pid, sig))
        if pid in self.procs and (sig == 9 or pid not in self.ignore_term):
            self.procs[pid]["alive"] = False
            for s in self.cg_procs.values():
                s.discard(pid)

    def cgroup_procs(self, path):
        return sorted(p for d, s in self.cg_procs.items() if d.startswith(path) for p in s)

    def ssh_banner(self, netns, host, timeout=1.0):
        return netns in self.netns

    def alive_pids(self):
        return [p for p, v in self.procs.items() if v["alive"]]


class FakeBackend(NspawnBackend):
    def check_prerequisites(self):
        pass
