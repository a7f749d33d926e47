"""Connect to many hosts in parallel; every unreachable host is named in ONE error.

    transports = connect_all(cluster)               # {name: Transport}, or raises UnreachableHosts
    ok, failed = connect_each(cluster, ["w1", "w2"])  # never raises for a host: failures returned
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Mapping

from kdeploy.errors import KdeployError, TransportError
from kdeploy.transport.base import Transport

# factory(cluster, host) -> a connected Transport (raise TransportError when it cannot connect)
Factory = Callable[[object, object], Transport]


def ssh_factory(cluster, host) -> Transport:
    from kdeploy.transport.ssh import SSHTransport
    return SSHTransport.from_cluster(cluster, host).connect()


class UnreachableHosts(TransportError):
    """Some hosts could not be reached. .failures: {name: TransportError}."""

    def __init__(self, failures: dict[str, KdeployError]):
        names = sorted(failures)
        lines = [f"{len(names)} host(s) unreachable: {', '.join(names)}"]
        lines += [f"  {n}: {failures[n].message}" for n in names]
        hints = {failures[n].hint for n in names if failures[n].hint}
        super().__init__("\n".join(lines), "; ".join(sorted(hints)) or None)
        self.failures = failures


def _names(cluster, hosts: Iterable | None) -> list:
    if hosts is None:
        return list(cluster.hosts)
    out = []
    for h in hosts:
        out.append(cluster.host(h) if isinstance(h, str) else h)
    return out


def connect_each(cluster, hosts: Iterable | None = None, *, factory: Factory = ssh_factory,
                 max_workers: int = 32) -> tuple[dict[str, Transport], dict[str, KdeployError]]:
    """Connect in parallel; return ({name: transport}, {name: error}). Unexpected exceptions of a
    factory (bugs) are wrapped so one host never hides the others."""
    hs = _names(cluster, hosts)
    ok: dict[str, Transport] = {}
    failed: dict[str, KdeployError] = {}
    if not hs:
        return ok, failed
    many = getattr(factory, "connect_many", None)
    if many is not None:  # e.g. ansible: every host checked in one run
        return many(cluster, hs)
    with ThreadPoolExecutor(max_workers=min(max_workers, len(hs)),
                            thread_name_prefix="kdeploy-connect") as ex:
        futs = {h.name: ex.submit(factory, cluster, h) for h in hs}
        for name, fut in futs.items():
            try:
                ok[name] = fut.result()
            except KdeployError as e:
                failed[name] = e
            except Exception as e:  # noqa: BLE001 - reported, not swallowed
                failed[name] = TransportError(f"host {name}: {type(e).__name__}: {e}")
    return ok, failed


def connect_all(cluster, hosts: Iterable | None = None, *, factory: Factory = ssh_factory,
                max_workers: int = 32) -> dict[str, Transport]:
    """Connect to every host (all of the cluster's by default) in parallel.

    All reachable: {name: transport} in inventory order. Any unreachable: the others' connections
    are closed (nothing was run on them) and UnreachableHosts lists every failed host and why.
    """
    ok, failed = connect_each(cluster, hosts, factory=factory, max_workers=max_workers)
    if failed:
        close_all(ok)
        raise UnreachableHosts(failed)
    return ok


def group_of(transports: dict[str, Transport]):
    """An object driving all these transports in one call per operation (`run_many`, `apply`:
    kdeploy.execute.batch.BatchApplier) when their class offers one (ansible: AnsibleGroup, one
    ansible-runner run for all hosts); None otherwise (ssh: a thread per host is as fast)."""
    if not transports:
        return None
    kinds = {type(t) for t in transports.values()}
    if len(kinds) != 1:
        return None
    make = getattr(kinds.pop(), "group_of", None)
    return make(transports) if make is not None else None


def run_many(transports: Mapping[str, Transport], cmds: Mapping[str, object], *,
             timeout: float | None = 300) -> dict[str, object]:
    """One command per host, hosts in parallel: {host: CommandResult, or the KdeployError of
    that host}. A non-zero exit is a result, not an error. One call for all hosts when the
    transports can (group_of: ansible, one run); else a thread per host."""
    if not cmds:
        return {}
    group = group_of({h: transports[h] for h in cmds})
    if group is not None:
        return group.run_many(cmds, timeout=timeout)

    def one(h):
        try:
            return transports[h].run(cmds[h], timeout=timeout, check=False)
        except KdeployError as e:
            return e
    with ThreadPoolExecutor(max_workers=min(32, len(cmds))) as ex:
        return dict(zip(cmds, ex.map(one, cmds)))


def close_all(transports: dict[str, Transport]) -> None:
    for t in transports.values():
        try:
            t.close()
        except Exception:
            pass
