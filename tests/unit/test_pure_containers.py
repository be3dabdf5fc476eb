"""Containers and pods by name, the pure parts: the language (`container NAME|ID`,
`pod NAMESPACE/NAME`), the registry (what a name selects, the names of a socket,
its bounds), and the table's rules moving a name's filters as its container
restarts or is replaced (ordering, wid reuse, cgroup levels)."""

from __future__ import annotations

import json
import random

import pytest

from ttcp.rtt import filters as F
from ttcp.rtt.filters import Filter, FilterError, Workload
from ttcp.rtt.table_rules import Resolution, TableRules, Write
from ttcp.workloads.registry import Names, Placement, Registry, escaped
from ttcp.workloads.runtime import Container, Gone, Lost, Pod, Relisted, Seen

# ---- the language ----------------------------------------------------------------------


@pytest.mark.parametrize("text,canonical", [
    ("container ttcp-client", "container ttcp-client"),
    ("CONTAINER Web.1_x-y", "container Web.1_x-y"),  # names are case-sensitive, the keyword is not
    ("container a", "container a"),  # a containerd id may be one character
    ("container " + "ab" * 40, "container " + "ab" * 40),
    ("container web  dst 10.0.0.0/8   port 5432", "container web dst 10.0.0.0/8 port 5432"),
    ("pod shop/web-0", "pod shop/web-0"),
    ("pod shop/web-0 dst 10.20.0.0/16 port 5432", "pod shop/web-0 dst 10.20.0.0/16 port 5432"),
    ("pod kube-system/coredns-5d78c9869d-x2x9z src 10.0.0.1", "pod kube-system/coredns-5d78c9869d-x2x9z 10.0.0.1"),
])
def test_canonical_texts(text: str, canonical: str) -> None:
    flt = F.parse(text)
    assert str(flt) == canonical and F.parse(canonical) == flt
    assert F.from_json(flt.to_json()) == flt
    assert flt.workload is not None and flt.workload.named


@pytest.mark.parametrize("text,names", [
    ("container -web", "'-' is not allowed"),
    ("container .web", "'.' is not allowed"),
    ("container web/1", "'/' is not allowed"),
    ("container wéb", "'é' is not allowed"),
    ("container web:1", "':' is not allowed"),
    ("container", "a container name or id must follow 'container'"),
    ("pod", "NAMESPACE/NAME must follow 'pod'"),
    ("pod shop", "expected NAMESPACE/NAME"),
    ("pod /web", "expected NAMESPACE/NAME"),
    ("pod shop/", "expected NAMESPACE/NAME"),
    ("pod Shop/web", "the namespace 'Shop' is not a DNS label"),
    ("pod " + "a" * 64 + "/web", "is not a DNS label"),
    ("pod shop/web_0", "the name 'web_0' is not a DNS subdomain"),
    ("pod shop/-web", "the name '-web' is not a DNS subdomain"),
    ("pod shop/" + "a" * 254, "is not a DNS subdomain"),
    ("container web pod shop/web", "a filter names one workload"),
    ("10.0.0.1 container web", "the workload part ('container') comes first"),
    ("container web container db", "a filter names one workload"),
])
def test_bad_texts_name_the_bad_part(text: str, names: str) -> None:
    with pytest.raises(FilterError, match=names.replace("(", r"\(").replace(")", r"\)")):
        F.parse(text)


def test_json_forms() -> None:
    assert F.from_json({"container": "web"}) == F.parse("container web")
    assert F.from_json({"pod": "shop/web-0", "side": "dst", "address": "10.20.0.0/16", "port": 5432}) == \
        F.parse("pod shop/web-0 dst 10.20.0.0/16 port 5432")
    for item, why in [({"container": "web", "pod": "a/b"}, "one workload, not container and pod"),
                      ({"container": 7}, "container must be a container name or id"),
                      ({"pod": "shop"}, "expected NAMESPACE/NAME"), ({"pod": None}, "pod must be NAMESPACE/NAME"),
                      ({"container": "-x"}, "not allowed")]:
        with pytest.raises(FilterError, match=why):
            F.from_json(item)


def test_named_kinds_need_both_lookups() -> None:
    w = F.parse("container web").workload
    assert w is not None and w.kind_bit == F.KIND_CGROUP | F.KIND_NETNS and w.inode == 0


# ---- the registry ----------------------------------------------------------------------------

HOST = 4026531833


def ctr(name: str, ident: str = "", pid: int = 100, **kw: object) -> Container:
    return Container("docker", ident or (name.encode().hex() * 64)[:64], name, pid=pid, **kw)  # type: ignore[arg-type]


class Places:
    """Placements by pid, as /proc would show them."""

    def __init__(self) -> None:
        self.by_pid: dict[int, Placement] = {}

    def __call__(self, c: Container) -> Placement | None:
        return self.by_pid.get(c.pid)


def setup(*placed: tuple[Container, Placement]) -> tuple[Registry, Places]:
    reg, places = Registry(), Places()
    for c, p in placed:
        places.by_pid[c.pid] = p
        reg.apply(Seen(c), places)
    return reg, places


def w(text: str) -> Workload:
    flt = F.parse(text)
    assert flt.workload is not None
    return flt.workload


def own(netns: int, cgroup_id: int | None = None) -> Placement:
    return Placement(netns, None if cgroup_id is None else f"/docker/{cgroup_id}", cgroup_id, False)


def test_a_container_with_its_own_namespace_resolves_to_it() -> None:
    web = ctr("web", pid=100)
    reg, _ = setup((web, own(4026532181, 300)))
    found = reg.resolve(w("container web"))
    assert found.resolution == Resolution.netns(4026532181) and not found.note
    assert reg.resolve(w(f"container {web.id}")).resolution == found.resolution  # its full id
    assert reg.resolve(w(f"container {web.id[:12]}")).resolution == found.resolution  # a 12-digit prefix
    assert reg.resolve(w(f"container {web.id[:11]}")).resolution.id is None  # too short a prefix: a name
    assert reg.resolve(w("container Web")).resolution.id is None  # names are case-sensitive


def test_pending_until_it_runs_then_followed_across_restart_and_replacement() -> None:
    reg, places = setup()
    found = reg.resolve(w("container web"))
    assert found.resolution == Resolution.pending(w("container web")) and "no running container" in found.note
    web = ctr("web", pid=100)
    places.by_pid[100] = own(11)
    reg.apply(Seen(web), places)
    assert reg.resolve(w("container web")).resolution == Resolution.netns(11)
    reg.apply(Seen(Container("docker", web.id, "web", pid=0)), places)  # die: pid 0
    assert reg.resolve(w("container web")).resolution.id is None and len(reg) == 0
    places.by_pid[101] = own(11)  # restarted: the same inode again (the kernel reuses them at once)
    reg.apply(Seen(ctr("web", web.id, pid=101)), places)
    assert reg.resolve(w("container web")).resolution == Resolution.netns(11)
    reg.apply(Gone("docker", web.id, removed=True), places)
    places.by_pid[102] = own(12)
    reg.apply(Seen(ctr("web", "f" * 64, pid=102)), places)  # rm + a new run of the same name: a new id
    assert reg.resolve(w("container web")).resolution == Resolution.netns(12)


def test_a_process_gone_before_it_was_placed_counts_as_not_running() -> None:
    reg, places = setup()
    reg.apply(Seen(ctr("web", pid=100)), places)  # no placement: /proc/100 is gone
    assert len(reg) == 0 and reg.resolve(w("container web")).resolution.id is None


def test_shared_namespace_selects_by_cgroup_and_says_so() -> None:
    web = ctr("web", pid=100)
    side = ctr("side", pid=101, shares_netns_of=web.id)
    reg, _ = setup((web, own(20, 300)), (side, own(20, 301)))
    found = reg.resolve(w("container web"))
    assert found.resolution == Resolution.cgroup("/docker/300", 300)
    assert found.shared_with == ("side",) and "shares its network namespace" in found.note
    no_v2, _ = setup((web, own(20)), (side, own(20)))
    found = no_v2.resolve(w("container side"))
    assert found.resolution == Resolution.netns(20) and "the others' connections" in found.note
    # the socket's names: by cgroup (precise), else the namespace's owner (not --network container:X)
    assert reg.names(20, 301) == Names("side", side.id) and no_v2.names(20, 0) == Names("web", web.id)


def test_host_network_selects_by_cgroup_or_stays_pending() -> None:
    host = ctr("hostnet", pid=100, host_network=True)
    reg, _ = setup((host, Placement(HOST, "/docker/hostnet", 329, True)))
    found = reg.resolve(w("container hostnet"))
    assert found.resolution == Resolution.cgroup("/docker/hostnet", 329) and "host's network" in found.note
    assert reg.names(HOST, 5) is None and reg.names(HOST, 329) == Names("hostnet", host.id)  # never the host netns
    reg, _ = setup((host, Placement(HOST, None, None, True)))
    found = reg.resolve(w("container hostnet"))
    assert found.resolution.id is None and "no cgroup-v2 cgroup" in found.note


def test_a_pod_resolves_to_its_sandboxs_namespace() -> None:
    pod = Pod("shop", "web-0")
    sandbox = Container("containerd", "sb0000web0", "sb0000web0", "k8s.io", pid=100, pod=pod, sandbox=True)
    app = Container("containerd", "app0000web0", "app", "k8s.io", pid=101, pod=pod, container_name="app")
    reg, _ = setup((app, own(30, 401)), (sandbox, own(30, 400)))
    assert reg.resolve(w("pod shop/web-0")).resolution == Resolution.netns(30)
    assert reg.resolve(w("pod shop/web-1")).resolution.id is None
    assert reg.names(30, 401) == Names("app", "app0000web0", pod)
    assert reg.names(30, 999) == Names(pod=pod)  # the pod's namespace, not one container's
    line = json.loads("{" + reg.fragment(30, 401)[1:] + "}")
    assert line == {"container": "app", "container_id": "app0000web0", "pod": "web-0", "pod_namespace": "shop"}
    assert reg.label(30, 999) == "pod shop/web-0" and reg.label(31, 0) is None and reg.fragment(31, 0) == ""


def test_ambiguous_names_stay_pending_with_a_note() -> None:
    a = Container("containerd", "a1", "app", "k8s.io", pid=100)
    b = Container("containerd", "b1", "app", "k8s.io", pid=101)
    reg, _ = setup((a, own(40)), (b, own(41)))
    found = reg.resolve(w("container app"))
    assert found.resolution.id is None and "2 running containers match app" in found.note


def test_odd_label_values_are_no_pod_and_names_are_escaped() -> None:
    odd = ctr("odd", pid=100, pod=Pod("sh\U0001f600p", "web\n0\t\x1b[31mred"))
    reg, _ = setup((odd, own(50, 500)))
    assert reg.names(50, 500) == Names("odd", odd.id)  # not a Kubernetes name: not a pod
    assert escaped("web\n0\x1b") == "web\\n0\\x1b" and escaped("pod shop/web-0") == "pod shop/web-0"
    assert escaped("sh\U0001f600p") == "sh\\U0001f600p"


def test_bounded_and_relisted() -> None:
    reg, places = Registry(limit=3), Places()
    for i in range(5):
        places.by_pid[100 + i] = own(60 + i, 600 + i)
        assert reg.apply(Seen(ctr(f"c{i}", pid=100 + i, labels={"big": "x" * 1000})), places) == (i < 3)
    assert len(reg) == 3 and reg.dropped == 2
    assert all(c.labels == {} for c, _ in reg.entries())  # labels are not kept
    kept = {c.id for c, _ in reg.entries()}
    reg.apply(Relisted("docker", frozenset(list(kept)[:1])), places)
    assert len(reg) == 1 and not reg._by_netns.keys() - {p.netns for _, p in reg.entries()}
    assert len(reg._by_cgroup) == 1


# ---- the table's rules following a name -----------------------------------------------------


def held(rules: TableRules, *texts: str) -> list[Filter]:
    fs = [F.parse(t) for t in texts]
    for flt, slot in rules.plan_add(fs):
        assert flt.workload is not None
        rules.added(flt, slot, Resolution.pending(flt.workload))
    rules.changed()
    rules.workload_writes()
    return fs


def test_moves_delete_the_old_namespace_before_anything_else_takes_it() -> None:
    rules = TableRules(64, 64)
    held(rules, "container web", "container web dst 10.0.0.0/8")
    web = w("container web")
    assert rules.moved(web, Resolution.netns(11))
    writes = rules.workload_writes()
    assert [(x.map, x.value is None) for x in writes if x.map == "netns"] == [("netns", False)]
    assert not rules.moved(web, Resolution.netns(11))  # no change, no writes
    assert rules.moved(web, Resolution.pending(web))  # it died
    writes = rules.workload_writes()
    assert [x for x in writes if x.map == "netns"] == [Write("netns", b"\x0b\0\0\0", None)]
    # its address key stays (same wid, pending): written, not deleted
    assert not [x for x in writes if x.map == "nets" and x.value is None]
    assert rules.moved(web, Resolution.netns(12))
    state = rules.workloads.state(F.parse("container web"))
    assert state is not None and state.state == "resolved" and state.id == 12
    assert state.to_json() == {"kind": "container", "container": "web", "state": "resolved",
                               "resolved_to": {"netns": 12}}


def test_a_moved_filter_that_gets_the_same_wid_keeps_its_address_key() -> None:
    rules = TableRules(64, 64)
    held(rules, "container web dst 10.0.0.0/8")
    web = w("container web")
    rules.moved(web, Resolution.netns(11))
    rules.workload_writes()
    rules.moved(web, Resolution.netns(12))  # old selector gone, its wid reused by the new one
    writes = rules.workload_writes()
    puts = {(x.map, x.key) for x in writes if x.value is not None}
    assert not [x for x in writes if x.value is None and (x.map, x.key) in puts]
    assert ("netns", b"\x0c\0\0\0") in puts and Write("netns", b"\x0b\0\0\0", None) in writes


def test_a_cgroup_resolution_counts_its_level_in_cfg() -> None:
    rules = TableRules(64, 64)
    held(rules, "container hostnet")
    hostnet = w("container hostnet")
    assert rules.config().cgroup_levels == 0
    rules.moved(hostnet, Resolution.cgroup("/docker/abc", 329))
    assert rules.config().cgroup_levels == 1 << 2 and rules.config().kinds & F.KIND_CGROUP
    rules.moved(hostnet, Resolution.pending(hostnet))
    assert rules.config().cgroup_levels == 0
    state = rules.workloads.state(F.parse("container hostnet"))
    assert state is not None and state.to_json() == {"kind": "container", "container": "hostnet",
                                                     "state": "pending"}


def test_an_ended_containers_name_stays_by_cgroup_not_by_namespace() -> None:
    web = ctr("web", pid=100)
    reg, places = setup((web, own(70, 700)))
    reg.apply(Gone("docker", web.id), places)
    assert reg.names(70, 700) == Names("web", web.id)  # its last events, read after it ended
    assert reg.names(70, 0) is None  # the inode may be another container's already
    for i in range(1100):
        places.by_pid[1000 + i] = own(80, 1000 + i)
        reg.apply(Seen(ctr(f"c{i}", pid=1000 + i)), places)
        reg.apply(Gone("docker", ctr(f"c{i}").id), places)
    assert len(reg._recent) == 1024 and reg.names(70, 700) is None and len(reg) == 0


def test_a_change_touches_every_filter_whose_resolution_it_changes() -> None:
    """The resolver re-resolves only the filters whose text a change touched (or an id's
    prefix): on random changes, every filter that resolves differently after must be among
    them (names, ids, prefixes, pods; shared namespaces, host network, rm and relist)."""
    rng = random.Random(23)
    names = ["a", "b", "c", "d"]
    ids = {n: (f"{i:x}" * 64)[:64] for i, n in enumerate(["a", "b", "c", "d"], start=10)}
    pods = [Pod("shop", "web-0"), Pod("shop", "web-1"), None]
    texts = ([f"container {n}" for n in names] + [f"container {i}" for i in ids.values()]
             + [f"container {i[:12]}" for i in ids.values()] + [f"container {i[:20]}" for i in ids.values()]
             + ["pod shop/web-0", "pod shop/web-1"])
    workloads = [w(t) for t in texts]
    for _ in range(200):
        reg, places = Registry(), Places()
        for step in range(30):
            before = {x: reg.resolve(x).resolution for x in workloads}
            n = rng.choice(names)
            roll = rng.random()
            pid = 100 + step
            if roll < 0.6:
                netns, cgroup = rng.choice([11, 12, 13]), rng.choice([None, 500 + step])
                places.by_pid[pid] = Placement(netns, None if cgroup is None else f"/x/{cgroup}", cgroup,
                                               rng.random() < 0.15)
                reg.apply(Seen(Container("docker", ids[n], rng.choice([n, n + "x"]), pid=pid,
                                         pod=rng.choice(pods))), places)
            elif roll < 0.9:
                reg.apply(Gone("docker", ids[n], removed=rng.random() < 0.5), places)
            else:
                reg.apply(Relisted("docker", frozenset(rng.sample(list(ids.values()), 2))), places)
            touched = reg.touched()
            for x in workloads:
                if reg.resolve(x).resolution != before[x]:
                    assert x.name in touched or any(t.startswith(x.name) for t in touched), (x, touched)


def test_a_namespace_names_only_containers_known_to_run() -> None:
    """Gone drops the namespace's name at once; while a runtime is out of sight (Lost) its
    namespaces name nothing (an inode freed meanwhile may be another's), cgroup ids still do,
    and what filters select stays; its next listing brings the names back."""
    web, other = ctr("web", pid=100), ctr("other", pid=101)
    reg, places = setup((web, own(11, 700)), (other, own(12)))
    assert reg.label(11, 0) == "container web" and reg.label(12, 0) == "container other"
    reg.apply(Lost("docker"), places)
    assert reg.label(11, 0) is None and reg.label(12, 0) is None and reg.label(11, 700) == "container web"
    assert reg.resolve(w("container other")).resolution == Resolution.netns(12)
    reg.apply(Relisted("docker", frozenset({web.id, other.id})), places)
    assert reg.label(11, 0) == "container web" and reg.label(12, 0) == "container other"
    reg.apply(Gone("docker", other.id), places)  # stopped, not removed: its inode may be reused now
    assert reg.label(12, 0) is None
