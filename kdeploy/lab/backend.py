"""Lab backends: something that turns a LabSpec into running, SSH-reachable Debian machines."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

from kdeploy.errors import LabError
from kdeploy.lab.inventory import DEFAULT_SUBNET, HostSpec
from kdeploy.lab.state import LabState

Log = Callable[[str], None]


@dataclass
class LabSpec:
    name: str
    hosts: list[HostSpec]
    subnet: str = DEFAULT_SUBNET
    ssh_timeout: float = 180.0


@dataclass
class MachineStatus:
    name: str
    address: str
    roles: list[str]
    state: str               # running | stopped
    ssh: bool                # port 22 answers with an SSH banner
    pid: int | None = None   # the machine's launcher (systemd-nspawn) PID
    memory_bytes: int | None = None
    extra: dict = field(default_factory=dict)


class Backend(ABC):
    name: str = "?"

    @abstractmethod
    def up(self, spec: LabSpec, state: LabState, log: Log) -> None:
        """Create and boot the machines; return once every machine answers SSH.
        Must record every resource in `state` before creating it (see kdeploy.lab.state)."""

    @abstractmethod
    def down(self, state: LabState, log: Log, timeout: float = 30.0) -> None:
        """Stop the machines and remove everything in the state's ledger (idempotent,
        also after a crashed up)."""

    @abstractmethod
    def status(self, state: LabState) -> list[MachineStatus]:
        ...

    def check_prerequisites(self) -> None:
        """Raise PrerequisiteError if the host lacks what this backend needs."""


class QemuBackend(Backend):
    name = "qemu"

    def _no(self):
        raise LabError("the qemu backend is not implemented here: nested KVM does not run guests on "
                       "this host (see lab notes)",
                       "use --backend nspawn (the default), or the Vagrantfile at the repo root on a "
                       "machine with working VirtualBox/libvirt")

    def check_prerequisites(self) -> None:
        self._no()

    def up(self, spec, state, log):
        self._no()

    def down(self, state, log, timeout=30.0):
        self._no()

    def status(self, state):
        self._no()


BACKENDS = ("nspawn", "qemu")


def get_backend(name: str, **kw) -> Backend:
    if name == "nspawn":
        from kdeploy.lab.nspawn import NspawnBackend
        return NspawnBackend(**kw)
    if name == "qemu":
        return QemuBackend()
    raise LabError(f"unknown lab backend {name!r}", f"choose one of: {', '.join(BACKENDS)}")
