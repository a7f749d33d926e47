"""`kdeploy reset`: tear down what kdeploy made on hosts, so they are bare again and `kdeploy up`
deploys them afresh.

What is removed is derived from the host's desired resources (the components' declarations:
files, binaries, units, the /etc/hosts block), plus the data directories and network state the
running cluster created (mounts, the CNI bridge, routes inside the pod CIDR, KUBE-*/CNI-*
iptables chains and kdeploy's masquerade rule). The host-side work is one shell script
(templates/reset/reset.sh.j2) sent on stdin; it prints machine-readable lines of what it
removed, which `parse_output` reads. Each host is reset independently and in parallel.

The deployer keeps the cluster's PKI and state dir (the cluster keeps its identity; `up`
redeploys it); what must not outlive the hosts' state is dropped: the nodes in the cordon
ledger. etcd's data is gone with a full reset: the next `up` bootstraps a new etcd cluster.
"""
from __future__ import annotations

import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from kdeploy.errors import ApplyError, KdeployError
from kdeploy.model import Cluster, Role, defaults

TAG = "KDEPLOY-RESET"
TEMPLATE = "reset/reset.sh.j2"
SCRIPT_TIMEOUT = 900
MASQUERADE_COMMENT = "kdeploy-pod-masquerade"
# empty parents of removed files are pruned, except these system directories
SYSTEM_DIRS = frozenset({
    "/", "/etc", "/etc/systemd", "/etc/systemd/system", "/etc/sysctl.d", "/etc/modules-load.d",
    "/opt", "/usr", "/usr/local", "/usr/local/bin", "/usr/local/sbin", "/usr/local/lib",
    "/var", "/var/lib", "/var/log", "/run",
})
NETNS_GLOBS = ("/run/netns/cni-*",)     # the pods' network namespaces (named by the CNI plugins)


class ResetError(ApplyError):
    """A host's reset did not finish cleanly; .removed lists what it did remove."""

    def __init__(self, message: str, hint: str | None = None, *, removed: Sequence[str] = ()):
        super().__init__(message, hint)
        self.removed = list(removed)


# ---------------------------------------------------------------------------- what a host has

def reset_desired(cluster: Cluster) -> dict:
    """The desired resources of every host, for a reset: no artifact is resolved (the catalog's
    install paths are enough), the PKI is read when the state dir has one, nothing is written."""
    from kdeploy.artifacts.catalog import file_specs
    from kdeploy.artifacts.fetch import ArtifactFile
    from kdeploy.execute.run import pin_pod_cidrs, state_dir_for
    from kdeploy.plan.desired import desired_state
    state = state_dir_for(cluster)
    cluster = pin_pod_cidrs(cluster, state, write=False)
    arts = [ArtifactFile(s.name, s.component, "", Path(), "", s.install_path, s.mode, s.roles)
            for s in file_specs()]
    if (state / "pki").is_dir():
        from kdeploy.pki import load_pki
        try:
            return desired_state(cluster, pki=load_pki(cluster, state), artifacts=arts)
        except KdeployError:
            pass   # an incomplete PKI: its files live in the data dirs, removed anyway
    return desired_state(cluster, artifacts=arts)


def _unit_order(units: list[str]) -> tuple[list[str], str | None, list[str]]:
    """(kubelet and kube-proxy, the container runtime, the rest: control plane, etcd, others)."""
    from kdeploy.components import COMPONENTS, containerd, kube_proxy, kubelet
    first = [u for u in (*kubelet.COMPONENT.units, *kube_proxy.COMPONENT.units) if u in units]
    runtime = next((u for u in containerd.COMPONENT.units if u in units), None)
    role = {u: c.role for c in COMPONENTS for u in c.units}
    rest = [u for u in units if u not in first and u != runtime]
    rank = {"control-plane": 0, "etcd": 1}
    # the control plane in reverse start order, then etcd, then the node's own services
    rest = sorted(reversed(rest), key=lambda u: rank.get(role.get(u, ""), 2))
    return first, runtime, rest


def _prune_dirs(paths: Sequence[str], removed_dirs: Sequence[str]) -> list[str]:
    """Parents of the removed files that may be left empty, deepest first (system dirs and
    what the data-dir removal covers are left out)."""
    out: set[str] = set()
    for p in paths:
        d = posixpath.dirname(p)
        while d not in SYSTEM_DIRS and d != "/":
            if not any(d == r or d.startswith(r + "/") for r in removed_dirs):
                out.add(d)
            d = posixpath.dirname(d)
    return sorted(out, key=lambda d: (-d.count("/"), d))


def data_dirs() -> list[str]:
    return [defaults.ETCD_DATA_DIR, defaults.KUBELET_DIR, defaults.CONTAINERD_ROOT,
            defaults.CONTAINERD_STATE, defaults.CNI_STATE_DIR, defaults.CNI_CONF_DIR,
            defaults.CNI_BIN_DIR, defaults.K8S_DIR, defaults.KUBE_PROXY_DIR,
            posixpath.dirname(defaults.AUDIT_LOG), defaults.KDEPLOY_LIB_DIR]


def script_context(cluster: Cluster, res) -> dict:
    """The reset script's values for one host, from its desired resources."""
    from kdeploy.execute.hostlock import LOCK_DIR
    from kdeploy.plan.planner import BLOCK_BEGIN, BLOCK_END
    from kdeploy.render.context import HOSTS_FILE, unit_path
    units = [u.name for u in res.units]
    first, runtime, rest = _unit_order(units)
    from kdeploy.components import COMPONENTS
    other = [u for c in COMPONENTS for u in c.units if u not in units]
    unit_files = {unit_path(u) for u in units}
    blocks = [b for b in res.blocks if b.path == HOSTS_FILE]
    marker = blocks[0].marker if blocks else "kdeploy"
    files = [f.path for f in res.files if f.path not in unit_files and f.path != HOSTS_FILE]
    binaries = [b.path for b in res.binaries]
    by_name = {posixpath.basename(p): p for p in binaries}
    dirs = data_dirs()
    for p in files + binaries:   # the script reads them one a line
        if not p.startswith("/") or "\n" in p or p.startswith(f"{defaults.KDEPLOY_DIR}/run.lock"):
            raise KdeployError(f"host {res.host}: cannot reset the path {p!r}", "this is a kdeploy bug")
    pod = cluster.pod_network
    return {
        "tag": TAG,
        "cluster_name": cluster.name,
        "host_name": res.host,
        "units": units,
        "units_first": first,
        "runtime_unit": runtime,
        "units_rest": rest,
        "units_other": other,      # stopped and removed only when kdeploy's header is in the file
        "unit_files": sorted(f.path for f in res.files if f.path in unit_files),
        "systemd_dir": defaults.SYSTEMD_DIR,
        "kube_proxy_bin": by_name.get("kube-proxy"),
        "crictl": by_name.get("crictl", f"{defaults.BIN_DIR}/crictl"),
        "containerd_socket": defaults.CONTAINERD_SOCKET,
        "mount_roots": [defaults.KUBELET_DIR, defaults.CONTAINERD_STATE, defaults.CONTAINERD_ROOT],
        "netns_globs": list(NETNS_GLOBS),
        "files": sorted(dict.fromkeys(files + binaries)),
        "hosts_file": HOSTS_FILE,
        "block_begin": BLOCK_BEGIN.format(marker=marker),
        "block_end": BLOCK_END.format(marker=marker),
        "cni_bridge": defaults.CNI_BRIDGE,
        "pod_cidrs": [(pod.version, str(pod))],
        "masquerade_comment": MASQUERADE_COMMENT,
        "data_dirs": dirs,
        "kdeploy_dir": defaults.KDEPLOY_DIR,
        "keep": LOCK_DIR,
        "prune_dirs": _prune_dirs(files + binaries, dirs + [defaults.KDEPLOY_DIR]),
    }


def render_script(cluster: Cluster, res) -> str:
    from kdeploy.render.env import render
    return render(TEMPLATE, script_context(cluster, res))


# ---------------------------------------------------------------------------- the script's output

@dataclass
class ScriptOutput:
    removed: list[str] = field(default_factory=list)    # "KIND WHAT"
    warnings: list[str] = field(default_factory=list)
    done: bool = False


def parse_output(text: str) -> ScriptOutput:
    """Read the script's machine-readable lines; anything else (tools' chatter) is ignored."""
    out = ScriptOutput()
    for line in text.splitlines():
        if not line.startswith(TAG + " "):
            continue
        parts = line[len(TAG) + 1:].split(" ", 2)
        if parts[0] == "removed" and len(parts) >= 2:
            out.removed.append(" ".join(parts[1:]).strip())
        elif parts[0] == "warn":
            out.warnings.append(" ".join(parts[1:]).strip())
        elif parts[0] == "done":
            out.done = True
    return out


# ---------------------------------------------------------------------------- one host

def reset_host(cluster: Cluster, transport, host_name: str, *, desired: Mapping | None = None) -> list[str]:
    """Reset one host (the caller holds the locks); returns what was removed ("KIND WHAT").
    Raises ResetError (with .removed) when something could not be removed."""
    desired = desired if desired is not None else reset_desired(cluster)
    if host_name not in desired:
        raise KdeployError(f"host {host_name} is not in the inventory")
    script = render_script(cluster, desired[host_name])
    r = transport.run(["sh", "-s"], input=script.encode(), timeout=SCRIPT_TIMEOUT, check=False)
    out = parse_output(r.out)
    if r.rc != 0 or out.warnings or not out.done:
        why = "; ".join(out.warnings) or (r.err.strip().splitlines() or [f"exit code {r.rc}"])[-1]
        if not out.done and not out.warnings:
            why = f"the reset script stopped early (exit code {r.rc}): {why}"
        raise ResetError(f"host {host_name}: {why}",
                         "run `kdeploy reset` again, or look at the host (journalctl, findmnt)",
                         removed=out.removed)
    return out.removed


# ---------------------------------------------------------------------------- the verb

@dataclass
class HostOutcome:
    host: str
    removed: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ResetOutcome:
    hosts: dict[str, HostOutcome] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[str]:
        return [h for h, o in self.hosts.items() if not o.ok]

    @property
    def nothing(self) -> bool:
        return all(o.ok and not o.removed for o in self.hosts.values())


def check_hosts(cluster: Cluster, names: Sequence[str] | None) -> list[str]:
    """The inventory hosts a reset applies to (all by default); an unknown name is an error."""
    known = [h.name for h in cluster.hosts]
    if not names:
        return known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KdeployError(f"unknown host(s): {', '.join(unknown)} (the inventory has: "
                           f"{', '.join(known)})", "pass --host with an inventory host name")
    return [n for n in known if n in set(names)]


def partial_etcd_warning(cluster: Cluster, hosts: Sequence[str]) -> str | None:
    etcd = [h.name for h in cluster.hosts if h.has(Role.etcd)]
    reset = [h for h in etcd if h in hosts]
    kept = [h for h in etcd if h not in hosts]
    if reset and kept:
        return (f"etcd members {', '.join(reset)} are reset while {', '.join(kept)} keep their data: "
                "they stay in the etcd member list until `kdeploy up` brings them back (it removes "
                "each stale member and adds it again) or `kdeploy node remove` takes them out")
    return None


def forget_local(cluster: Cluster, hosts: Sequence[str], emit: Callable[[dict], None]) -> None:
    """Drop what the deployer knows about the reset hosts that must not outlive them."""
    from kdeploy.execute.cordons import CordonLedger
    from kdeploy.execute.run import state_dir_for
    ledger = CordonLedger(state_dir_for(cluster))
    for node in ledger.nodes():
        if node in hosts:
            ledger.remove(node)
            emit({"event": "forget", "what": f"cordon of node {node} (cordoned.json)"})


def run_reset(cluster: Cluster, transports: Mapping, hosts: Sequence[str], *,
              unreachable: Mapping[str, Exception] | None = None,
              emit: Callable[[dict], None] = lambda e: None) -> ResetOutcome:
    """Reset `hosts` (inventory names) in parallel over connected `transports`, holding the
    run lock and the host locks; hosts without a transport are reported unreachable. Returns
    every host's outcome (never raises for one host's failure)."""
    from kdeploy.execute import run
    out = ResetOutcome()
    t_all = time.monotonic()
    unreachable = dict(unreachable or {})
    live = {h: transports[h] for h in hosts if h in transports}
    for h in hosts:
        if h not in live:
            err = unreachable.get(h)
            msg = getattr(err, "message", None) or str(err or "not connected")
            out.hosts[h] = HostOutcome(h, error=f"unreachable: {msg}")
            emit({"event": "reset-failed", "host": h, "error": out.hosts[h].error, "removed": []})
    warn = partial_etcd_warning(cluster, hosts)
    if warn:
        out.warnings.append(warn)
        emit({"event": "warning", "message": warn})
    with run.locked(cluster, live, "reset"):
        record = run.RunRecord(run.state_dir_for(cluster), "reset")
        sink = record.tee(emit)
        try:
            desired = reset_desired(cluster)

            def one(h: str) -> HostOutcome:
                t = time.monotonic()
                o = HostOutcome(h)
                try:
                    o.removed = reset_host(cluster, live[h], h, desired=desired)
                except ResetError as e:
                    o.removed, o.error = e.removed, e.message
                except KdeployError as e:
                    o.error = e.message
                except Exception as e:  # noqa: BLE001 - one host never hides the others
                    o.error = f"{type(e).__name__}: {e}"
                o.seconds = time.monotonic() - t
                if o.ok:
                    sink({"event": "reset", "host": h, "removed": o.removed,
                          "seconds": round(o.seconds, 2)})
                else:
                    sink({"event": "reset-failed", "host": h, "error": o.error, "removed": o.removed,
                          "seconds": round(o.seconds, 2)})
                return o

            if live:
                with ThreadPoolExecutor(max_workers=min(32, len(live))) as ex:
                    for o in ex.map(one, list(live)):
                        out.hosts[o.host] = o
            forget_local(cluster, [h for h, o in out.hosts.items() if o.ok], sink)
            out.hosts = {h: out.hosts[h] for h in hosts}
        finally:
            out.seconds = time.monotonic() - t_all
            record.write("results.json", {
                "hosts": {h: {"removed": o.removed, "error": o.error, "seconds": round(o.seconds, 2)}
                          for h, o in out.hosts.items()},
                "seconds": round(out.seconds, 2)})
            record.close()
    return out
