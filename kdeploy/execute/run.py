"""The lifecycle verbs' orchestration: prepare (local, no hosts) -> connect -> gather facts ->
preflight -> plan -> apply -> verify. Each run leaves a record in the state dir."""
from __future__ import annotations

import ipaddress
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

from kdeploy.errors import ApplyError, PreflightError
from kdeploy.execute import journal
from kdeploy.execute.engine import Engine
from kdeploy.execute.preflight import check_all, ports_for
from kdeploy.model import Cluster, defaults
from kdeploy.model.validate import resolve_path
from kdeploy.plan.desired import desired_state, roles_of
from kdeploy.plan.planner import FileState, Observed, Plan
from kdeploy.plan.resources import HostResources

def state_dir_for(cluster: Cluster) -> Path:
    base = Path(cluster.source).resolve().parent if cluster.source else Path.cwd()
    return base / defaults.STATE_DIRNAME / cluster.name


@dataclass
class Deployment:
    cluster: Cluster
    state_dir: Path
    pki: object
    artifacts: list
    desired: dict[str, HostResources]
    etcd: object = None              # kdeploy.verbs.membership.EtcdView, once facts are in
    images: object = None            # kdeploy.render.images.Images the rendered files name
    images_from_set: bool = False    # they come from a resolved artifact set (record_images)


def prepare(cluster: Cluster, *, artifacts_dir: Path | None = None, need_artifacts: bool = True,
            arch: str = "amd64", write_state: bool = True, renew=False) -> Deployment:
    """Everything that happens on this machine only: PKI, artifacts, rendering.
    write_state=False (plan, verify): the state dir is left as it is; what `up` would issue
    (missing or expiring certificates, new pod CIDRs) is computed in a private scratch copy.
    renew: leaf certificates to reissue although valid (True: all; `kdeploy certs renew`)."""
    from kdeploy.pki import ensure_pki
    from kdeploy.execute.removed import refuse_removed
    state = state_dir_for(cluster)
    refuse_removed(cluster, state, forget_absent=write_state)
    cluster = pin_pod_cidrs(cluster, state, write=write_state)
    pki = ensure_pki(cluster, state if write_state else _scratch_state(state), renew=renew)
    arts: list = []
    a_dir = artifacts_dir
    if a_dir is None and cluster.spec.artifacts.dir:  # relative to the inventory, like key files
        a_dir = resolve_path(cluster.spec.artifacts.dir, cluster)
    resolved = need_artifacts or a_dir is not None
    if resolved:
        from kdeploy.artifacts import resolve
        from kdeploy.artifacts.lock import LOCK_NAME, ChecksumLock
        images = cluster.spec.artifacts.images
        arts = resolve(cluster.version, arch, offline_dir=a_dir, mirror=cluster.spec.artifacts.mirror,
                       lock=ChecksumLock(state / LOCK_NAME, write=write_state),
                       images_dir=resolve_path(images, cluster) if images else None)
    images = images_in_use(cluster, state, arts if resolved else None)
    desired = desired_state(cluster, pki=pki, artifacts=arts, images=images)
    return Deployment(cluster, state, pki, arts, desired, images=images, images_from_set=resolved)


IMAGES_RECORD = "images.json"


def images_in_use(cluster: Cluster, state: Path, artifacts: list | None):
    """The image refs the rendered files name (kdeploy.render.images.Images). With a resolved
    artifact set: that set's (its manifest's refs for the archives it holds, else upstream's).
    Without one (verify, certs, a plan without --artifacts): those of the state dir's record
    (record_images) when it is of this Kubernetes version, so such a verb renders what the
    nodes have, never upstream's names for images kdeploy imported under its own; else
    upstream's."""
    from kdeploy.render.images import from_record, images_for, images_of_artifacts
    if artifacts is not None:
        return images_of_artifacts(cluster.version, artifacts)
    try:
        recorded = from_record((state / IMAGES_RECORD).read_text(), cluster.version)
    except OSError:
        recorded = None
    return recorded or images_for(cluster.version)


def record_images(dep: Deployment) -> None:
    """Record the image refs of dep's artifact set in the state dir (images.json, for
    images_in_use) once the hosts have them: after an apply that succeeded, or a plan with
    nothing to change. Never before: a run refused or failed later (a downgrade, an unhealthy
    etcd) must not make the next verify name images the nodes do not have."""
    from kdeploy.pki.crypto import write_atomic
    from kdeploy.render.images import record_text
    if not dep.images_from_set or dep.images is None:
        return
    path = dep.state_dir / IMAGES_RECORD
    text = record_text(dep.images, dep.cluster.version)
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    write_atomic(path, text.encode(), 0o600)


def _scratch_state(state: Path) -> Path:
    """A private (0700) copy of the state dir's PKI, removed when this process exits."""
    import atexit
    import shutil
    import tempfile
    tmp = Path(tempfile.mkdtemp(prefix="kdeploy-plan-"))
    atexit.register(shutil.rmtree, tmp, True)
    if (state / "pki").is_dir():
        shutil.copytree(state / "pki", tmp / "pki", symlinks=True)
    return tmp


def pin_pod_cidrs(cluster: Cluster, state: Path, *, write: bool = True) -> Cluster:
    """Per-node pod CIDRs stay where they were first allocated: kept in the state dir
    (pod-cidrs.json), so removing or reordering hosts never moves a running node's pods.
    Hosts with an explicit podCIDR keep it; new hosts get free subnets."""
    from kdeploy.pki.crypto import write_atomic
    path = state / "pod-cidrs.json"
    try:
        saved = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        saved = {}
    if not isinstance(saved, dict):  # a hand-edited file: allocate afresh, never crash
        saved = {}
    pod = cluster.pod_network
    mask = cluster.spec.network.node_cidr_mask_size
    names = {h.name for h in cluster.hosts}
    explicit = {h.pod_cidr for h in cluster.hosts if h.pod_cidr}
    keep: dict[str, str] = {}
    for name, cidr in saved.items():
        try:
            net = ipaddress.ip_network(cidr)
        except (ValueError, TypeError):
            continue
        if (name in names and net.version == pod.version and net.subnet_of(pod)
                and net.prefixlen == mask and str(net) not in keep.values()
                and not any(net.overlaps(ipaddress.ip_network(e)) for e in explicit)):
            keep[name] = str(net)
    pinned = cluster.with_pod_cidrs(keep) if keep else cluster
    current = pinned.node_pod_cidrs
    if current != saved and write:
        write_atomic(path, (json.dumps(current, indent=1, sort_keys=True) + "\n").encode(), 0o600)
    return pinned


def _paths_units(res: HostResources) -> tuple[list[str], list[str]]:
    p = [f.path for f in res.files] + [b.path for b in res.binaries] + [journal.PATH]
    return p, [u.name for u in res.units]


def gather(dep: Deployment, transports: Mapping) -> tuple[dict, dict[str, Observed]]:
    """Facts and observed state of every host, in parallel; one error names every failed host."""
    from kdeploy.components.etcd import ETCDCTL
    from kdeploy.facts import gather_all
    per_host = {n: _paths_units(dep.desired[n]) for n in transports}
    facts = gather_all(transports, paths={n: p for n, (p, _) in per_host.items()},
                       units={n: u for n, (_, u) in per_host.items()},
                       ports={n: sorted(ports_for(dep.cluster, dep.cluster.host(n))) for n in transports},
                       etcdctl={h.name: ETCDCTL for h in dep.cluster.etcd},
                       # the files holding blocks and the journal: read with the facts, not in
                       # a second round trip per host
                       contents={n: [b.path for b in dep.desired[n].blocks] + [journal.PATH]
                                 for n in transports})
    from kdeploy.verbs.membership import etcd_view, with_membership
    dep.etcd = etcd_view(dep.cluster, facts)
    dep.desired = with_membership(dep.desired, dep.cluster, dep.etcd)
    from kdeploy.transport.pool import group_of
    group = group_of(transports)
    if group is not None:  # every host's files in one call (ansible: one run)
        got = read_many(group, {n: observe_paths(dep.desired[n], facts[n]) for n in transports})
        return facts, {n: observe(_Read(n, got[n]), dep.desired[n], facts[n]) for n in transports}
    with ThreadPoolExecutor(max_workers=min(32, len(transports) or 1)) as ex:
        observed = dict(zip(transports, ex.map(
            lambda n: observe(transports[n], dep.desired[n], facts[n]), transports)))
    return facts, observed


def observe_paths(res: HostResources, facts) -> list[str]:
    """The files observe() reads: old text of changed non-secret files (for diffs), files
    holding blocks, the journal."""
    have = {p for p in [f.path for f in res.files] if facts.sha256(p)}
    want = [f.path for f in res.files if not f.secret and f.path in have
            and facts.sha256(f.path) != f.sha256] + [b.path for b in res.blocks]
    if facts.sha256(journal.PATH):
        want.append(journal.PATH)
    return [p for p in dict.fromkeys(want) if p not in facts.contents]   # the facts read these




def read_many(group, paths: Mapping[str, list[str]]) -> dict[str, dict[str, bytes | None]]:
    """{host: {path: bytes or None (missing)}} of every host's paths, in one group call."""
    import shlex
    from kdeploy.errors import TransportError
    from kdeploy.facts.parse import READ_FILES, parse_read
    cmds = {h: "set -- " + " ".join(shlex.quote(p) for p in ps) + "\n" + READ_FILES + "; echo end"
            for h, ps in paths.items() if ps}
    res = group.run_many(cmds, timeout=120)
    out: dict[str, dict[str, bytes | None]] = {h: {} for h in paths}
    for h, r in res.items():
        if not hasattr(r, "rc"):
            raise r
        got = parse_read(r.stdout.decode("ascii", "replace"), paths[h]) if r.rc == 0 else None
        if got is None:
            raise TransportError(f"host {h}: cannot read {', '.join(paths[h])} (exit code {r.rc})")
        out[h].update(got)
    return out


class _Read:
    """A read-only stand-in transport for observe(): gets answered from read_many's results."""
    def __init__(self, host: str, files: Mapping[str, bytes | None]):
        self.host, self.files = host, files

    def get(self, path: str) -> bytes | None:
        return self.files.get(path)


def observe(t, res: HostResources, facts) -> Observed:
    files: dict[str, FileState] = {}
    for path in [f.path for f in res.files] + [b.path for b in res.binaries]:
        sha = facts.sha256(path)
        if sha:
            st = facts.file_stat.get(path, {})
            files[path] = FileState(sha, st.get("mode"), st.get("owner"), st.get("group"))
    # old text of changed non-secret files (for diffs) and of files holding blocks
    want = [f.path for f in res.files if not f.secret and f.path in files
            and files[f.path].sha256 != f.sha256] + [b.path for b in res.blocks]
    def read(path: str) -> bytes | None:   # what the facts read already, else from the host
        return facts.contents[path] if path in facts.contents else t.get(path)
    contents = {}
    for path in dict.fromkeys(want):
        data = read(path)
        if data is not None:
            contents[path] = data
    pending = journal.parse(read(journal.PATH)) if facts.sha256(journal.PATH) else frozenset()
    units = {u.name: (facts.unit(u.name).get("active", "inactive"),
                      facts.unit(u.name).get("enabled", "not-found")) for u in res.units}
    return Observed(files=files, contents=contents, units=units, pending=pending)


def preflight(dep: Deployment, facts: dict, arch: str = "amd64") -> None:
    problems = check_all(dep.cluster, facts, arch)
    for where, what in (dep.etcd.problems if dep.etcd is not None else ()):
        problems.setdefault(where, []).append(what)
    if problems:
        lines = [f"  {h}: {p}" for h, ps in problems.items() for p in ps]
        raise PreflightError(f"preflight failed on {len(problems)} host(s); nothing was changed:\n"
                             + "\n".join(lines), "fix the hosts above and run again")


class RunRecord:
    """state_dir/runs/<timestamp>/{plan.json, events.jsonl, results.json}; no secrets in them."""

    def __init__(self, state_dir: Path, verb: str):
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        self.dir = state_dir / "runs" / f"{stamp}-{verb}"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._events = open(self.dir / "events.jsonl", "a", encoding="utf-8")

    def tee(self, emit: Callable[[dict], None]) -> Callable[[dict], None]:
        """An event sink that records each event and passes it on, one at a time (the engine
        emits from its worker threads)."""
        lock = threading.Lock()

        def sink(e: dict) -> None:
            with lock:
                self.event(e)
                emit(e)
        return sink

    def event(self, e: dict) -> None:
        self._events.write(json.dumps({"t": round(time.time(), 3), **e}) + "\n")
        self._events.flush()

    def write(self, name: str, data: dict) -> None:
        (self.dir / name).write_text(json.dumps(data, indent=2, default=str) + "\n")

    def close(self) -> None:
        self._events.close()


def locked(cluster: Cluster, transports: Mapping, verb: str, *, hosts: bool = True):
    """The locks a verb that changes hosts holds: the state dir's run lock, then the hosts'
    (hosts=False: a dry run, which writes nothing on the hosts)."""
    from contextlib import ExitStack
    from kdeploy.execute.hostlock import HostLocks
    from kdeploy.execute.lock import RunLock
    state = state_dir_for(cluster)
    stack = ExitStack()
    stack.enter_context(RunLock(state, verb))
    if hosts:
        try:
            stack.enter_context(HostLocks(transports, state))
        except BaseException:
            stack.close()
            raise
    return stack


def gather_checked(dep: Deployment, transports: Mapping, record: RunRecord,
                   arch: str = "amd64") -> tuple[dict, dict[str, Observed]]:
    """gather() + the facts in the run record + the host preflight."""
    facts, observed = gather(dep, transports)
    record.write("facts.json", {h: f.to_dict() for h, f in facts.items()})
    preflight(dep, facts, arch)
    return facts, observed


def write_admin_kubeconfig(dep: Deployment) -> Path:
    from kdeploy.pki.crypto import write_atomic
    path = dep.state_dir / "admin.conf"
    write_atomic(path, dep.pki.admin_kubeconfig(), 0o600)
    return path


def rollout(dep: Deployment, transports: Mapping, the_plan: Plan, steps, record: RunRecord,
            emit: Callable[[dict], None], api, timings: dict[str, float]):
    """A lifecycle verb's rolling steps on the engine (the steps carry their own gates); the
    result (also of a failed run) goes to the run record, the time to timings["rollout"]."""
    from kdeploy.transport.pool import group_of
    engine = Engine(dep.desired, transports, roles=roles_of(dep.cluster), gates=(),
                    emit=record.tee(emit), api_runner=api, batch=group_of(transports))
    t = time.monotonic()
    result = None
    try:
        result = engine.apply(the_plan, steps)
        return result
    except ApplyError as e:
        result = getattr(e, "result", None)
        raise
    finally:
        timings["rollout"] = time.monotonic() - t
        if result is not None:
            record.write("results.json", {"phases": [ph.__dict__ for ph in result.phases]})


def apply(dep: Deployment, transports: Mapping, the_plan: Plan,
          emit: Callable[[dict], None], steps=None, api_runner=None):
    from kdeploy.components import gates
    from kdeploy.transport.pool import group_of
    # ansible: a whole step's hosts in one ansible-runner run (kdeploy.execute.batch)
    engine = Engine(dep.desired, transports, roles=roles_of(dep.cluster), gates=gates(dep.cluster),
                    emit=emit, api_runner=api_runner, batch=group_of(transports))
    return engine.apply(the_plan, steps)
