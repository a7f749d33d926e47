"""`kdeploy etcd backup | restore`: the cluster's store saved to and restored from the deployer.

backup: a snapshot taken on a healthy member (`etcdctl snapshot save`), checked there with
`etcdutl snapshot status`, streamed to the deployer (never whole in memory), verified by sha256
end to end, written 0600 with `<file>.sha256` and `<file>.json` (the cluster's identity: name,
etcd cluster ID, members, revision, Kubernetes version) beside it; old snapshots in the state
dir are pruned to --keep.

restore: the snapshot's sha256 is checked on the deployer, it is uploaded to every member and
restored into a scratch dir on one of them (`etcdutl snapshot restore` verifies the integrity
hash etcd appends) before anything stops; a healthy cluster is refused unless forced. Then: the
control plane stops, etcd stops, every member's data dir is moved aside and restored from the
snapshot (a new cluster token; the revision bumped and marked compacted so watchers relist
instead of seeing stale data), the members start together, then the control plane, then every
kubelet restarts (so pods deleted after the snapshot are finished, not left terminating). A journal
in the state dir (restore.json) and a marker per member make a re-run finish an interrupted
restore with the same token.
"""
from __future__ import annotations

import json
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

from kdeploy.artifacts.layout import sha256_file
from kdeploy.components.etcd import ETCDCTL
from kdeploy.errors import ApplyError, KdeployError, PreflightError
from kdeploy.model import Cluster, defaults

BACKUP_DIR = f"{defaults.KDEPLOY_DIR}/backups"          # on the member, removed after the copy
RESTORE_DIR = f"{defaults.KDEPLOY_DIR}/restore"
ETCDUTL = f"{defaults.BIN_DIR}/etcdutl"
ETCD_OWNER = f"{defaults.ETCD_USER}:{defaults.ETCD_USER}"
CONTROL_PLANE_UNITS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
BUMP_REVISION = 1_000_000_000     # well past any revision a watcher has seen (etcd's docs' value)
KEEP = 10


def _last(r) -> str:
    return ((r.err or r.out).strip().splitlines() or ["?"])[-1]


def healthy_member(cluster: Cluster, transports: Mapping) -> str:
    """The first etcd host whose own member answers (the snapshot is taken there)."""
    tried = []
    for h in cluster.etcd:
        t = transports.get(h.name)
        if t is None:
            continue
        r = t.run(f"{ETCDCTL} endpoint health", timeout=30, check=False)
        if r.ok:
            return h.name
        tried.append(f"{h.name}: {_last(r)}")
    raise ApplyError("no healthy etcd member to take a snapshot from:\n  " + "\n  ".join(tried or ["none reachable"]),
                     "look at etcd on the members: journalctl -u etcd")


# ------------------------------------------------------------------------------------ backup

@dataclass
class Backup:
    path: Path
    sha256: str
    bytes: int
    host: str
    identity: dict
    seconds: float = 0.0
    pruned: list[str] = field(default_factory=list)


def backup(cluster: Cluster, transports: Mapping, state_dir: Path, *, out: Path | None = None,
           keep: int = KEEP, emit: Callable[[dict], None] = lambda e: None) -> Backup:
    from kdeploy.pki.crypto import write_atomic
    t0 = time.monotonic()
    host = healthy_member(cluster, transports)
    t = transports[host]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"etcd-{cluster.name}-{stamp}.db"
    remote = f"{BACKUP_DIR}/{name}"
    q = shlex.quote(remote)
    r = t.run(f"mkdir -p -m 0700 {BACKUP_DIR} && {ETCDCTL} snapshot save {q} >/dev/null && chmod 0600 {q} "
              f"&& {ETCDUTL} snapshot status {q} -w json && sha256sum {q} && {ETCDCTL} endpoint status -w json "
              f"&& {ETCDCTL} member list -w json", timeout=600, check=False)
    try:
        if not r.ok:
            raise ApplyError(f"the etcd snapshot on {host} failed or does not check out: {_last(r)}",
                             "look at etcd's health (etcdctl endpoint health --cluster) and run again")
        lines = r.out.strip().splitlines()
        status = json.loads(lines[0])
        remote_sha = lines[1].split()[0]
        ep = json.loads(lines[2])
        members = json.loads(lines[3]).get("members", [])
        local = Path(out) if out else state_dir / "backups" / name
        local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        n = t.get_file(remote, local)
        if n is None:
            raise ApplyError(f"the snapshot {remote} vanished from {host} before it was copied")
        sha = sha256_file(local)
        if sha != remote_sha:
            local.unlink(missing_ok=True)
            raise ApplyError(f"the snapshot copied from {host} does not match its sha256 there "
                             f"({sha} != {remote_sha})", "the copy was corrupted in transit; run again")
    finally:
        t.run(f"rm -f -- {q}", check=False)
    header = (ep[0] if isinstance(ep, list) and ep else {}).get("Status", {}).get("header", {})
    identity = {
        "cluster": cluster.name, "kubernetes": cluster.version, "host": host,
        "taken_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "etcd_cluster_id": format(int(header["cluster_id"]), "x") if "cluster_id" in header else None,
        "members": sorted(m.get("name", "") for m in members),
        "revision": status.get("revision"), "keys": status.get("totalKey"),
        "size": status.get("totalSize"), "hash": status.get("hash"),
        "sha256": sha, "bytes": n,
    }
    write_atomic(Path(f"{local}.sha256"), f"{sha}  {local.name}\n".encode(), 0o600)
    write_atomic(Path(f"{local}.json"), (json.dumps(identity, indent=1) + "\n").encode(), 0o600)
    pruned = prune(state_dir / "backups", cluster.name, keep) if out is None else []
    b = Backup(local, sha, n, host, identity, time.monotonic() - t0, pruned)
    emit({"event": "snapshot", "host": host, "path": str(local), "bytes": n,
          "revision": identity["revision"]})
    return b


def prune(d: Path, cluster: str, keep: int) -> list[str]:
    """Keep the newest `keep` snapshots of this cluster in d (with their .sha256/.json)."""
    snaps = sorted(d.glob(f"etcd-{cluster}-*.db"))
    gone = snaps[:-keep] if keep > 0 else []
    for p in gone:
        for f in (p, Path(f"{p}.sha256"), Path(f"{p}.json")):
            f.unlink(missing_ok=True)
    return [p.name for p in gone]


# ----------------------------------------------------------------------------------- restore

def check_snapshot(path: Path) -> str:
    """The snapshot's sha256, checked against `<file>.sha256` beside it (kdeploy etcd backup
    writes it). Refuses before any connection."""
    path = Path(path)
    if not path.is_file():
        raise KdeployError(f"{path}: no such snapshot file")
    side = Path(f"{path}.sha256")
    if not side.is_file():
        raise KdeployError(f"{path}: no {side.name} beside it, so its integrity cannot be checked",
                           "restore a snapshot taken with `kdeploy etcd backup` (it writes the "
                           f"checksum), or write one: sha256sum {path.name} > {side.name}")
    want = side.read_text().split()[0] if side.read_text().split() else ""
    have = sha256_file(path)
    if have != want:
        raise KdeployError(f"{path}: sha256 {have} does not match {side.name} ({want}): the snapshot "
                           "is corrupted or truncated; nothing was changed",
                           "use another snapshot (ls .kdeploy/<cluster>/backups/)")
    return have


@dataclass
class Restore:
    sha256: str
    token: str
    stamp: str
    seconds: float = 0.0
    resumed: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def _journal_path(state_dir: Path) -> Path:
    return state_dir / "restore.json"


def _parallel(fn, hosts):
    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as ex:
        return list(ex.map(fn, hosts))


def cluster_healthy(cluster: Cluster, transports: Mapping) -> bool:
    from kdeploy.components.apiserver import KUBECTL_LOCAL
    etcd_host = next((h.name for h in cluster.etcd if h.name in transports), None)
    cp = next((h.name for h in cluster.control_plane if h.name in transports), None)
    if etcd_host is None or cp is None:
        return False
    ok = transports[etcd_host].run(f"{ETCDCTL} endpoint health --cluster", timeout=60, check=False).ok
    return ok and transports[cp].run(" ".join(KUBECTL_LOCAL) + " get --raw /readyz", timeout=30,
                                     check=False).ok


def restore(cluster: Cluster, transports: Mapping, state_dir: Path, snapshot: Path, *,
            force: bool = False, confirm: Callable[[], bool] = lambda: True,
            emit: Callable[[dict], None] = lambda e: None) -> Restore:
    """Restore every etcd member from the snapshot (see the module doc). The caller holds the
    locks; every etcd and control-plane host must be reachable."""
    from kdeploy.pki.crypto import write_atomic
    from kdeploy.verbs.membership import peer_url
    t0 = time.monotonic()
    sha = check_snapshot(snapshot)
    missing = [h.name for h in (*cluster.etcd, *cluster.control_plane) if h.name not in transports]
    if missing:
        raise PreflightError(f"a restore needs every etcd and control-plane host; unreachable: "
                             f"{', '.join(sorted(set(missing)))}; nothing was changed")
    jpath = _journal_path(state_dir)
    journal = json.loads(jpath.read_text()) if jpath.is_file() else None
    resumed = bool(journal and journal.get("sha256") == sha)
    if journal and not resumed:
        raise PreflightError(f"an interrupted restore of another snapshot ({journal.get('file')}) is "
                             "not finished; nothing was changed",
                             f"finish it first: kdeploy etcd restore -i INV {journal.get('file')}")
    stamp = journal["stamp"] if resumed else datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    token = journal["token"] if resumed else f"{cluster.name}-etcd-restore-{stamp}"
    out = Restore(sha, token, stamp, resumed=resumed)
    tm = out.timings
    etcd = [h.name for h in cluster.etcd]
    cps = [h.name for h in cluster.control_plane]
    remote = f"{RESTORE_DIR}/{stamp}.db"
    q = shlex.quote(remote)

    # 1. before anything stops: the snapshot on every member, and restorable on one of them
    t = time.monotonic()
    _parallel(lambda h: (transports[h].run(f"mkdir -p -m 0700 {RESTORE_DIR}"),
                         transports[h].put_file(remote, snapshot, mode=0o600, sha256=sha)), etcd)
    probe = transports[etcd[0]]
    scratch = f"{RESTORE_DIR}/check-{stamp}"
    r = probe.run(f"rm -rf {scratch}; {ETCDUTL} snapshot status {q} -w json && {ETCDUTL} snapshot "
                  f"restore {q} --data-dir {scratch} --name check --initial-cluster "
                  f"check=https://127.0.0.1:1 --initial-advertise-peer-urls https://127.0.0.1:1 "
                  f">/dev/null; rc=$?; rm -rf {scratch}; exit $rc", timeout=600, check=False)
    if not r.ok:
        raise PreflightError(f"the snapshot does not restore ({etcd[0]}: {_last(r)}); nothing was "
                             "stopped", "use another snapshot")
    status = json.loads(r.out.strip().splitlines()[0])
    emit({"event": "note", "host": etcd[0], "what": f"snapshot checks out: revision "
          f"{status.get('revision')}, {status.get('totalKey')} keys"})
    tm["upload + check"] = time.monotonic() - t
    if not resumed:
        if cluster_healthy(cluster, transports) and not force:
            raise PreflightError("etcd and the API are healthy: a restore would roll the whole cluster "
                                 f"back to the snapshot (revision {status.get('revision')}); nothing "
                                 "was changed", "pass --force to restore anyway")
        if not confirm():
            raise KdeployError("restore cancelled; nothing was changed")
        write_atomic(jpath, (json.dumps({"file": str(snapshot), "sha256": sha, "stamp": stamp,
                                         "token": token}) + "\n").encode(), 0o600)

    # 2. the control plane stops, then etcd. It is killed, not drained: whatever it would
    # still write is discarded by the restore anyway (a graceful apiserver stop takes ~12 s)
    t = time.monotonic()
    units = " ".join(CONTROL_PLANE_UNITS)
    _parallel(lambda h: transports[h].run(f"systemctl kill --signal=SIGKILL {units} 2>/dev/null; "
                                          f"systemctl stop {units}", timeout=120), cps)
    _parallel(lambda h: transports[h].run("systemctl stop etcd", timeout=120), etcd)
    tm["stop"] = time.monotonic() - t

    # 3. every member restored from the snapshot (skipped where this restore already did it)
    t = time.monotonic()
    initial = ",".join(f"{h.name}={peer_url(h)}" for h in cluster.etcd)
    marker = f"{RESTORE_DIR}/done-{token}"
    data = defaults.ETCD_DATA_DIR

    def restore_member(name: str) -> None:
        h = cluster.host(name)
        script = (f"set -e\n[ -e {marker} ] && exit 0\n"
                  f"if [ -d {data} ]; then rm -rf {data}.before-restore-{stamp}; "
                  f"mv {data} {data}.before-restore-{stamp}; fi\n"
                  f"rm -rf {data}.restoring\n"
                  f"{ETCDUTL} snapshot restore {q} --name {shlex.quote(name)} --data-dir {data}.restoring "
                  f"--initial-cluster {shlex.quote(initial)} --initial-cluster-token {shlex.quote(token)} "
                  f"--initial-advertise-peer-urls {shlex.quote(peer_url(h))} "
                  f"--bump-revision {BUMP_REVISION} --mark-compacted\n"
                  # etcd runs as its own user (its unit's StateDirectory would hand the dir over
                  # at start too; done here so the restored dir is right before anything runs)
                  f"if id -u {defaults.ETCD_USER} >/dev/null 2>&1; then chown -R {ETCD_OWNER} {data}.restoring; fi\n"
                  f"chmod 0700 {data}.restoring\nmv {data}.restoring {data}\ntouch {marker}\n")
        r = transports[name].run(script, timeout=600, check=False)
        if not r.ok:
            raise ApplyError(f"{name}: etcdutl snapshot restore failed: {_last(r)}",
                             "fix the cause and run the same restore again: it resumes")
        emit({"event": "note", "host": name, "what": f"etcd data restored (old data kept in "
              f"{data}.before-restore-{stamp})"})
    _parallel(restore_member, etcd)
    tm["restore"] = time.monotonic() - t

    # 4. the members start together (each waits for a quorum), then the control plane
    t = time.monotonic()
    _parallel(lambda h: transports[h].run("systemctl start etcd", timeout=300), etcd)
    from kdeploy.verbs.membership import healthy
    healthy(transports[etcd[0]], timeout=180)
    tm["etcd up"] = time.monotonic() - t
    t = time.monotonic()
    _parallel(lambda h: transports[h].run(f"systemctl start {units}", timeout=300), cps)
    from kdeploy.components.apiserver import KUBECTL_LOCAL

    def ready(h: str) -> None:
        deadline = time.monotonic() + 180
        while not transports[h].run(" ".join(KUBECTL_LOCAL) + " get --raw /readyz", timeout=30,
                                    check=False).ok:
            if time.monotonic() > deadline:
                raise ApplyError(f"{h}: kube-apiserver not ready 180 s after the restore",
                                 "look at journalctl -u kube-apiserver; run the restore again")
            time.sleep(1)
    _parallel(ready, cps)
    tm["control plane up"] = time.monotonic() - t
    # 5. every kubelet restarts (its containers keep running): a kubelet remembers the pods it
    # already finished, so a pod the snapshot still shows as terminating (deleted after the
    # snapshot was taken) would never get its final delete from it, and its namespace would stay
    # Terminating for good; a restarted kubelet relists and finishes them
    t = time.monotonic()
    nodes = [h.name for h in cluster.hosts if h.name in transports]
    _parallel(lambda h: transports[h].run("systemctl restart kubelet", timeout=120, check=False), nodes)
    left_out = sorted(h.name for h in cluster.hosts if h.name not in transports)
    if left_out:
        emit({"event": "note", "host": left_out[0],
              "what": f"kubelet not restarted on unreachable {', '.join(left_out)}: restart it there"})
    tm["kubelets restarted"] = time.monotonic() - t
    _parallel(lambda h: transports[h].run(f"rm -f -- {q}", check=False), etcd)
    jpath.unlink(missing_ok=True)
    out.seconds = time.monotonic() - t0
    return out
