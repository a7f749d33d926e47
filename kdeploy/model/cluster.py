"""The typed cluster model: what the inventory says the cluster should be.

Frozen pydantic models, camelCase in YAML, snake_case in Python. Pure cross-field checks live
in kdeploy.model.validate; loading (YAML with line numbers, Ansible inventories) in
kdeploy.model.load.
"""
from __future__ import annotations

import ipaddress
from enum import Enum
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from kdeploy.artifacts.catalog import DEFAULT_KUBERNETES_VERSION
from kdeploy.model import defaults

API_VERSION = "kdeploy.io/v1alpha1"


class _Base(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True,
    )


class Role(str, Enum):
    control_plane = "control-plane"
    etcd = "etcd"
    worker = "worker"


class Bastion(_Base):
    address: str
    port: int = Field(22, ge=1, le=65535)
    user: str = "root"
    key_file: str | None = None


class SSHSettings(_Base):
    """Connection settings; every field optional so hosts can override the cluster's defaults."""
    user: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    key_file: str | None = None
    known_hosts_file: str | None = None
    strict_host_key_checking: bool | None = None
    netns: str | None = None
    bastion: Bastion | None = None
    sudo: bool | None = None


class ResolvedSSH(_Base):
    """The effective SSH settings of one host (cluster defaults overlaid with the host's)."""
    user: str
    port: int
    key_file: str | None
    known_hosts_file: str | None
    strict_host_key_checking: bool
    netns: str | None
    bastion: Bastion | None
    sudo: bool


class Host(_Base):
    name: str
    address: str
    roles: tuple[Role, ...] = Field(min_length=1)
    ssh: SSHSettings = SSHSettings()
    pod_cidr: str | None = Field(None, alias="podCIDR")  # explicit per-node pod CIDR; default: allocated by position
    labels: dict[str, str] = {}

    @field_validator("roles")
    @classmethod
    def _unique_roles(cls, v: tuple[Role, ...]) -> tuple[Role, ...]:
        if len(set(v)) != len(v):
            raise ValueError("a role is listed twice")
        return tuple(sorted(v, key=lambda r: list(Role).index(r)))

    def has(self, role: Role | str) -> bool:
        return Role(role) in self.roles


class Metadata(_Base):
    name: str = "kubernetes"


class KubernetesSettings(_Base):
    version: str = DEFAULT_KUBERNETES_VERSION


class ControlPlaneSettings(_Base):
    endpoint: str | None = None
    extra_sans: tuple[str, ...] = Field((), alias="extraSANs")


class NetworkSettings(_Base):
    pod_cidr: str = Field(defaults.POD_CIDR, alias="podCIDR")
    service_cidr: str = Field(defaults.SERVICE_CIDR, alias="serviceCIDR")
    node_cidr_mask_size: int = Field(defaults.NODE_CIDR_MASK_SIZE, ge=8, le=30, alias="nodeCIDRMaskSize")
    cluster_domain: str = defaults.CLUSTER_DOMAIN
    cni: Literal["bridge"] = "bridge"


class KubeProxySettings(_Base):
    mode: Literal["iptables", "ipvs", "nftables"] = "iptables"
    conntrack_max_per_core: int | None = Field(None, ge=0)


class RegistryAuth(_Base):
    """Basic credentials for a registry mirror; the password is read from a file on the
    deployer (never written in the inventory), relative to the inventory."""
    username: str = Field(min_length=1)
    password_file: str = Field(min_length=1)


class RegistryMirror(_Base):
    """Where containerd pulls images named after `registry` from (containerd hosts.toml):
    the endpoints in order, then the registry itself."""
    registry: str                                   # registry.k8s.io, docker.io, host:5000 or _default
    endpoints: tuple[str, ...] = Field(min_length=1)
    ca_file: str | None = None                      # CA of the endpoints (PEM), relative to the inventory
    skip_verify: bool = False
    auth: RegistryAuth | None = None

    @field_validator("registry")
    @classmethod
    def _registry(cls, v: str) -> str:
        host, _, port = v.partition(":")
        if v != "_default" and not (host and "/" not in v and (not port or port.isdigit())):
            raise ValueError(f"{v!r} is not a registry host: write it as HOST[:PORT] as image names "
                             "use it (registry.k8s.io, docker.io, mirror.internal:5000), or _default")
        return v

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for e in v:
            if (not e.startswith(("http://", "https://")) or not e.split("://", 1)[1].strip("/")
                    or any(c in e for c in '"\\ \t\n')):
                raise ValueError(f"endpoint {e!r} is not an http(s) URL: write https://HOST[:PORT][/PATH]")
        return v


class ContainerRuntimeSettings(_Base):
    name: Literal["containerd"] = "containerd"
    cgroup_driver: Literal["systemd", "cgroupfs"] = "systemd"
    # containers get no oom_score_adj below containerd's own: for hosts that lack
    # CAP_SYS_RESOURCE (container machines such as the lab), where a negative value fails
    restrict_oom_score_adj: bool = Field(False, alias="restrictOOMScoreAdj")
    registry_mirrors: tuple[RegistryMirror, ...] = ()


class KubeletSettings(_Base):
    fail_cgroup_v1: bool = True
    max_pods: int = Field(110, ge=1, le=1000)
    # images the operator preloads on the nodes (full image names without tag, or prefixes
    # ending in "/*"): the kubelet uses a present copy without checking pull credentials, like
    # the images kdeploy imports (kdeploy.render.images, docs/artifacts.md)
    preloaded_images: tuple[str, ...] = ()
    # the kubelet's hard eviction thresholds (signal -> quantity or percentage), replacing its
    # defaults when set; e.g. machines that share one disk judge it together (the local lab)
    eviction_hard: dict[str, str] | None = None


class ArtifactSettings(_Base):
    dir: str | None = None
    # base URL serving the official download URLs below it (kubespray's files_repo layout):
    # MIRROR/dl.k8s.io/release/v1.37.2/bin/linux/amd64/kubelet, MIRROR/github.com/...
    mirror: str | None = None
    # a directory of image archives (pause.tar, coredns.tar[, agnhost.tar]) imported on every
    # node, for nodes that cannot pull from registry.k8s.io; relative to the inventory
    images: str | None = None

    @field_validator("mirror")
    @classmethod
    def _mirror_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http(s) URL: write it as https://HOST[:PORT]/PATH "
                             "(the official download URLs are read below it)")
        return v


class ClusterSpec(_Base):
    kubernetes: KubernetesSettings = KubernetesSettings()
    control_plane: ControlPlaneSettings = ControlPlaneSettings()
    network: NetworkSettings = NetworkSettings()
    kube_proxy: KubeProxySettings = KubeProxySettings()
    container_runtime: ContainerRuntimeSettings = ContainerRuntimeSettings()
    kubelet: KubeletSettings = KubeletSettings()
    ssh: SSHSettings = SSHSettings()
    artifacts: ArtifactSettings = ArtifactSettings()


class Cluster(_Base):
    """A whole inventory. Build it with kdeploy.model.load_inventory(), which validates."""
    api_version: Literal["kdeploy.io/v1alpha1"] = API_VERSION
    kind: Literal["Cluster"] = "Cluster"
    metadata: Metadata = Metadata()
    spec: ClusterSpec = ClusterSpec()
    hosts: tuple[Host, ...] = Field(min_length=1)
    # where the inventory came from; relative key paths resolve against its directory
    source: str | None = Field(None, exclude=True)

    # --- derived, read-only views -------------------------------------------------------
    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> str:
        return self.spec.kubernetes.version.lstrip("v")

    def with_role(self, role: Role | str) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.has(role))

    @property
    def control_plane(self) -> tuple[Host, ...]:
        return self.with_role(Role.control_plane)

    @property
    def etcd(self) -> tuple[Host, ...]:
        return self.with_role(Role.etcd)

    @property
    def workers(self) -> tuple[Host, ...]:
        return self.with_role(Role.worker)

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    @cached_property
    def service_network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.spec.network.service_cidr, strict=False)

    @cached_property
    def pod_network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.spec.network.pod_cidr, strict=False)

    @property
    def kubernetes_service_ip(self) -> str:
        return str(self.service_network.network_address + 1)

    @property
    def dns_service_ip(self) -> str:
        return str(self.service_network.network_address + 10)

    @property
    def api_host(self) -> str:
        ep = self.spec.control_plane.endpoint
        if ep:
            host, _, _ = _split_host_port(ep)
            return host
        return self.control_plane[0].address

    @property
    def api_port(self) -> int:
        ep = self.spec.control_plane.endpoint
        if ep:
            _, _, port = _split_host_port(ep)
            if port:
                return port
        return defaults.APISERVER_PORT

    @property
    def api_server_url(self) -> str:
        host = self.api_host
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.api_port}"

    @property
    def node_local_lb(self) -> bool:
        """Every node reaches the API through a load balancer on itself (nginx, health of every
        apiserver) unless the inventory names an external endpoint (its own LB or VIP)."""
        return not self.spec.control_plane.endpoint

    @property
    def node_api_url(self) -> str:
        """The API as kubelet and kube-proxy reach it: the node-local load balancer, or the
        external endpoint."""
        if self.node_local_lb:
            return f"https://127.0.0.1:{defaults.API_LB_PORT}"
        return self.api_server_url

    def ssh_for(self, host: Host) -> ResolvedSSH:
        base, own = self.spec.ssh, host.ssh

        def pick(field: str, default):
            v = getattr(own, field)
            if v is None:
                v = getattr(base, field)
            return default if v is None else v

        return ResolvedSSH(
            user=pick("user", "root"), port=pick("port", 22), key_file=pick("key_file", None),
            known_hosts_file=pick("known_hosts_file", None),
            strict_host_key_checking=pick("strict_host_key_checking", True),
            netns=pick("netns", None), bastion=pick("bastion", None),
            sudo=pick("sudo", pick("user", "root") != "root"),
        )

    @cached_property
    def node_pod_cidrs(self) -> dict[str, str]:
        """Per-node pod CIDR: explicit ones kept, the others allocated in host order from the
        subnets no explicit one uses. Append new hosts at the end to keep existing CIDRs."""
        mask = self.spec.network.node_cidr_mask_size
        taken = {ipaddress.ip_network(h.pod_cidr, strict=False) for h in self.hosts if h.pod_cidr}
        free = (s for s in self.pod_network.subnets(new_prefix=mask)
                if not any(s.overlaps(t) for t in taken))
        out: dict[str, str] = {}
        for h in self.hosts:
            if h.pod_cidr:
                out[h.name] = str(ipaddress.ip_network(h.pod_cidr, strict=False))
            else:
                subnet = next(free, None)
                if subnet is None:  # validation refuses such inventories; be explicit anyway
                    from kdeploy.errors import InventoryError
                    raise InventoryError("the pod CIDR has no free subnet left for host "
                                         f"{h.name}", "use a larger spec.network.podCIDR",
                                         file=self.source, field="spec.network.podCIDR")
                out[h.name] = str(subnet)
        return out

    def with_pod_cidrs(self, pinned: dict[str, str]) -> "Cluster":
        """This cluster with the given per-node pod CIDRs made explicit (hosts that have one in
        the inventory keep theirs)."""
        data = self.model_dump(by_alias=True, exclude_none=True)
        for h in data["hosts"]:
            if "podCIDR" not in h and h["name"] in pinned:
                h["podCIDR"] = pinned[h["name"]]
        return Cluster.model_validate({**data, "source": self.source})


def _split_host_port(ep: str) -> tuple[str, str, int | None]:
    ep = ep.strip()
    if ep.startswith("["):  # [v6]:port
        host, _, rest = ep[1:].partition("]")
        port = rest.lstrip(":")
        return host, ":", int(port) if port else None
    if ep.count(":") == 1:
        host, _, port = ep.partition(":")
        return host, ":", int(port) if port.isdigit() else None  # None: validation refuses it
    return ep, "", None
