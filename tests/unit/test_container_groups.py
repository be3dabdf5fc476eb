"""`by container` and `by pod`: the kernel's (cgroup id, netns) groups named from the
container registry and merged, on bytes as the `groups` map holds them."""

from __future__ import annotations

import io

import pytest

from ttcp.output import HistogramPrinter
from ttcp.rtt import filters as F
from ttcp.rtt import groups as G
from ttcp.rtt.filter_table import FilterStats
from ttcp.rtt.filters import By, ByKind
from ttcp.rtt.groups import Group, GroupKey, GroupSet, Named
from ttcp.rtt.histogram import BUCKETS, HIST, Histogram, bucket_of
from ttcp.workloads.group_names import namer
from ttcp.workloads.registry import Placement, Registry
from ttcp.workloads.runtime import Container, Gone, Pod, Seen

CONTAINER, POD = By(ByKind.WORKLOAD), By(ByKind.WORKLOAD, pod=True)
SLOT, GEN = 3, 17


def entry(cgroup_id: int, netns: int, first_ns: int, closed: list[int], sampled: list[int] = ()) -> tuple[bytes, bytes]:
    """One `groups` row as the kernel writes it: struct group_key, struct group (no counts)."""
    def hist(rtts: list[int] | tuple[int, ...]) -> bytes:
        buckets = [0] * BUCKETS
        for r in rtts:
            buckets[bucket_of(r)] += 1
        return HIST.pack(0, sum(rtts), *buckets)
    key = GroupKey(ByKind.WORKLOAD, cgroup_id=cgroup_id, netns=netns).pack(SLOT, GEN)
    return key, G.GROUP_HEAD.pack(first_ns, first_ns + 1000) + hist(closed) + hist(sampled)


def hist(*rtts: int) -> Histogram:
    buckets = [0] * BUCKETS
    for r in rtts:
        buckets[bucket_of(r)] += 1
    return Histogram(len(rtts), sum(rtts), tuple(buckets))


def read(rows: list[tuple[bytes, bytes]], by: By, names: G.Namer) -> list[G.Group]:
    """What KernelFilterTable.groups answers for a WORKLOAD filter (rows decoded, merged, busiest first)."""
    got = G.GroupRows(b"".join(k for k, _ in rows), b"".join(v for _, v in rows))
    parts = [G.Group.unpack(GroupKey.unpack(got.key(i))[2], got.value(i)) for i in got.indices(SLOT, GEN)]
    return G.busiest(G.merged(parts, G.workload_key(by, names)))


def registry() -> Registry:
    """web (Docker, own netns 100, cgroup 11), a pod shop/web-0 (netns 200: app in cgroup 21,
    sidecar in cgroup 22, the sandbox in 20), api on the host's network (cgroup 31)."""
    r = Registry()
    placements = {
        "web": Placement(100, "/system.slice/docker-web.scope", 11, False),
        "sandbox": Placement(200, "/kubepods/pod1/sandbox", 20, False),
        "app": Placement(200, "/kubepods/pod1/app", 21, False),
        "sidecar": Placement(200, "/kubepods/pod1/sidecar", 22, False),
        "api": Placement(4026531840, "/system.slice/docker-api.scope", 31, True),
    }
    pod = Pod("shop", "web-0")
    for c in (Container("docker", "a" * 64, "web", pid=1),
              Container("containerd", "s1", "s1", "k8s.io", pid=2, pod=pod, sandbox=True),
              Container("containerd", "c1", "app", "k8s.io", pid=3, pod=pod, container_name="app"),
              Container("containerd", "c2", "sidecar", "k8s.io", pid=4, pod=pod, container_name="sidecar"),
              Container("docker", "b" * 64, "api", pid=5, host_network=True)):
        assert r.apply(Seen(c), lambda c: placements["sandbox" if c.sandbox else c.name])
    return r


ROWS = [
    entry(11, 100, 500, [100, 100]),  # web, its own cgroup
    entry(12, 100, 400, [200]),  # web's netns, a process in another (v2) cgroup: named by the netns
    entry(21, 200, 300, [1000] * 3),  # the pod's app
    entry(22, 200, 200, [2000], [2000]),  # its sidecar (one close, one live sample)
    entry(29, 200, 100, [3000]),  # the pod's netns, a cgroup no container of it is in: the pod
    entry(31, 4026531840, 600, [50] * 4),  # api, on the host's network: by its cgroup
    entry(40, 4026531840, 700, [7] * 5),  # the host's own services: no container
    entry(41, 4026531840, 800, [8]),  # ... another cgroup of the host
]


def test_by_container_names_and_merges_the_kernels_groups() -> None:
    got = read(ROWS, CONTAINER, namer(registry()))
    texts = [g.key.text(CONTAINER, lambda i: f"/host/{i}") for g in got]
    assert texts == ["cgroup /host/40 netns 4026531840", "api", "shop/web-0/app", "web",  # ties: by key
                     "shop/web-0/sidecar", "shop/web-0", "cgroup /host/41 netns 4026531840"]
    by_text = dict(zip(texts, got))
    web = by_text["web"]
    assert (web.closed.count, web.closed.sum_us, web.first_ns, web.last_ns) == (3, 400, 400, 1500)
    assert by_text["shop/web-0/sidecar"].total == 2 and by_text["shop/web-0"].closed.count == 1
    assert [g.key.to_json(CONTAINER, lambda i: None) for g in (got[0], got[1], web)] == [
        {"cgroup_id": 40, "cgroup": None, "netns": 4026531840}, {"container": "api"}, {"container": "web"}]
    assert by_text["shop/web-0/app"].key.to_json(CONTAINER) == {"container": "app", "pod_namespace": "shop",
                                                                "pod": "web-0"}
    assert by_text["shop/web-0"].key.to_json(CONTAINER) == {"pod_namespace": "shop", "pod": "web-0"}
    assert sum(g.closed.count for g in got) == 18  # every RTT in exactly one group


def test_by_pod_merges_a_pods_containers_and_leaves_the_rest_by_cgroup_and_netns() -> None:
    got = read(ROWS, POD, namer(registry()))
    texts = [g.key.text(POD, lambda i: f"/host/{i}") for g in got]
    assert texts == ["shop/web-0", "cgroup /host/40 netns 4026531840", "cgroup /host/31 netns 4026531840",
                     "cgroup /host/11 netns 100", "cgroup /host/12 netns 100", "cgroup /host/41 netns 4026531840"]
    pod = got[0]
    assert (pod.closed.count, pod.sampled.count, pod.first_ns, pod.key.named) == (5, 1, 100, Named("", "shop", "web-0"))
    assert all(g.key.named == Named() for g in got[1:])


def test_a_container_run_again_under_its_name_stays_one_group_and_without_names_nothing_merges() -> None:
    r = registry()
    old = r.names(100, 11)
    assert old is not None and old.container == "web"
    r.apply(Gone("docker", "a" * 64, removed=True), lambda c: None)
    r.apply(Seen(Container("docker", "c" * 64, "web", pid=9)), lambda c: Placement(101, "/system.slice/x.scope",
                                                                                    13, False))
    rows = [entry(11, 100, 1, [10]), entry(13, 101, 2, [20])]  # the first run's last RTT, the new run's
    got = read(rows, CONTAINER, namer(r))
    assert [str(g.key.named) for g in got] == ["web"] and got[0].closed.count == 2
    assert len(read(ROWS, CONTAINER, G.no_names)) == len(ROWS)  # --no-runtimes: one group per kernel key


@pytest.mark.parametrize("named,text", [
    (Named("web"), "web"), (Named("app", "shop", "web-0"), "shop/web-0/app"), (Named("", "shop", "web-0"), "shop/web-0"),
])
def test_a_named_groups_text_is_the_most_precise_name_known(named: Named, text: str) -> None:
    key = GroupKey(ByKind.WORKLOAD, named=named)
    assert key.text(CONTAINER) == text and str(named) == text and bool(named)
    assert not Named() and GroupKey(ByKind.WORKLOAD, cgroup_id=5, netns=6).text(CONTAINER) == "cgroup 5 netns 6"
    assert F.parse(f"dst 10.0.0.0/8 by {'pod' if text.count('/') == 1 else 'container'}").by is not None


def test_the_histogram_printer_names_containers_and_a_merged_group_that_shrank_counts_from_its_start() -> None:
    out = io.StringIO()
    printer = HistogramPrinter(out)
    f = F.parse("dst 10.20.0.0/16 port 5432 by container")
    assert f.by is not None
    web = GroupKey(ByKind.WORKLOAD, named=Named("web"))

    def interval(n: int, *rtts: int) -> str:
        out.seek(0)
        out.truncate(0)
        g = Group(web, 1, 2, hist(*rtts), Histogram.empty())
        printer.interval({f: FilterStats(n, hist(*range(1, n + 1)), Histogram.empty())},
                         {f: GroupSet(f.by, [g], 1, 0, 64)})
        return out.getvalue()

    assert "by container, container web: RTT at close, 2 samples" in interval(2, 100, 100)
    assert "container web: RTT at close, 1 samples" in interval(3, 100, 100, 100)
    # A part of it evicted by the kernel: fewer than before, so the group counts from its start.
    assert "container web: RTT at close, 1 samples" in interval(4, 900)
