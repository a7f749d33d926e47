"""HostFacts: what a host looks like now, read-only, JSON round-trippable."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

UNIT_NOT_FOUND = {"active": "inactive", "enabled": "not-found"}
MODULES = ("br_netfilter", "overlay")


@dataclass(frozen=True)
class HostFacts:
    host: str
    gathered: bool = True                  # False: HostFacts.empty() (offline plan), nothing known
    os_release: dict[str, str] = field(default_factory=dict)   # ID, VERSION_ID, VERSION_CODENAME, PRETTY_NAME
    arch: str = ""                         # amd64 | arm64 | uname -m as is for others
    kernel: str = ""                       # uname -r
    hostname: str = ""
    hostname_resolves: bool = False        # getent ahostsv4 $(hostname), at most 3 s (a dead DNS server must not stall facts)
    swap_active: bool = False              # any line in /proc/swaps
    time: float = 0.0                      # the host's clock (epoch seconds)
    local_time: float = 0.0                # this machine's clock at the same moment (midpoint of the round trip)
    rtt: float = 0.0                       # the gather round trip (bounds the skew's error)
    disk_free_bytes: dict[str, int] = field(default_factory=dict)    # "/" and "/var"
    file_sha256: dict[str, str | None] = field(default_factory=dict)  # path -> sha256, None if missing ("dir" for a directory)
    file_stat: dict[str, dict] = field(default_factory=dict)          # path -> {type, mode(int), owner, group, size}
    units: dict[str, dict[str, str]] = field(default_factory=dict)    # name -> {active, enabled}
    ports_in_use: tuple[int, ...] = ()     # the asked ports something listens on (TCP)
    modules: dict[str, str] = field(default_factory=dict)   # name -> loaded | builtin | available | missing
    has_systemd: bool = False              # PID 1 is systemd (/run/systemd/system exists)
    python3: str | None = None             # path of python3, None if absent
    cgroup_version: int | None = None      # 1 or 2
    cpus: int = 0
    mem_bytes: int = 0
    etcd_data: bool = False                # /var/lib/etcd/member exists (this host was an etcd member)
    etcd_members: tuple[dict, ...] | None = None  # the member list its running etcd reports; None: not read
    versions: dict[str, str] = field(default_factory=dict)  # kube-apiserver, kubelet, kube-proxy, etcd -> 1.37.2 (installed binaries)
    # text of the files the facts were asked to read (None: missing); not in the run record
    contents: dict[str, bytes | None] = field(default_factory=dict, repr=False)

    # --- derived --------------------------------------------------------------------------
    @property
    def os_id(self) -> str:
        return self.os_release.get("ID", "")

    @property
    def os_version(self) -> str:
        return self.os_release.get("VERSION_ID", "")

    @property
    def modules_ok(self) -> dict[str, bool]:
        return {m: self.modules.get(m, "missing") != "missing" for m in MODULES}

    @property
    def clock_skew(self) -> float:
        """host clock - local clock, seconds (error up to rtt/2). 0 when not gathered."""
        return self.time - self.local_time if self.gathered else 0.0

    def sha256(self, path: str) -> str | None:
        return self.file_sha256.get(path)

    def exists(self, path: str) -> bool:
        return self.file_sha256.get(path) is not None

    def unit(self, name: str) -> dict[str, str]:
        return self.units.get(name, UNIT_NOT_FOUND)

    def port_in_use(self, port: int) -> bool:
        return port in self.ports_in_use

    # --- construction / JSON -----------------------------------------------------------------
    @classmethod
    def empty(cls, host: str) -> "HostFacts":
        """A bare host about which nothing is known: every file, unit and setting is to create.
        Used by the offline plan."""
        return cls(host=host, gathered=False)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ports_in_use"] = list(self.ports_in_use)
        d.pop("contents")   # file text (the journal, /etc/hosts): read again when needed
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HostFacts":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}  # unknown keys: newer writer, ignore
        if kw.get("etcd_members") is not None:
            kw["etcd_members"] = tuple({**m, "peer_urls": tuple(m.get("peer_urls", ())),
                                        "client_urls": tuple(m.get("client_urls", ()))}
                                       for m in kw["etcd_members"])
        if "ports_in_use" in kw:
            kw["ports_in_use"] = tuple(int(p) for p in kw["ports_in_use"])
        return cls(**kw)
