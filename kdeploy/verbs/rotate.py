"""`kdeploy certs rotate-ca`: replace the cluster's CAs while the cluster keeps serving.

Kubernetes' manual CA rotation
(https://kubernetes.io/docs/tasks/tls/manual-rotation-of-ca-certificates/) in three stages.
Each stage is a desired state the PKI store renders (kdeploy.pki.rotation: the stage lives in
pki/rotate-ca.json, so `up` and `plan` render it too) and is rolled out like an upgrade without
drains: etcd members one at a time, the control plane one host at a time, then the nodes, each
host gated (etcd cluster health, /readyz, the API through its LB, leaders elected):

    trust    trust files and kubeconfigs hold old+new; leaves still signed by the old CA;
             then: every kube-root-ca.crt ConfigMap carries both, CoreDNS restarted
    reissue  every leaf and kubeconfig client certificate signed by the new CA
    drop     trust only the new CA; then: ConfigMaps carry only the new CA, CoreDNS restarted;
             the new CA becomes the CA, the old pair is kept as pki/<ca>.old-<start>.crt/.key

The stage is advanced only after its rollout and follow-ups finished, so running the command
again after a failure (or SIGKILL) at any point continues: the stage's plan holds what is
left (an empty plan when it was done), and its follow-ups are repeated.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from kdeploy.errors import ApplyError, KdeployError
from kdeploy.model import Cluster
from kdeploy.pki import PKIError, rotation

ROOT_CA_TIMEOUT = 300
COREDNS_TIMEOUT = 240
NODE_TIMEOUT = 120


def parse_cas(names: list[str] | None) -> tuple[str, ...]:
    """--ca values (cluster, etcd, front-proxy) -> CA names in the state dir; none: all three."""
    if not names:
        return rotation.ALL_CAS
    out = []
    for n in names:
        if n not in rotation.CA_NAMES:
            raise KdeployError(f"unknown CA {n!r}",
                               f"name one of: {', '.join(rotation.CA_NAMES)} (or none for all three)")
        out.append(rotation.CA_NAMES[n])
    return tuple(c for c in rotation.ALL_CAS if c in out)


def node_renewed(ctx, node: str, *, timeout: float = NODE_TIMEOUT) -> None:
    """After a node's kubelet restarted with its new kubeconfig: its Lease is renewed again
    (the kubelet authenticates with what it now holds) and the node is Ready."""
    jp_lease = "jsonpath={.spec.renewTime}"
    jp_ready = 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'
    first = ctx.api(["-n", "kube-node-lease", "get", "lease", node, "-o", jp_lease], timeout=30,
                    check=False)
    seen = first.out.strip() if first.ok else ""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        r = ctx.api(["-n", "kube-node-lease", "get", "lease", node, "-o", jp_lease], timeout=30,
                    check=False)
        renewed = r.ok and r.out.strip() not in ("", seen)
        if renewed:
            r = ctx.api(["get", "node", node, "-o", jp_ready], timeout=30, check=False)
            last = r.out.strip() if r.ok else (r.err or r.out).strip()[-200:]
            if last == "True":
                return
        else:
            last = "lease not renewed since the restart"
        time.sleep(2)
    raise ApplyError(f"node {node}: its kubelet did not report again within {int(timeout)} s "
                     f"after the restart ({last})",
                     f"look at its kubelet: journalctl -u kubelet on {node}; then run the same "
                     "command again")


def rotate_steps(cluster: Cluster) -> tuple:
    """The rollout of one stage: `upgrade`'s order without drains (a restarted kubelet keeps
    its pods); each node's kubelet must report again before the next node."""
    from kdeploy.execute.steps import SERIAL, Hook
    from kdeploy.verbs.upgrade import rolling_steps
    return rolling_steps(cluster, SERIAL, node_after=(Hook("kubelet reports", node_renewed),))


def pem_fingerprints(pem: bytes | str) -> set[str]:
    """sha256 (hex, of the DER) of every certificate in a PEM bundle."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    if isinstance(pem, str):
        pem = pem.encode()
    try:
        return {c.fingerprint(hashes.SHA256()).hex() for c in x509.load_pem_x509_certificates(pem)}
    except ValueError:
        return set()


def wait_root_ca(api: Callable, want: set[str], *, timeout: float = ROOT_CA_TIMEOUT,
                 emit: Callable = lambda e: None) -> int:
    """Until every namespace's kube-root-ca.crt ConfigMap holds exactly the CAs `want`
    (controller-manager publishes its --root-ca-file there). Returns how many there are."""
    deadline = time.monotonic() + timeout
    last = "?"
    while True:
        r = api(["get", "configmaps", "-A", "--field-selector=metadata.name=kube-root-ca.crt",
                 "-o", "json"], timeout=60, check=False)
        if r.ok:
            try:
                items = json.loads(r.out).get("items", [])
            except ValueError:
                items = []
            stale = [i["metadata"]["namespace"] for i in items
                     if pem_fingerprints(i.get("data", {}).get("ca.crt", "")) != want]
            if items and not stale:
                emit({"event": "rotate-ca", "what": f"kube-root-ca.crt up to date in {len(items)} namespaces"})
                return len(items)
            last = f"not yet in: {', '.join(stale[:5])}" if stale else "no ConfigMaps yet"
        else:
            last = (r.err or r.out).strip()[-200:]
        if time.monotonic() > deadline:
            raise ApplyError(f"the kube-root-ca.crt ConfigMaps do not carry the expected CAs after "
                             f"{int(timeout)} s ({last})",
                             "look at kube-controller-manager's log (journalctl -u "
                             "kube-controller-manager); run the same command again to continue")
        time.sleep(2)


def restart_coredns(api: Callable, *, timeout: float = COREDNS_TIMEOUT,
                    emit: Callable = lambda e: None) -> None:
    """client-go reads its CA file once: CoreDNS (the in-cluster client kdeploy deploys) is
    restarted to read the new kube-root-ca.crt."""
    r = api(["-n", "kube-system", "get", "deploy", "coredns", "-o", "name"], timeout=60, check=False)
    if not r.ok:
        return                       # no CoreDNS (yet): nothing reads the old CA
    api(["-n", "kube-system", "rollout", "restart", "deploy/coredns"], timeout=60)
    r = api(["-n", "kube-system", "rollout", "status", "deploy/coredns", f"--timeout={int(timeout)}s"],
            timeout=timeout + 30, check=False)
    if not r.ok:
        raise ApplyError(f"CoreDNS did not become ready again after its restart: "
                         f"{(r.err or r.out).strip()[-200:]}",
                         "kubectl -n kube-system describe deploy/coredns; run the same command again")
    emit({"event": "rotate-ca", "what": "coredns restarted"})


@dataclass
class RotateOutcome:
    cas: tuple[str, ...] = ()
    resumed_at: str | None = None          # the stage a re-run continued from
    stages: list[dict] = field(default_factory=list)   # [{stage, changes, seconds}]
    archived: list[Path] = field(default_factory=list)
    deployment: object = None
    timings: dict[str, float] = field(default_factory=dict)
    finished: bool = False                 # the last stage done, the new material is the current
    waiting_until: object = None           # service-account key: drop not before this time


def read_rotation(state_dir: Path, file: str = rotation.ROTATION_FILE):
    try:
        return rotation.read(state_dir / "pki", file)
    except rotation.RotationError as e:
        raise PKIError(str(e), "restore it from a backup of the state dir") from None


@dataclass
class _Kind:
    """What differs between rotating the CAs and rotating the service-account key."""
    verb: str                                   # run record / lock name
    file: str                                   # the record in pki/
    what: str                                   # for messages
    begin: Callable                             # (dep) -> Rotation
    finish: Callable                            # (pki_dir, rot) -> [kept files]
    follow_up: Callable                         # (stage, dep, api, emit) -> None
    hold: Callable = lambda rot, now: None      # (rot, now) -> datetime to wait for, or None


def _run_rotation(kind: _Kind, cluster: Cluster, transports: Mapping, *, names: tuple[str, ...],
                  artifacts_dir: Path | None, arch: str, emit: Callable, confirm: Callable,
                  out: RotateOutcome) -> RotateOutcome:
    """The stage loop: render the recorded stage, roll it out, its follow-ups, advance. Holds
    the run lock and the hosts' locks throughout."""
    from datetime import datetime, timezone
    from kdeploy.execute import run
    from kdeploy.execute.cordons import CordonLedger
    from kdeploy.plan.planner import plan as make_plan
    from kdeploy.verbs.membership import refuse_joiners
    from kdeploy.verbs.up import refuse_version_change
    from kdeploy.verbs.upgrade import api_runner, finish_cordons

    tm = out.timings
    t0 = time.monotonic()
    need_artifacts = artifacts_dir is not None or bool(cluster.spec.artifacts.dir)
    with run.locked(cluster, transports, kind.verb):
        state = run.state_dir_for(cluster)
        rot = read_rotation(state, kind.file)
        out.cas = rot.cas if rot is not None else names
        out.resumed_at = rot.stage if rot is not None else None
        api = api_runner(cluster, transports)
        started = False
        while True:
            stage = rot.stage if rot is not None else rotation.TRUST
            if rot is not None:
                until = kind.hold(rot, datetime.now(timezone.utc))
                if until is not None:
                    out.waiting_until = until
                    emit({"event": "rotate-ca", "what": f"{kind.what}: the old one stays trusted "
                          f"until {until:%Y-%m-%d %H:%M} UTC; run the same command again then"})
                    break
            ts = time.monotonic()
            dep = out.deployment = run.prepare(cluster, artifacts_dir=artifacts_dir,
                                               need_artifacts=need_artifacts, arch=arch)
            record = run.RunRecord(dep.state_dir, f"{kind.verb}-{stage}")
            try:
                facts, observed = run.gather_checked(dep, transports, record, arch)
                refuse_version_change(cluster, facts, cluster.source or "INVENTORY")
                refuse_joiners(dep.etcd, f"the {kind.what} rotation")
                if not started:
                    if not confirm(out.cas, out.resumed_at):
                        raise KdeployError(f"{kind.what} rotation cancelled; nothing was changed")
                    started = True
                if rot is None:
                    pending = make_plan(dep.desired, observed)
                    if not pending.empty:
                        emit({"event": "rotate-ca", "what": f"{len(pending.changes)} pending changes "
                              "are rolled out with the first stage"})
                    rot = kind.begin(dep)
                    emit({"event": "rotate-ca", "what": f"new {kind.what} generated"})
                    continue                        # render the trust stage from the new record
                finish_cordons(CordonLedger(dep.state_dir), api, emit)
                p = make_plan(dep.desired, observed)
                record.write("plan.json", {**p.to_dict(), "rotation": rot.to_dict()})
                emit({"event": "rotate-stage", "stage": stage, "changes": len(p.changes)})
                if not p.empty:
                    run.rollout(dep, transports, p, rotate_steps(cluster), record, emit, api, tm)
                run.record_images(dep)
                run.write_admin_kubeconfig(dep)
                if not (rot.rolled_out and p.empty):   # done by the run that rolled it out
                    kind.follow_up(stage, dep, api, emit)
                secs = time.monotonic() - ts
                out.stages.append({"stage": stage, "changes": len(p.changes), "seconds": round(secs, 1)})
                tm[f"stage {stage}"] = secs
                emit({"event": "rotate-stage-done", "stage": stage, "seconds": round(secs, 1)})
                pki_dir = dep.state_dir / "pki"
                if stage == rotation.DROP:
                    out.archived = kind.finish(pki_dir, rot)
                    out.finished = True
                    break
                rot = rotation.mark_rolled_out(pki_dir, rot)
                if kind.hold(rot, datetime.now(timezone.utc)) is None:
                    rot = rotation.advance(pki_dir, rot)
            finally:
                record.close()
        tm["total"] = time.monotonic() - t0
        return out


def run_rotate_ca(cluster: Cluster, *, transports: Mapping, cas: tuple[str, ...] | None = None,
                  artifacts_dir: Path | None = None, arch: str = "amd64",
                  emit: Callable[[dict], None] = lambda e: None,
                  confirm: Callable[[tuple[str, ...], str | None], bool] = lambda cas, at: True
                  ) -> RotateOutcome:
    """Everything `kdeploy certs rotate-ca` does on connected transports (the CLI connects,
    confirms, prints and verifies). confirm(cas, resumed_stage) is asked before the first
    change."""
    from kdeploy.execute import run
    from kdeploy.model import defaults
    from kdeploy.pki.identities import CLUSTER_CA
    from kdeploy.pki.store import CA_KEY_TYPE

    rot = read_rotation(run.state_dir_for(cluster))
    if rot is not None and cas is not None and set(cas) != set(rot.cas):
        names = {v: k for k, v in rotation.CA_NAMES.items()}
        raise KdeployError(
            f"a rotation of {', '.join(names[c] for c in rot.cas)} is in progress "
            f"(stage {rot.stage}); finish it first",
            "run `kdeploy certs rotate-ca` again without --ca (or with the same --ca)")
    names = cas or rotation.ALL_CAS

    def begin(dep):
        return rotation.begin(dep.state_dir / "pki", names, {s.name: s.cn for s in dep.pki.table.cas},
                              days=defaults.CA_VALIDITY_DAYS, kind=CA_KEY_TYPE)

    def follow_up(stage, dep, api, emit):
        rot = read_rotation(dep.state_dir)
        if rot is not None and CLUSTER_CA in rot.cas and stage in (rotation.TRUST, rotation.DROP):
            wait_root_ca(api, pem_fingerprints(dep.pki.trust_bundle(CLUSTER_CA)), emit=emit)
            restart_coredns(api, emit=emit)

    kind = _Kind("rotate-ca", rotation.ROTATION_FILE, "CAs", begin, rotation.finish, follow_up)
    return _run_rotation(kind, cluster, transports, names=names, artifacts_dir=artifacts_dir,
                         arch=arch, emit=emit, confirm=confirm, out=RotateOutcome())


def parse_duration(text: str):
    """`24h`, `90m`, `3600s`, `0` -> timedelta."""
    import re
    from datetime import timedelta
    m = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", str(text))
    if not m:
        raise KdeployError(f"duration {text!r} is not understood", "write e.g. 24h, 90m, 3600s or 0")
    n, unit = int(m.group(1)), m.group(2) or "s"
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    return timedelta(**{units[unit]: n})


def run_rotate_sa_key(cluster: Cluster, *, transports: Mapping, drop_after,
                      artifacts_dir: Path | None = None, arch: str = "amd64",
                      emit: Callable[[dict], None] = lambda e: None,
                      confirm: Callable[[tuple[str, ...], str | None], bool] = lambda n, at: True
                      ) -> RotateOutcome:
    """`kdeploy certs rotate-sa-key`: the same three stages for the service-account key.
    trust: sa.pub lists old+new; reissue: the new key signs (CoreDNS restarted: its token is
    then signed by the new key); drop, once `drop_after` passed since the reissue stage was
    rolled out (kubelet refreshes every pod's projected token within 24 h): sa.pub holds only
    the new key. Before that the run stops and says when to run it again."""
    from datetime import datetime
    from kdeploy.pki.store import SA_KEY_TYPE

    def begin(dep):
        return rotation.begin_sa(dep.state_dir / "pki", kind=SA_KEY_TYPE)

    def follow_up(stage, dep, api, emit):
        if stage == rotation.REISSUE:
            restart_coredns(api, emit=emit)

    def hold(rot, now):
        if rot.stage != rotation.REISSUE or not rot.rolled_out:
            return None
        until = datetime.fromisoformat(rot.rolled_out) + drop_after
        return until if now < until else None

    kind = _Kind("rotate-sa-key", rotation.SA_ROTATION_FILE, "service-account key", begin,
                 rotation.finish_sa, follow_up, hold)
    return _run_rotation(kind, cluster, transports, names=(rotation.SA,), artifacts_dir=artifacts_dir,
                         arch=arch, emit=emit, confirm=confirm, out=RotateOutcome())
