"""`kdeploy upgrade`: move a running cluster to the inventory's Kubernetes version.

The inventory stays the one source of truth (it names the target version; --to confirms it).
In order: preflight from facts (installed versions on every host, skew policy, etcd and node
health) -> an etcd snapshot saved on the deployer and checked -> etcd members one at a time,
each after the whole etcd cluster is healthy -> control-plane hosts one at a time, each gated
on its /readyz and on the API through its load balancer -> image archives on every node ->
addons -> control-plane nodes one at a time, then workers in batches: cordon, drain (PDBs
respected), containerd/kubelet/kube-proxy, Ready at the new version, uncordon.

A failure stops the rollout and uncordons what it cordoned; the nodes kdeploy cordoned are
kept in the state dir (cordoned.json) so a run killed with SIGKILL is finished by the next run.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from kdeploy.errors import ApplyError, KdeployError, PreflightError
from kdeploy.execute.cordons import CordonLedger
from kdeploy.components.apiserver import KUBECTL
from kdeploy.components.etcd import ETCDCTL
from kdeploy.components import gates as component_gates
from kdeploy.execute.steps import PARALLEL, SERIAL, Hook, Policy, Step
from kdeploy.model import Cluster, Role, defaults
from kdeploy.pki import paths
from kdeploy.plan.resources import Phase

DRAIN_TIMEOUT = 300
READY_TIMEOUT = 300


def _v(version: str) -> tuple[int, int, int]:
    m = re.match(r"v?(\d+)\.(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else (0, 0, 0)


def api_server(cluster: Cluster) -> str:
    """Where kubectl on a control-plane host reaches the API: its node-local LB (whichever
    apiserver answers), or, with an external endpoint (no node-local LB), its own apiserver."""
    if cluster.node_local_lb:
        return f"https://127.0.0.1:{defaults.API_LB_PORT}"
    return f"https://127.0.0.1:{defaults.APISERVER_PORT}"


def kubectl_argv(cluster: Cluster, *args: str) -> list[str]:
    return [KUBECTL, f"--kubeconfig={paths.ADMIN_CONF}", f"--server={api_server(cluster)}", *args]


# ---------------------------------------------------------------------------- versions (pure)

def installed_versions(facts: Mapping) -> dict[str, dict[str, str]]:
    """{host: {component: version}} of the binaries installed now (from facts)."""
    return {h: dict(f.versions) for h, f in facts.items() if getattr(f, "versions", None)}


def version_drift(cluster: Cluster, facts: Mapping) -> dict[str, list[str]]:
    """Hosts whose installed Kubernetes/etcd versions differ from the inventory's: `up` never
    changes them (that is `upgrade`'s job). {host: ["kube-apiserver 1.36.3", ...]}."""
    from kdeploy.artifacts import versions_for
    want = {"kube-apiserver": cluster.version, "kubelet": cluster.version,
            "kube-proxy": cluster.version, "etcd": versions_for(cluster.version).etcd}
    out: dict[str, list[str]] = {}
    for h, vs in installed_versions(facts).items():
        diff = [f"{c} {v}" for c, v in sorted(vs.items()) if c in want and v != want[c]]
        if diff:
            out[h] = diff
    return out


def skew_problems(cluster: Cluster, facts: Mapping, target: str) -> list[str]:
    """What the upstream version-skew policy forbids for this upgrade, naming the hosts:
    no downgrade, no skipped minor on the control plane, kubelet/kube-proxy at most 3 minors
    older than the new apiserver."""
    t = _v(target)
    out: list[str] = []
    vers = installed_versions(facts)
    cp = {h: vs["kube-apiserver"] for h, vs in vers.items() if "kube-apiserver" in vs}
    if not cp:
        return ["no kube-apiserver is installed on the control-plane hosts: this is not a running "
                "cluster; deploy it with `kdeploy up`"]
    for comp in ("kube-apiserver", "kubelet", "kube-proxy"):
        newer = sorted(h for h, vs in vers.items() if comp in vs and _v(vs[comp]) > t)
        if newer:
            out.append(f"{comp} on {', '.join(newer)} is newer than {target}: downgrades are not "
                       "supported (restore an etcd snapshot taken before the upgrade instead)")
    old = sorted(h for h, v in cp.items() if _v(v)[:2] < (t[0], t[1] - 1))
    if old:
        out.append(f"kube-apiserver on {', '.join(old)} runs {', '.join(sorted({cp[h] for h in old}))}: "
                   f"an upgrade to {target} would skip a minor version; upgrade to "
                   f"{t[0]}.{t[1] - 1} first")
    for comp in ("kubelet", "kube-proxy"):
        lag = sorted(h for h, vs in vers.items() if comp in vs and _v(vs[comp])[:2] < (t[0], t[1] - 3))
        if lag:
            out.append(f"{comp} on {', '.join(lag)} is more than 3 minor versions older than "
                       f"{target} (version-skew policy): upgrade those nodes step by step")
    return out


# ---------------------------------------------------------------------------- steps

def wait_ready(ctx, node: str, version: str, timeout: float = READY_TIMEOUT) -> None:
    """Wait until the Node is Ready and its kubelet reports `version`."""
    want = f"v{version} True"
    jp = ('jsonpath={.status.nodeInfo.kubeletVersion} '
          '{.status.conditions[?(@.type=="Ready")].status}')
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        r = ctx.api(["get", "node", node, "-o", jp], timeout=30, check=False)
        last = r.out.strip() if r.ok else (r.err or r.out).strip()
        if last == want:
            return
        time.sleep(2)
    raise ApplyError(f"node {node} is not Ready at v{version} after {int(timeout)} s "
                     f"(now: {last or '?'})",
                     f"look at its kubelet: journalctl -u kubelet on {node}")


@dataclass
class NodeHooks:
    """cordon + drain before a node's turn; Ready at the new version + uncordon after."""
    cluster: Cluster
    ledger: CordonLedger
    version: str
    drain_timeout: int = DRAIN_TIMEOUT
    ready_timeout: int = READY_TIMEOUT
    operator_cordoned: set[str] = field(default_factory=set)

    def drain(self, ctx, node: str) -> None:
        r = ctx.api(["get", "node", node, "-o", "jsonpath={.spec.unschedulable}"])
        if r.out.strip() == "true" and node not in self.ledger.nodes():
            self.operator_cordoned.add(node)   # cordoned by someone else: leave it cordoned
        else:
            self.ledger.add(node)              # recorded before the cordon: a killed run is finished
            ctx.push_cleanup(f"cordon:{node}", f"uncordon {node}", lambda: self._uncordon(ctx, node))
        r = ctx.api(["drain", node, "--ignore-daemonsets", "--delete-emptydir-data",
                     "--grace-period=30", f"--timeout={self.drain_timeout}s"],
                    timeout=self.drain_timeout + 60, check=False)
        if not r.ok:
            last = ((r.err or r.out).strip().splitlines() or ["?"])[-1]
            raise ApplyError(f"drain of node {node} did not finish within {self.drain_timeout} s: {last}",
                             "a PodDisruptionBudget may allow no eviction now (kubectl get pdb -A); "
                             "the node was uncordoned; fix it and run `kdeploy upgrade` again")

    def ready(self, ctx, node: str) -> None:
        wait_ready(ctx, node, self.version, self.ready_timeout)

    def uncordon(self, ctx, node: str) -> None:
        if node in self.operator_cordoned:
            return
        self._uncordon(ctx, node)
        ctx.pop_cleanup(f"cordon:{node}")

    def _uncordon(self, ctx, node: str) -> None:
        ctx.api(["uncordon", node], timeout=60)
        self.ledger.remove(node)


def rolling_steps(cluster: Cluster, batch: Policy, *, node_before: tuple[Hook, ...] = (),
                  node_after: tuple[Hook, ...] = ()) -> tuple[Step, ...]:
    """A rolling rollout of whatever the plan changes: etcd members one at a time (the whole
    etcd cluster healthy before the next), the API load balancers, control-plane hosts one at
    a time (readyz, the API through the LB, leaders elected), images and addons, then the
    nodes' runtime and kubelet/kube-proxy: control-plane nodes one at a time, workers in
    `batch`es, each between node_before and node_after hooks. Steps without changes are
    skipped by the engine. `upgrade` (drain hooks) and `certs renew` (Ready hook) use it."""
    etcd = tuple(h.name for h in cluster.etcd)
    cp = tuple(h.name for h in cluster.control_plane)
    workers = tuple(h.name for h in cluster.hosts if not h.has(Role.control_plane))
    gates = component_gates(cluster, rollout=True)   # etcd cluster health, readyz, LB, leaders
    node_hooks = dict(before=tuple(node_before), after=tuple(node_after))
    return (
        Step("os", (Phase.os,), PARALLEL, gates=gates),
        Step("etcd", (Phase.etcd,), SERIAL, hosts=etcd, gates=gates),
        Step("api-lb", (Phase.api_lb,), PARALLEL, gates=gates),
        Step("control-plane", (Phase.control_plane,), SERIAL, hosts=cp, gates=gates),
        Step("images", (Phase.images,), PARALLEL, gates=gates),
        Step("addons", (Phase.addons,), PARALLEL, gates=gates),
        Step("control-plane nodes", (Phase.runtime, Phase.node), SERIAL, hosts=cp, gates=gates,
             **node_hooks),
        Step("workers", (Phase.runtime, Phase.node), batch, hosts=workers, gates=gates, **node_hooks),
    )


def upgrade_steps(cluster: Cluster, hooks: NodeHooks, batch: Policy) -> tuple[Step, ...]:
    return rolling_steps(cluster, batch, node_before=(Hook("drain", hooks.drain),),
                         node_after=(Hook("ready", hooks.ready), Hook("uncordon", hooks.uncordon)))


def describe_steps(steps: tuple[Step, ...], plan) -> list[dict]:
    """The rollout as `upgrade --dry-run` shows it: each step, its policy and hosts."""
    out = []
    for s in steps:
        hosts = s.hosts_with_changes(plan, tuple(dict.fromkeys(c.host for c in plan.changes)))
        if hosts:
            out.append({"step": s.name, "policy": s.policy.describe(), "hosts": hosts,
                        "hooks": [h.name for h in (*s.before, *s.after)]})
    return out


# ---------------------------------------------------------------------------- API and etcd

def api_runner(cluster: Cluster, transports: Mapping) -> Callable:
    """kubectl on the first reachable control-plane host, through its load balancer."""
    host = next(h.name for h in cluster.control_plane if h.name in transports)
    t = transports[host]

    def run(argv, *, timeout: float = 60, check: bool = True):
        return t.run(kubectl_argv(cluster, *argv), timeout=timeout, check=check)
    return run


def finish_cordons(ledger: CordonLedger, api: Callable, emit: Callable) -> list[str]:
    """Uncordon the nodes a killed run left cordoned (kdeploy's own cordons only)."""
    done = []
    for node in ledger.nodes():
        r = api(["uncordon", node], timeout=60, check=False)
        if r.ok or "not found" in (r.err or ""):
            ledger.remove(node)
            done.append(node)
            emit({"event": "cleanup", "what": f"uncordon {node} (left by an interrupted run)",
                  "ok": True})
    return done


def health_problems(cluster: Cluster, transports: Mapping, api: Callable) -> list[str]:
    out = []
    etcd_host = next((h.name for h in cluster.etcd if h.name in transports), None)
    if etcd_host:
        r = transports[etcd_host].run(f"{ETCDCTL} endpoint health --cluster", timeout=60, check=False)
        if not r.ok:
            out.append(f"etcd is not healthy: {(r.err or r.out).strip().splitlines()[-1:] or ['?']}")
    r = api(["get", "nodes", "-o", "json"], timeout=60, check=False)
    if not r.ok:
        out.append(f"the API does not answer: {(r.err or r.out).strip()[-200:]}")
        return out
    try:
        items = json.loads(r.out).get("items", [])
    except ValueError:
        return out + [f"the API's node list is not JSON: {r.out[:200]!r}"]
    for n in items:
        ready = next((c["status"] for c in n.get("status", {}).get("conditions", [])
                      if c.get("type") == "Ready"), "Unknown")
        if ready != "True":
            out.append(f"node {n['metadata']['name']} is not Ready ({ready})")
    return out


def snapshot(cluster: Cluster, transports: Mapping, state_dir: Path, emit: Callable) -> Path:
    """An etcd snapshot from a healthy member, checked, saved 0600 on the deployer (with its
    sha256 and the cluster's identity) before the first change: `kdeploy etcd backup`'s."""
    from kdeploy.verbs.etcd import backup
    return backup(cluster, transports, state_dir, emit=emit).path


def check_target(cluster: Cluster, to: str) -> None:
    if to.lstrip("v") != cluster.version:
        raise KdeployError(
            f"--to {to} does not match the inventory's spec.kubernetes.version {cluster.version}",
            "the inventory is the source of truth: set spec.kubernetes.version to the target "
            "version, then confirm it with --to")


def refuse_skew(cluster: Cluster, facts: Mapping) -> None:
    problems = skew_problems(cluster, facts, cluster.version)
    if problems:
        raise PreflightError("the upgrade is refused; nothing was changed:\n"
                             + "\n".join(f"  {p}" for p in problems),
                             "see https://kubernetes.io/releases/version-skew-policy/")


def refuse_unhealthy(cluster: Cluster, transports: Mapping, api: Callable, *, force: bool) -> None:
    unhealthy = health_problems(cluster, transports, api)
    if unhealthy and not force:
        raise PreflightError("the cluster is not healthy; nothing was changed:\n"
                             + "\n".join(f"  {u}" for u in unhealthy),
                             "fix it first, or pass --force to upgrade anyway")


# ---------------------------------------------------------------------------- the verb

@dataclass
class UpgradeOutcome:
    plan: object
    steps: list[dict]
    deployment: object = None
    snapshot: Path | None = None
    result: object = None
    timings: dict[str, float] = field(default_factory=dict)


def run_upgrade(cluster: Cluster, *, to: str, transports: Mapping, artifacts_dir: Path | None,
                batch: Policy, force: bool = False, dry_run: bool = False, arch: str = "amd64",
                drain_timeout: int = DRAIN_TIMEOUT,
                emit: Callable[[dict], None] = lambda e: None,
                confirm: Callable[[object, list[dict]], bool] = lambda p, s: True) -> UpgradeOutcome:
    """Everything `kdeploy upgrade` does, given connected transports (the CLI connects, prints
    and verifies). Holds the cluster's run lock and, unless a dry run, the hosts' locks."""
    from kdeploy.execute import run
    from kdeploy.plan.planner import plan as make_plan

    check_target(cluster, to)
    t0 = time.monotonic()
    with run.locked(cluster, transports, "upgrade", hosts=not dry_run):
        dep = run.prepare(cluster, artifacts_dir=artifacts_dir, arch=arch)
        record = run.RunRecord(dep.state_dir, "upgrade")
        out = UpgradeOutcome(None, [], deployment=dep)
        tm = out.timings
        try:
            facts, observed = run.gather_checked(dep, transports, record, arch)
            refuse_skew(cluster, facts)
            from kdeploy.verbs.membership import refuse_joiners
            refuse_joiners(dep.etcd, "the upgrade")
            p = out.plan = make_plan(dep.desired, observed)
            hooks = NodeHooks(cluster, CordonLedger(dep.state_dir), cluster.version,
                              drain_timeout=drain_timeout)
            steps = upgrade_steps(cluster, hooks, batch)
            out.steps = describe_steps(steps, p)
            record.write("plan.json", {**p.to_dict(), "steps": out.steps})
            tm["facts + preflight"] = time.monotonic() - t0
            if dry_run:
                return out
            api = api_runner(cluster, transports)
            finish_cordons(hooks.ledger, api, emit)
            if p.empty:
                run.record_images(dep)
                return out
            refuse_unhealthy(cluster, transports, api, force=force)
            if not confirm(p, out.steps):
                raise KdeployError("upgrade cancelled; nothing was changed")
            t = time.monotonic()
            out.snapshot = snapshot(cluster, transports, dep.state_dir, emit)
            tm["etcd snapshot"] = time.monotonic() - t
            out.result = run.rollout(dep, transports, p, steps, record, emit, api, tm)
            run.record_images(dep)   # every host has the new set's images now
            run.write_admin_kubeconfig(dep)
            return out
        finally:
            tm["total"] = time.monotonic() - t0
            record.write("timings.json", tm)
            record.close()
