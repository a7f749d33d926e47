"""`kdeploy certs check` from the hosts and `kdeploy certs renew`.

check: one round trip per host reads every certificate kdeploy placed there (the PKI's
placement table names the paths; kdeploy.pki.hosts reads and parses them, never a key) and
compares each with the deployer's copy: missing, different, expired or expiring within
defaults.RENEW_BEFORE_DAYS is flagged.

renew: reissue leaf certificates in the state dir (those within the renewal window, or every
leaf with --all; never a CA, the service-account key pair or the encryption key), then roll the
changed files out as a plan over the rolling steps `upgrade` uses, without drains: etcd members
one at a time (the whole etcd cluster healthy before the next), control-plane hosts one at a
time (readyz, the API through the load balancer, leaders elected), then the nodes' kubelet and
kube-proxy (control-plane nodes one at a time, workers in batches, each Ready before the next).
The changed files restart their units, nothing else. What was reissued and what will restart
is computed in a scratch copy of the state dir first: declining the confirmation writes
nothing. A run that stopped half way is resumed by the next `certs renew` (the hosts still
differ from the state dir, so the plan is not empty).
"""
from __future__ import annotations

import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Mapping

from kdeploy.errors import ApplyError, KdeployError, PreflightError
from kdeploy.model import Cluster
from kdeploy.pki.hosts import HostCert, compare, parse_read, read_script, unreachable


class CertificatesFlagged(KdeployError):
    """`certs check` found a certificate to act on (exit 2, like `plan` with changes)."""
    exit_code = 2


# ---------------------------------------------------------------------------- check

def read_host(host: str, transport, pki, now: datetime | None = None) -> list[HostCert]:
    """The certificates one host holds, compared with the deployer's copies (one round trip)."""
    from kdeploy.errors import TransportError
    placed = pki.placed_certificates(host)
    try:
        r = transport.run(read_script(placed), timeout=60, check=False)
    except TransportError as e:
        return [unreachable(host, e.message)]
    if not r.ok:
        return [unreachable(host, f"reading the certificates failed (rc {r.rc}): "
                                  f"{(r.err or '').strip()[-200:]}")]
    return compare(host, placed, parse_read(r.out), now)


def check_hosts(cluster: Cluster, transports: Mapping, pki, *, failed: Mapping | None = None,
                now: datetime | None = None) -> list[HostCert]:
    """Every certificate on every host (inventory order), read in parallel; hosts that could
    not be reached are one `unreachable` row each."""
    failed = failed or {}
    names = [h.name for h in cluster.hosts]
    with ThreadPoolExecutor(max_workers=min(32, len(transports) or 1)) as ex:
        futs = {n: ex.submit(read_host, n, transports[n], pki, now) for n in names if n in transports}
        out: list[HostCert] = []
        for n in names:
            if n in futs:
                out.extend(futs[n].result())
            else:
                err = failed.get(n)
                out.append(unreachable(n, getattr(err, "message", None) or str(err or "not connected")))
    return out


# ---------------------------------------------------------------------------- renew

def foreign_changes(plan, dep) -> list[str]:
    """Changes of the plan that are not a certificate rollout: `certs renew` refuses them
    (they are `kdeploy up`'s or `kdeploy upgrade`'s to make)."""
    placed = {h.name: dep.pki.files_for(h.name) for h in dep.cluster.hosts}
    pki_paths = {h: {f.path for f in fs} for h, fs in placed.items()}
    # commands a placed PKI file runs when it changed (kubelet.conf: forget the kubelet's
    # rotated client certificates) belong to the rollout too
    pki_runs = {h: {shlex.join(a) for f in fs for a in f.run_on_change} for h, fs in placed.items()}
    out = []
    for c in plan.changes:
        if c.kind in ("file", "mode") and c.target in pki_paths.get(c.host, ()):
            continue
        if c.kind == "unit-restart" or (c.kind == "run" and c.target in pki_runs.get(c.host, ())):
            continue
        out.append(f"{c.host}: {c.action} {c.target}")
    return out


def refuse_new_roots(pki) -> None:
    """`certs renew` reissues leaves only: a CA, service-account key or encryption key that
    would be created now means the state dir lost it (a new CA would cut every host off)."""
    roots = {ca.name for ca in pki.table.cas} | {"sa", "encryption"}
    new = [n for n in pki.issued if n in roots]
    if new:
        raise PreflightError(
            f"the state dir {pki.state_dir} has no {', '.join(new)}: certs renew never creates a CA "
            "or key pair; nothing was changed",
            "restore the state dir (pki/) from a backup; for a new cluster use `kdeploy up`")


@dataclass
class RenewOutcome:
    renewed: dict[str, str] = field(default_factory=dict)     # name -> why
    plan: object = None
    steps: list[dict] = field(default_factory=list)
    deployment: object = None
    result: object = None
    timings: dict[str, float] = field(default_factory=dict)


def renew_steps(cluster: Cluster, batch) -> tuple:
    """upgrade's rolling steps with a Ready hook after each node instead of the drain."""
    from kdeploy.execute.steps import Hook
    from kdeploy.verbs.upgrade import rolling_steps, wait_ready
    return rolling_steps(cluster, batch, node_after=(
        Hook("ready", lambda ctx, node: wait_ready(ctx, node, cluster.version)),))


def run_renew(cluster: Cluster, *, transports: Mapping, renew_all: bool = False, batch=None,
              artifacts_dir: Path | None = None, force: bool = False, dry_run: bool = False,
              arch: str = "amd64", emit: Callable[[dict], None] = lambda e: None,
              confirm: Callable[[RenewOutcome], bool] = lambda o: True) -> RenewOutcome:
    """Everything `kdeploy certs renew` does on connected transports (the CLI connects, asks,
    prints and verifies). Holds the cluster's run lock and, unless a dry run, the hosts'."""
    from kdeploy.execute import run
    from kdeploy.execute.steps import Policy
    from kdeploy.plan.planner import plan as make_plan
    from kdeploy.verbs.membership import refuse_joiners, with_membership
    from kdeploy.verbs.upgrade import api_runner, describe_steps, refuse_unhealthy

    batch = batch or Policy("batch", size=1)
    out = RenewOutcome()
    tm = out.timings
    t0 = time.monotonic()
    with run.locked(cluster, transports, "certs renew", hosts=not dry_run):
        # 1. what would be reissued and what would change, in a scratch copy of the state dir
        scratch = run.prepare(cluster, artifacts_dir=artifacts_dir, need_artifacts=False, arch=arch,
                              write_state=False, renew=renew_all)
        record = run.RunRecord(scratch.state_dir, "certs-renew")
        try:
            facts, observed = run.gather_checked(scratch, transports, record, arch)
            refuse_joiners(scratch.etcd, "a certificate renewal")
            p = make_plan(scratch.desired, observed)
            foreign = foreign_changes(p, scratch)
            if foreign:
                raise PreflightError(
                    "the hosts differ from the inventory in more than certificates; nothing was "
                    "changed:\n" + "\n".join(f"  {f}" for f in foreign[:10])
                    + (f"\n  ... and {len(foreign) - 10} more" if len(foreign) > 10 else ""),
                    "converge them first with `kdeploy up` (or `kdeploy upgrade`), then renew")
            refuse_new_roots(scratch.pki)
            out.renewed = {n: scratch.pki.reasons[n] for n in scratch.pki.issued}
            steps = renew_steps(cluster, batch)
            out.plan, out.steps = p, describe_steps(steps, p)
            record.write("plan.json", {**p.to_dict(), "steps": out.steps, "renewed": out.renewed})
            tm["facts + plan"] = time.monotonic() - t0
            if dry_run or (p.empty and not out.renewed):
                return out
            api = api_runner(cluster, transports)
            refuse_unhealthy(cluster, transports, api, force=force)
            if not confirm(out):
                raise KdeployError("certificate renewal cancelled; nothing was changed")
            # 2. the same for real: reissue in the state dir, plan against the same observation
            t = time.monotonic()
            dep = out.deployment = run.prepare(cluster, artifacts_dir=artifacts_dir,
                                               need_artifacts=False, arch=arch, renew=renew_all)
            dep.etcd = scratch.etcd
            dep.desired = with_membership(dep.desired, cluster, scratch.etcd)
            out.renewed = {n: dep.pki.reasons[n] for n in dep.pki.issued}
            p = out.plan = make_plan(dep.desired, observed)
            foreign = foreign_changes(p, dep)
            if foreign:    # cannot happen unless the inventory changed under us
                raise ApplyError("the plan changed between the preview and the renewal: "
                                 + "; ".join(foreign[:5]), "run `kdeploy certs renew` again")
            out.steps = describe_steps(steps, p)
            record.write("renewed.json", {"renewed": out.renewed, "steps": out.steps})
            tm["reissue"] = time.monotonic() - t
            if not p.empty:
                out.result = run.rollout(dep, transports, p, steps, record, emit, api, tm)
            run.record_images(dep)              # with --artifacts: the hosts have that set's images
            run.write_admin_kubeconfig(dep)     # the deployer's admin.conf carries a renewed cert
            return out
        finally:
            tm["total"] = time.monotonic() - t0
            record.write("timings.json", tm)
            record.close()
