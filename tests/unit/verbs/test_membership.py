"""etcd membership from facts (pure): who joins, with which member list, and what is refused."""
import json

from kdeploy.facts.model import HostFacts
from kdeploy.facts.parse import parse_etcd
from kdeploy.plan.desired import desired_state
from kdeploy.render.context import ETCD_BOOTSTRAP_ENV
from kdeploy.verbs.membership import etcd_view, initial_cluster, peer_url, with_membership
from tests.unit.render.conftest import load_sample


def member(i, host, *, learner=False, started=True):
    return {"id": format(0x1000 + i, "x"), "name": host.name if started else "",
            "peer_urls": (peer_url(host),), "learner": learner}


def facts_for(cluster, members_of: list[str]):
    """Facts of a cluster whose etcd members are the hosts named; the others are bare."""
    ms = tuple(member(i, cluster.host(n)) for i, n in enumerate(members_of))
    return {h.name: HostFacts(h.name, etcd_data=h.name in members_of,
                              etcd_members=ms if h.name in members_of else None)
            for h in cluster.hosts}


def boot(res) -> str | None:
    f = next((f for f in res.files if f.path == ETCD_BOOTSTRAP_ENV), None)
    return f.content.decode() if f else None


def test_member_list_is_parsed_from_etcdctl_json():
    out = json.dumps({"header": {}, "members": [
        {"ID": 12345678901234567890, "name": "m1", "peerURLs": ["https://192.0.2.1:2380"],
         "clientURLs": ["https://192.0.2.1:2379"]},
        {"ID": 17, "peerURLs": ["https://192.0.2.2:2380"], "isLearner": True}]})
    data, ms = parse_etcd("data\n" + out)
    assert data is True
    assert ms == ({"id": "ab54a98ceb1f0ad2", "name": "m1", "peer_urls": ("https://192.0.2.1:2380",),
                   "learner": False, "client_urls": ("https://192.0.2.1:2379",)},
                  {"id": "11", "name": "", "peer_urls": ("https://192.0.2.2:2380",), "learner": True,
                   "client_urls": ()})
    assert parse_etcd("") == (False, None)
    assert parse_etcd("{garbage") == (False, None)


def test_a_new_cluster_starts_every_member_with_the_inventory_list():
    c = load_sample("ha")
    view = etcd_view(c, facts_for(c, []))
    assert not view.exists and view.joiners == ()
    d = desired_state(c)
    assert with_membership(d, c, view) is d
    assert "ETCD_INITIAL_CLUSTER_STATE=new" in boot(d[c.etcd[0].name])


def test_joiners_go_in_inventory_order_each_listing_those_before_it():
    c = load_sample("ha")
    first, second, third = (h.name for h in c.etcd)
    view = etcd_view(c, facts_for(c, [first]))
    assert view.exists and view.joiners == (second, third) and not view.problems
    assert initial_cluster(c, view, second) == ",".join(
        f"{h.name}={peer_url(h)}" for h in c.etcd[:2])
    assert initial_cluster(c, view, third) == ",".join(f"{h.name}={peer_url(h)}" for h in c.etcd)
    d = with_membership(desired_state(c), c, view)
    assert boot(d[first]) is None                   # a member's bootstrap file is left alone
    assert "ETCD_INITIAL_CLUSTER_STATE=existing" in boot(d[second])


def test_a_member_added_by_an_interrupted_run_is_listed_once():
    c = load_sample("ha")
    first, second, _ = c.etcd
    f = facts_for(c, [first.name])
    ms = f[first.name].etcd_members + (member(9, second, learner=True, started=False),)
    f[first.name] = HostFacts(first.name, etcd_data=True, etcd_members=ms)
    view = etcd_view(c, f)
    assert view.joiners == (second.name, c.etcd[2].name) and not view.problems
    assert initial_cluster(c, view, second.name) == f"{first.name}={peer_url(first)},{second.name}={peer_url(second)}"


def test_stale_data_and_foreign_members_are_refused_by_name():
    c = load_sample("ha")
    first, second, _ = c.etcd
    f = facts_for(c, [first.name])
    f[second.name] = HostFacts(second.name, etcd_data=True)   # data of another cluster
    view = etcd_view(c, f)
    assert [w for w, _ in view.problems] == [second.name]
    assert "kdeploy reset --host" in view.problems[0][1]
    f = facts_for(c, [first.name])
    stranger = {"id": "99", "name": "", "peer_urls": ("https://198.51.100.77:2380",), "learner": True}
    f[first.name] = HostFacts(first.name, etcd_data=True,
                              etcd_members=f[first.name].etcd_members + (stranger,))
    assert etcd_view(c, f).problems == (("etcd", "an unstarted member 99 (https://198.51.100.77:2380) "
                                         "belongs to no inventory host; remove it: etcdctl member remove 99"),)


def test_joining_needs_a_readable_member_list():
    c = load_sample("ha")
    f = facts_for(c, [c.etcd[0].name])
    f[c.etcd[0].name] = HostFacts(c.etcd[0].name, etcd_data=True)   # etcd down: list unread
    view = etcd_view(c, f)
    assert view.problems and view.problems[0][0] == "etcd" and "member list" in view.problems[0][1]


def test_a_learner_left_unpromoted_joins_again():
    c = load_sample("ha")
    first, second, third = c.etcd
    ms = (member(0, first), member(1, second, learner=True))
    f = {h.name: HostFacts(h.name, etcd_data=h.name in (first.name, second.name),
                           etcd_members=ms if h.name == first.name else None) for h in c.hosts}
    view = etcd_view(c, f)
    assert view.joiners == (second.name, third.name) and not view.problems


def test_the_plan_says_who_joins_etcd():
    from kdeploy.verbs.membership import notes
    c = load_sample("ha")
    view = etcd_view(c, facts_for(c, [c.etcd[0].name]))
    assert notes(view) == [f"etcd: {c.etcd[1].name}, {c.etcd[2].name} join the running cluster, one at a "
                           "time (each added as a learner by a running member, started, promoted once in sync)"]
    assert notes(etcd_view(c, facts_for(c, [h.name for h in c.etcd]))) == [] and notes(None) == []
