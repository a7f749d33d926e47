"""etcd membership after creation: who is a member (read from etcd), who joins, who leaves.

A new cluster starts every member with the inventory's member list (state `new`). Once etcd
exists, a host that joins is first added as a learner by a running member, started with the
member list as etcd reports it at that moment (state `existing`), and promoted to a voting
member once it caught up with the leader; joiners go one at a time, in inventory order. The
member list lives in a bootstrap file that etcd reads only while its data dir is empty, so a
grown or shrunk list never restarts a running member. A member is removed by its exact ID,
found by its peer URL, never by a name or address guess.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from kdeploy.components.etcd import ETCDCTL
from kdeploy.errors import ApplyError
from kdeploy.model import Cluster, defaults
from kdeploy.render.context import ETCD_BOOTSTRAP_ENV, url_addr

PROMOTE_TIMEOUT = 180


def peer_url(host) -> str:
    return f"https://{url_addr(host.address)}:{defaults.ETCD_PEER_PORT}"


@dataclass(frozen=True)
class EtcdView:
    """The etcd cluster as the facts show it."""
    exists: bool                               # some etcd host holds data: the cluster was created
    members: tuple[dict, ...] | None           # as a running member reports them; None: unread
    joiners: tuple[str, ...] = ()              # etcd hosts of the inventory to add, in order
    problems: tuple[tuple[str, str], ...] = field(default_factory=tuple)   # (host or "etcd", what)

    def member(self, url: str) -> dict | None:
        return next((m for m in self.members or () if url in m["peer_urls"]), None)


def etcd_view(cluster: Cluster, facts: Mapping) -> EtcdView:
    hosts = [h for h in cluster.etcd if h.name in facts]
    exists = any(facts[h.name].etcd_data for h in hosts)
    members = next((facts[h.name].etcd_members for h in hosts
                    if facts[h.name].etcd_members is not None), None)
    if not exists:
        return EtcdView(False, members)
    problems: list[tuple[str, str]] = []
    by_url = {u: m for m in (members or ()) for u in m["peer_urls"]}
    # to join: hosts without data, and learners a killed run started but did not promote
    joiners = tuple(h.name for h in hosts if not facts[h.name].etcd_data
                    or by_url.get(peer_url(h), {}).get("learner"))
    if members is None:
        if joiners:
            problems.append(("etcd", "cannot read the etcd member list from any etcd host (is etcd "
                             "running on the members?); the new members " + ", ".join(joiners)
                             + " can join only a running cluster"))
        return EtcdView(True, None, joiners, tuple(problems))
    for h in hosts:
        m = by_url.get(peer_url(h))
        if facts[h.name].etcd_data and m is None:
            problems.append((h.name, f"holds etcd data but is not a member of the cluster (its peer "
                                     f"URL {peer_url(h)} is not in the member list); reset the host "
                                     f"(kdeploy reset --host {h.name}) so it joins afresh"))
        elif m is not None and m["name"] and m["name"] != h.name:
            problems.append((h.name, f"its peer URL {peer_url(h)} belongs to etcd member "
                                     f"{m['name']} ({m['id']})"))
    ours = {peer_url(h) for h in cluster.etcd}
    for m in members:
        if not m["name"] and not set(m["peer_urls"]) & ours:
            problems.append(("etcd", f"an unstarted member {m['id']} ({', '.join(m['peer_urls'])}) "
                                     "belongs to no inventory host; remove it: etcdctl member remove "
                                     + m["id"]))
    return EtcdView(True, members, joiners, tuple(problems))


def notes(view: EtcdView | None) -> list[str]:
    """What a plan cannot show as file changes: etcd members that will join."""
    if view is None or not view.joiners:
        return []
    return [f"etcd: {', '.join(view.joiners)} join the running cluster, one at a time (each added "
            "as a learner by a running member, started, promoted once in sync)"]


def refuse_joiners(view: EtcdView | None, verb: str) -> None:
    """Verbs other than `up` act on an etcd cluster of settled membership."""
    if view is not None and view.joiners:
        from kdeploy.errors import PreflightError
        raise PreflightError(f"etcd hosts wait to join the cluster ({', '.join(view.joiners)}); "
                             f"{verb} changed nothing", "run `kdeploy up` first: it adds them")


def initial_cluster(cluster: Cluster, view: EtcdView, joiner: str) -> str:
    """The member list `joiner` starts with: the members etcd reports now, the joiners before
    it (added by then, in order) and itself; exactly the list etcd will hold at its start."""
    entries: dict[str, str] = {}              # peer URL -> name
    names = {peer_url(h): h.name for h in cluster.etcd}
    for m in view.members or ():
        for u in m["peer_urls"][:1]:
            entries[u] = m["name"] or names.get(u, "")
    for name in view.joiners[:view.joiners.index(joiner) + 1]:
        entries[peer_url(cluster.host(name))] = name
    return ",".join(f"{n}={u}" for u, n in entries.items())


def with_membership(desired: dict, cluster: Cluster, view: EtcdView) -> dict:
    """The desired state with each etcd host's bootstrap file as its membership needs it: a new
    cluster's as rendered (state new), a joiner's listing the cluster it joins (state existing),
    none on a member (etcd no longer reads it; rewriting it would change nothing)."""
    if not view.exists:
        return desired
    from kdeploy.render.context import cluster_context
    from kdeploy.render.env import render
    base = cluster_context(cluster).base
    out = dict(desired)
    for h in cluster.etcd:
        res = desired.get(h.name)
        if res is None:
            continue
        f = next((f for f in res.files if f.path == ETCD_BOOTSTRAP_ENV), None)
        if f is None:
            continue
        if h.name in view.joiners:
            etcd = {**base["etcd"], "initial_cluster": initial_cluster(cluster, view, h.name),
                    "initial_cluster_state": "existing"}
            text = render("etcd/etcd-bootstrap.env.j2", {**base, "etcd": etcd})
            files = tuple(replace(x, content=text.encode()) if x is f else x for x in res.files)
        else:
            files = tuple(x for x in res.files if x is not f)
        out[h.name] = replace(res, files=files)
    return out


# --------------------------------------------------------------------------- acting on etcd

def member_list(transport) -> tuple[dict, ...]:
    from kdeploy.facts.parse import parse_etcd
    r = transport.run(f"{ETCDCTL} member list -w json", timeout=30)
    _, members = parse_etcd(r.out.replace("\n", ""))
    if members is None:
        raise ApplyError(f"{transport.host}: cannot parse the etcd member list")
    return members


def healthy(transport, *, timeout: float = 120, stop: Callable[[], bool] = lambda: False,
            leaving: str | None = None) -> None:
    """Every member of the cluster answers (`endpoint health --cluster`), within timeout;
    leaving: the peer URL of a member about to be removed (it may be dead): the others."""
    deadline = time.monotonic() + timeout
    last = ""
    cmd = f"{ETCDCTL} endpoint health --cluster"
    if leaving:
        urls = [u for m in member_list(transport) if leaving not in m["peer_urls"]
                for u in m["client_urls"]]
        cmd = f"{ETCDCTL} endpoint health --endpoints={','.join(urls)}"
    while True:
        r = transport.run(cmd, timeout=60, check=False)
        if r.ok:
            return
        last = ((r.err or r.out).strip().splitlines() or ["?"])[-1]
        if time.monotonic() > deadline or stop():
            raise ApplyError(f"etcd is not healthy after {int(timeout)} s: {last}",
                             "look at every member: journalctl -u etcd")
        time.sleep(1.0)


@dataclass
class Join:
    """The hooks of a joining member's turn: added as a learner before it starts, promoted
    after it caught up, the whole cluster healthy before the next one."""
    cluster: Cluster
    transports: Mapping
    members: tuple[str, ...]                  # hosts running etcd already (who adds the joiner)

    def _has_data(self, host: str) -> bool:
        t = self.transports[host]
        return t.run(f"test -d {defaults.ETCD_DATA_DIR}/member", check=False).ok

    def _via(self):
        for name in self.members:
            if name in self.transports:
                return self.transports[name]
        raise ApplyError("no running etcd member is reachable to add the new member")

    def add(self, ctx, host: str) -> None:
        t = self._via()
        url = peer_url(self.cluster.host(host))
        m = next((m for m in member_list(t) if url in m["peer_urls"]), None)
        if m is not None and m["name"] and not m["learner"] and not self._has_data(host):
            # a voting member whose host lost its data (reset, new disk): a member that lost
            # its data must be removed and added again, never restarted empty under its old ID
            t.run(f"{ETCDCTL} member remove {m['id']}", timeout=60)
            ctx.emit({"event": "note", "host": host, "what": f"stale etcd member {m['id']} removed"})
            m = None
        healthy(t)
        if m is not None:                        # added by an interrupted run: not again
            ctx.emit({"event": "note", "host": host, "what": f"etcd member {m['id']} added before"})
            return
        # etcd refuses a change while a recent one settles ("unhealthy cluster": a member
        # started less than a few seconds ago does not count as active yet): retry a while
        deadline = time.monotonic() + 60
        while True:
            r = t.run(f"{ETCDCTL} member add {host} --peer-urls={url} --learner", timeout=60,
                      check=False)
            if r.ok:
                break
            last = ((r.err or r.out).strip().splitlines() or ["?"])[-1]
            if "unhealthy cluster" not in last or time.monotonic() > deadline:
                raise ApplyError(f"etcd refused to add member {host}: {last}",
                                 "look at the members' health: etcdctl endpoint health --cluster")
            time.sleep(2.0)
        ctx.emit({"event": "note", "host": host, "what": f"etcd learner added: {url}"})

    def promote(self, ctx, host: str) -> None:
        t = self._via()
        url = peer_url(self.cluster.host(host))
        deadline = time.monotonic() + PROMOTE_TIMEOUT
        last = ""
        while True:
            m = next((m for m in member_list(t) if url in m["peer_urls"]), None)
            if m is None:
                raise ApplyError(f"{host}: not in the etcd member list after it was added")
            if not m["learner"]:
                break
            r = t.run(f"{ETCDCTL} member promote {m['id']}", timeout=60, check=False)
            if r.ok:
                ctx.emit({"event": "note", "host": host, "what": f"etcd member {m['id']} promoted"})
                break
            last = ((r.err or r.out).strip().splitlines() or ["?"])[-1]
            if time.monotonic() > deadline:
                raise ApplyError(f"{host}: the etcd learner did not catch up within "
                                 f"{PROMOTE_TIMEOUT} s: {last}",
                                 f"look at its etcd: journalctl -u etcd on {host}")
            time.sleep(1.0)
        healthy(t)


def remove_member(transport, url: str) -> str | None:
    """Remove the member with this peer URL (its exact ID from the member list); the ID, or
    None when no member has that URL (already removed)."""
    m = next((m for m in member_list(transport) if url in m["peer_urls"]), None)
    if m is None:
        return None
    transport.run(f"{ETCDCTL} member remove {m['id']}", timeout=60)
    return m["id"]
