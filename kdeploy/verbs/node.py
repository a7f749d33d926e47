"""`kdeploy node remove`: take hosts out of a running cluster, cleanly.

For each host, in order: cordon and drain it (PodDisruptionBudgets respected); converge the
hosts that stay to the cluster without it (their API load balancers drop its apiserver, their
routes to its pod CIDR go, the apiservers' etcd list and certificates follow, one host at a
time); remove its etcd member by exact ID, found by its peer URL; stop and reset the host;
delete its Node. Then the deployer forgets it: its certificates, its pod CIDR (free again) and
its cordon. A dead host is removed with --force: what needs it (drain, reset) is skipped and
said so. The removal is recorded in the state dir (removed.json): a later `up` or `plan` with
the host still in the inventory is refused with a plain error, never a silent re-add.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

from kdeploy.errors import ApplyError, InventoryError, KdeployError, PreflightError
from kdeploy.execute import run
from kdeploy.execute.steps import PARALLEL, SERIAL, Hook, Step
from kdeploy.model import Cluster, Role

from kdeploy.execute.removed import refuse_removed, removed_hosts, write_removed


# ------------------------------------------------------------------------------- checks (pure)

def check_removal(cluster: Cluster, names: list[str]) -> Cluster:
    """The cluster that stays; refuses unknown names and a removal that would leave no
    control plane or no etcd."""
    known = {h.name for h in cluster.hosts}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InventoryError(f"not in the inventory: {', '.join(unknown)}",
                             "node remove needs the host still listed (its address and roles); "
                             "name hosts as the inventory does", file=cluster.source)
    if not names:
        raise KdeployError("name at least one host to remove")
    stay = tuple(h for h in cluster.hosts if h.name not in names)
    for role, what in ((Role.control_plane, "control-plane host"), (Role.etcd, "etcd member")):
        if cluster.with_role(role) and not any(h.has(role) for h in stay):
            raise KdeployError(f"removing {', '.join(names)} would leave the cluster without any "
                               f"{what}", "keep at least one; to tear the cluster down use "
                               "`kdeploy reset`")
    return cluster.model_copy(update={"hosts": stay})


# ------------------------------------------------------------------------------------ the verb

@dataclass
class RemoveOutcome:
    removed: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)   # host -> what was skipped
    plan: object = None
    seconds: float = 0.0


@dataclass
class Removal:
    """The hooks of each removed host's turn."""
    cluster: Cluster                     # the whole cluster (the removed hosts included)
    transports: Mapping                  # reachable hosts (the removed ones if reachable)
    stay: Cluster
    drain_timeout: int
    out: RemoveOutcome

    def _skip(self, ctx, host: str, what: str) -> None:
        self.out.skipped.setdefault(host, []).append(what)
        ctx.emit({"event": "note", "host": host, "what": f"skipped: {what}", "skipped": True})

    def drain(self, ctx, host: str) -> None:
        if not ctx.api(["get", "node", host, "-o", "name"], check=False).ok:
            return self._skip(ctx, host, "drain (no Node object)")
        if host not in self.transports:   # dead: evictions would wait for a kubelet that is gone
            ctx.api(["cordon", host], check=False)
            return self._skip(ctx, host, "drain (host unreachable; its pods are deleted with its Node)")
        r = ctx.api(["drain", host, "--ignore-daemonsets", "--delete-emptydir-data",
                     "--grace-period=30", f"--timeout={self.drain_timeout}s"],
                    timeout=self.drain_timeout + 60, check=False)
        if not r.ok:
            last = ((r.err or r.out).strip().splitlines() or ["?"])[-1]
            ctx.api(["uncordon", host], check=False)
            raise ApplyError(f"drain of node {host} did not finish within {self.drain_timeout} s: "
                             f"{last}", "a PodDisruptionBudget may allow no eviction now (kubectl get "
                             "pdb -A); the node was uncordoned and nothing else changed")

    def leave_etcd(self, ctx, host: str) -> None:
        from kdeploy.verbs.membership import healthy, peer_url, remove_member
        via = next((self.transports[h.name] for h in self.stay.etcd if h.name in self.transports), None)
        if via is None:
            raise ApplyError("no etcd member that stays is reachable to remove " + host)
        url = peer_url(self.cluster.host(host))
        healthy(via, leaving=url)            # the members that stay, before the change
        mid = remove_member(via, url)
        ctx.emit({"event": "note", "host": host,
                  "what": f"etcd member {mid} removed" if mid else "not an etcd member (already removed)"})
        healthy(via)

    def reset(self, ctx, host: str) -> None:
        if host not in self.transports:
            return self._skip(ctx, host, "reset (host unreachable)")
        from kdeploy.verbs.reset import reset_host
        removed = reset_host(self.cluster, self.transports[host], host)
        ctx.emit({"event": "note", "host": host, "what": f"reset: {len(removed)} item(s) removed"})

    def delete_node(self, ctx, host: str) -> None:
        r = ctx.api(["delete", "node", host, "--ignore-not-found", "--wait=false"], check=False)
        if not r.ok:
            raise ApplyError(f"cannot delete Node {host}: {(r.err or r.out).strip()}")


def remove_steps(cluster: Cluster, stay: Cluster, names: list[str], removal: Removal,
                 converge: tuple[Step, ...]) -> tuple[Step, ...]:
    etcd = tuple(n for n in names if cluster.host(n).has(Role.etcd))
    return (
        Step("drain", (), SERIAL, hosts=tuple(names), before=(Hook("drain", removal.drain),),
             always=True),
        *converge,
        Step("etcd-remove", (), SERIAL, hosts=etcd, before=(Hook("etcd member remove",
                                                                  removal.leave_etcd),), always=True),
        Step("reset", (), PARALLEL, hosts=tuple(names), before=(Hook("reset", removal.reset),),
             always=True),
        Step("delete-node", (), SERIAL, hosts=tuple(names),
             before=(Hook("delete node", removal.delete_node),), always=True),
    )


def forget(state_dir: Path, names: list[str], cluster: Cluster) -> None:
    """The deployer's knowledge of removed hosts: certificates, cordon, the removal record
    (the pod CIDR was freed when the staying cluster's CIDRs were pinned)."""
    from kdeploy.execute.cordons import CordonLedger
    for n in names:
        for d in ("etcd", "nodes"):
            shutil.rmtree(state_dir / "pki" / d / n, ignore_errors=True)
        CordonLedger(state_dir).remove(n)
    gone = removed_hosts(state_dir)
    at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for n in names:
        h = cluster.host(n)
        gone[n] = {"at": at, "address": h.address, "roles": [r.value for r in h.roles]}
    write_removed(state_dir, gone)


def run_remove(cluster: Cluster, names: list[str], transports: Mapping, *, artifacts_dir=None,
               arch: str = "amd64", drain_timeout: int = 300,
               confirm: Callable[[object], bool] = lambda p: True,
               emit: Callable[[dict], None] = lambda e: None) -> RemoveOutcome:
    """transports: every host of the cluster that could be reached (a removed host may be
    missing when --force allowed it)."""
    from kdeploy.plan.planner import plan as make_plan
    from kdeploy.plan.resources import HostResources
    from kdeploy.verbs.membership import refuse_joiners
    from kdeploy.verbs.up import up_steps
    from kdeploy.verbs.upgrade import api_runner
    out = RemoveOutcome()
    t0 = time.monotonic()
    stay = check_removal(cluster, names)
    missing = [h.name for h in stay.hosts if h.name not in transports]
    if missing:
        raise PreflightError(f"hosts that stay are unreachable: {', '.join(missing)}",
                             "a removal updates every host that stays (routes, load balancers); "
                             "bring them back or remove them too (with --force if dead)")
    kept = {n: t for n, t in transports.items() if n not in names}
    with run.locked(cluster, transports, "node-remove"):
        refuse_removed(cluster, run.state_dir_for(cluster))
        # binaries are not needed to take hosts out (--artifacts adds them to the plan)
        dep = run.prepare(stay, artifacts_dir=artifacts_dir, need_artifacts=False, arch=arch)
        record = run.RunRecord(dep.state_dir, "node-remove")
        try:
            facts, observed = run.gather_checked(dep, kept, record, arch)
            refuse_joiners(dep.etcd, "node remove")
            p = out.plan = make_plan(dep.desired, observed)
            record.write("plan.json", p.to_dict())
            if not confirm(p):
                raise KdeployError("nothing was changed (not confirmed)")
            removal = Removal(cluster, transports, stay, drain_timeout, out)
            desired = {**dep.desired, **{n: HostResources(n) for n in names}}
            from kdeploy.components import gates
            from kdeploy.execute.engine import Engine
            from kdeploy.plan.desired import roles_of
            roles = {**roles_of(stay), **{n: set() for n in names}}
            from kdeploy.transport.pool import group_of
            used = {**kept, **{n: transports[n] for n in names if n in transports}}
            engine = Engine(desired, used, roles=roles, gates=gates(stay), emit=record.tee(emit),
                            api_runner=api_runner(stay, kept), batch=group_of(used))
            engine.apply(p, remove_steps(cluster, stay, names, removal, up_steps(dep, kept)))
            forget(dep.state_dir, names, cluster)
            out.removed = list(names)
            return out
        finally:
            out.seconds = time.monotonic() - t0
            record.write("results.json", {"removed": out.removed, "skipped": out.skipped,
                                          "seconds": round(out.seconds, 2)})
            record.close()
