"""A filter's groups (its `by` clause) as the kernel keeps them, and how ttcp shows them (pure).

The program counts each RTT a filter with a breakdown selects in the entry of
the `groups` LRU hash keyed by the filter's slot and generation and by the
socket's group key (struct group_key in bpf/tcprtt.bpf.c): an address masked
to the clause's prefix, a port, a cgroup id, a netns inode. Each entry holds
when it was made (`first_ns`), its latest update and two histograms (at close,
live samples), shared by every CPU. `group_stats[slot]` counts per CPU the
entries made for the filter: whatever is made and no longer there was evicted
(the LRU made room for another group; user space deletes only a removed
filter's groups). A group evicted and seen again starts from zero: its
`first_ns` is new, which a reader that saw it before notices (GroupMemory:
`restarted`). A group's histograms keep no count (one contended atomic add
fewer per RTT in the kernel): every RTT is in exactly one bucket, so the count
is the buckets' sum.

Percentiles are estimated from the log2 histogram as Prometheus'
histogram_quantile estimates them from buckets: the rank q x count falls in
one bucket, and the value is interpolated linearly between that bucket's
bounds (bucket k holds [2^k, 2^(k+1)) us; bucket 0 starts at 0; a rank in the
last, open-ended bucket gives its lower bound). The estimate lies within the
bucket of the true quantile: within a factor of two. The mean is exact.
"""

from __future__ import annotations

import heapq
import struct
import sys
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, overload

from ttcp.rtt import filters as F
from ttcp.rtt.filters import By, ByKind
from ttcp.rtt.histogram import BUCKETS, HIST, Histogram, high_us, low_us

GROUP_KEY = struct.Struct("=II16sQIHBx")  # struct group_key: slot, gen, addr, cgroup_id, netns, port, kind
GROUP_HEAD = struct.Struct("=QQ")  # struct group: first_ns, last_ns, then closed and sampled (struct hist)
GROUP_SIZE = GROUP_HEAD.size + 2 * HIST.size
GROUP_CLOSED_AT = GROUP_HEAD.size
GROUP_SAMPLED_AT = GROUP_HEAD.size + HIST.size
GROUP_STAT = struct.Struct("=QQ")  # struct group_stat: gen, created (per CPU)
# A value's buckets, both histograms': their sum is its RTT count (the kernel keeps no count for a group).
_BUCKETS_IN_VALUE = struct.Struct(f"={GROUP_CLOSED_AT + 16}x{BUCKETS}Q16x{BUCKETS}Q")
FILTER_OF_KEY = struct.Struct("=II")  # a key's first 8 bytes: the filter's slot and generation
_LITTLE = sys.byteorder == "little"  # how those 8 bytes read as one native u64
DEFAULT_MAX_GROUPS = 8192  # --max-groups
SORTS = ("count", "mean", "p50", "p99")
HISTOGRAMS = ("closed", "sampled")
ESTIMATOR = ("mean: exact (sum / count); p50, p90, p99: estimated from the log2 histogram by linear "
             "interpolation inside the bucket that holds the rank, as Prometheus' histogram_quantile does "
             "(within the bucket of the true value: a factor of two)")
_V4_PREFIX = bytes(10) + b"\xff\xff"

CgroupPath = Callable[[int], str | None]  # a cgroup id's path, None when unknown


@dataclass(frozen=True, order=True)
class Named:
    """The container and pod a socket's (netns, cgroup id) belongs to, as the container
    runtimes name them (ttcp.workloads.registry); "" where unknown. A key of `by
    container` or `by pod`: its text is the most precise name known."""

    container: str = ""  # the runtime's name for it
    pod_namespace: str = ""
    pod: str = ""

    def __bool__(self) -> bool:
        return bool(self.container or self.pod)

    def __str__(self) -> str:
        """NAME (a container outside any pod), NAMESPACE/POD/NAME (a pod's container),
        NAMESPACE/POD (a pod, or a socket of a pod whose container is not known):
        names allow no `/` and no space, so these never collide."""
        pod = f"{self.pod_namespace}/{self.pod}" if self.pod else ""
        if pod and self.container:
            return f"{pod}/{self.container}"
        return pod or self.container


Namer = Callable[[int, int], Named | None]  # (netns inode, cgroup id): the names of that workload


def no_names(netns: int, cgroup_id: int) -> Named | None:
    return None


NO_NAME = Named()


RESTARTS = ("the kernel keeps at most --max-groups groups for all filters together and evicts the least "
            "recently used one to make room: a group evicted and seen again starts from zero (its counts are "
            "since `since`; `restarted`: true when this ttcp saw it before with an earlier `since`)")


def no_paths(cgroup_id: int) -> str | None:
    return None


@dataclass(frozen=True, order=True)
class GroupKey:
    """What one group of a filter stands for (the fields its kind does not use are 0).
    `named`: a WORKLOAD group user space named and merged (`by container`, `by pod`:
    its cgroup_id and netns are then 0; the kernel's keys never carry a name)."""

    kind: ByKind
    addr: bytes = bytes(16)  # RADDR, LADDR: the masked address, 16-byte form
    cgroup_id: int = 0  # CGROUP, WORKLOAD
    netns: int = 0  # NETNS, WORKLOAD
    port: int = 0  # RPORT, LPORT
    named: Named = NO_NAME  # WORKLOAD, named by user space

    @classmethod
    def unpack(cls, raw: bytes) -> tuple[int, int, GroupKey]:
        """(slot, gen, key) of a `groups` key."""
        slot, gen, addr, cgroup_id, netns, port, kind = GROUP_KEY.unpack(raw)
        return slot, gen, cls(ByKind(kind), addr, cgroup_id, netns, port)

    def pack(self, slot: int, gen: int) -> bytes:
        return GROUP_KEY.pack(slot, gen, self.addr, self.cgroup_id, self.netns, self.port, self.kind)

    def text(self, by: By | None = None, cgroup_path: CgroupPath = no_paths) -> str:
        """The canonical text (the `group` label): an address, a network (a prefix shorter
        than the address), a port, a cgroup's path (its id when the path is unknown, "-"
        for a socket without a cgroup-v2 cgroup), a netns inode; a container's or pod's
        name (Named), and for a socket of no known one "cgroup PATH netns INODE"."""
        k = self.kind
        if self.named:
            return str(self.named)
        if k in F.ADDRESS_KEYS:
            return _address(self.addr, by.bits if by is not None else F.ADDR_BITS)
        if k in (ByKind.RPORT, ByKind.LPORT):
            return str(self.port)
        if k == ByKind.NETNS:
            return str(self.netns)
        cgroup = _cgroup(self.cgroup_id, cgroup_path)
        return cgroup if k == ByKind.CGROUP else f"cgroup {cgroup} netns {self.netns}"

    def to_json(self, by: By | None = None, cgroup_path: CgroupPath = no_paths) -> dict[str, Any]:
        """The key's own fields: {"raddr"/"laddr": address or network}, {"rport"/"lport": N},
        {"cgroup_id", "cgroup": path or null}, {"netns": inode}; a named WORKLOAD group's
        {"container", "pod_namespace", "pod"} (each where known)."""
        k = self.kind
        if self.named:
            n = self.named
            return {name: value for name, value in (("container", n.container), ("pod_namespace", n.pod_namespace),
                                                    ("pod", n.pod)) if value}
        if k in F.ADDRESS_KEYS:
            return {k.name.lower(): self.text(by)}
        if k in (ByKind.RPORT, ByKind.LPORT):
            return {k.name.lower(): self.port}
        out: dict[str, Any] = {}
        if k in (ByKind.CGROUP, ByKind.WORKLOAD):
            out.update(cgroup_id=self.cgroup_id, cgroup=cgroup_path(self.cgroup_id) if self.cgroup_id else None)
        if k in (ByKind.NETNS, ByKind.WORKLOAD):
            out["netns"] = self.netns
        return out


def _address(addr: bytes, bits: int) -> str:
    """An address masked to `bits` of its family (IPv4: at most 32) as text: the
    address itself under a full-length prefix, else ADDRESS/PREFIX."""
    v4 = addr[:12] == _V4_PREFIX
    width = 32 if v4 else F.ADDR_BITS
    text = F.address_text(addr)
    kept = min(bits, width)
    return text if kept == width else f"{text}/{kept}"


def _cgroup(cgroup_id: int, cgroup_path: CgroupPath) -> str:
    if not cgroup_id:
        return "-"
    return cgroup_path(cgroup_id) or str(cgroup_id)


def quantile(h: Histogram, q: float) -> float | None:
    """The q-quantile (0 < q < 1) in microseconds, by linear interpolation inside the
    log2 bucket holding the rank (histogram_quantile's estimator); None when empty."""
    if not h.count:
        return None
    rank = q * h.count
    below = 0
    for k in range(BUCKETS):
        n = h.buckets[k]
        if n and below + n >= rank:
            high = high_us(k)
            if high is None:  # the open-ended bucket: its lower bound, as Prometheus answers +Inf's
                return float(low_us(k))
            low = float(low_us(k))
            return low + (high + 1 - low) * (rank - below) / n
        below += n
    return float(low_us(BUCKETS - 1))  # counts and buckets disagree (read mid-update): the last bound


def summary(h: Histogram) -> dict[str, Any]:
    """count, mean and estimated p50/p90/p99 of one histogram, microseconds (null when empty)."""
    return {"count": h.count,
            "mean_us": round(h.sum_us / h.count, 1) if h.count else None,
            "p50_us": _round(quantile(h, 0.5)), "p90_us": _round(quantile(h, 0.9)),
            "p99_us": _round(quantile(h, 0.99))}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


@dataclass(frozen=True)
class Group:
    """One group of a filter, as read from the kernel."""

    key: GroupKey
    first_ns: int  # CLOCK_MONOTONIC when this entry was made
    last_ns: int  # ... of its latest update
    closed: Histogram
    sampled: Histogram
    restarted: bool = False  # seen before with an earlier first_ns: evicted at least once since

    @classmethod
    def unpack(cls, key: GroupKey, raw: bytes) -> Group:
        first, last = GROUP_HEAD.unpack_from(raw)
        return cls(key, first, last, _counted(raw, GROUP_CLOSED_AT), _counted(raw, GROUP_SAMPLED_AT))

    def histogram(self, which: str) -> Histogram:
        return self.sampled if which == "sampled" else self.closed

    @property
    def total(self) -> int:
        """RTTs counted: connections that ended plus live samples."""
        return self.closed.count + self.sampled.count


def merged(groups: Iterable[Group], key_of: Callable[[GroupKey], GroupKey]) -> list[Group]:
    """The groups whose keys `key_of` maps to one key, summed into one group under it:
    a breakdown user space makes from the kernel's finer one (`by container`, issue 23:
    the kernel keys (cgroup id, netns), ByKind.WORKLOAD; a container is a set of them).
    Its `since` is its oldest part's, `last` its latest's, restarted if any part was."""
    parts: dict[GroupKey, list[Group]] = {}
    for g in groups:
        parts.setdefault(key_of(g.key), []).append(g)
    return [Group(key, min(g.first_ns for g in gs), max(g.last_ns for g in gs),
                  Histogram.from_cpus(g.closed for g in gs), Histogram.from_cpus(g.sampled for g in gs),
                  any(g.restarted for g in gs)) for key, gs in parts.items()]


def workload_key(by: By, names: Namer) -> Callable[[GroupKey], GroupKey]:
    """What `merged` sums a WORKLOAD filter's kernel groups under: the container's (or
    with `by pod` the pod's) name, where the runtimes know one; otherwise the kernel's
    own (cgroup id, netns) key, so that sockets of no known container stay apart
    (the host's services, a container ended long ago, a runtime ttcp does not follow).
    Keyed by name, not id: a container removed and run again under its name (the
    workload, not its process) stays one group."""
    def key_of(k: GroupKey) -> GroupKey:
        found = names(k.netns, k.cgroup_id)
        if found is None:
            return k
        named = Named("", found.pod_namespace, found.pod) if by.pod else found
        return GroupKey(ByKind.WORKLOAD, named=named) if named else k
    return key_of


def busiest(groups: Iterable[Group]) -> list[Group]:
    """Most RTTs (closed and sampled) first, ties by key: the order of GroupRows.top."""
    return sorted(groups, key=lambda g: (-g.total, g.key))


def _counted(raw: bytes, offset: int) -> Histogram:
    """A group's struct hist, its count the sum of its buckets (the kernel leaves it 0)."""
    h = Histogram.unpack(raw, offset)
    return Histogram(sum(h.buckets), h.sum_us, h.buckets)


def rank_value(g: Group, sort: str, which: str) -> float:
    """What `sort` orders groups by (larger first)."""
    h = g.histogram(which)
    if sort == "count":
        return float(h.count)
    if sort == "mean":
        return h.sum_us / h.count if h.count else -1.0
    return quantile(h, 0.5 if sort == "p50" else 0.99) or -1.0


def ordered(groups: Iterable[Group], sort: str = "count", which: str = "closed",
            text: Callable[[GroupKey], str] = str) -> list[Group]:
    """Largest first by `sort` over histogram `which`; ties by key text. Groups with no
    RTT in that histogram come last."""
    if sort not in SORTS or which not in HISTOGRAMS:
        raise ValueError(f"sort {sort!r} over {which!r}")
    return sorted(groups, key=lambda g: (-rank_value(g, sort, which), text(g.key)))


class GroupIndex:
    """Which entries of a read of the `groups` map are whose: each entry's filter (the
    first 8 bytes of its key, read for all entries at once as one strided memoryview:
    in C, thousands of entries cost a fraction of a millisecond), counted with a
    Counter, and the indices of each filter's entries (built on first use). It
    depends on the keys alone: a later read whose keys are the same bytes (no group
    made or evicted since: a scrape after a scrape, mostly) takes it over whole."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.ids: list[int] = memoryview(keys).cast("Q")[::GROUP_KEY.size // 8].tolist() if keys else []
        self.counts: Counter[int] = Counter(self.ids)
        self.of: dict[int, list[int]] | None = None

    def indices(self, of_filter: int) -> list[int]:
        if self.of is None:
            of: defaultdict[int, list[int]] = defaultdict(list)
            for i, f in enumerate(self.ids):
                of[f].append(i)
            self.of = dict(of)
        return self.of.get(of_filter, [])


class GroupRows:
    """One read of the `groups` map: its keys and values as two blobs (HashMap.dump),
    and its GroupIndex (`like`'s, an earlier read's, when the keys are the same
    bytes). The indices of a filter's entries, their RTT counts and the entries
    themselves are found or sliced out only when asked for. A filter is named by
    its (slot, generation)."""

    def __init__(self, keys: bytes, values: bytes, like: GroupIndex | None = None) -> None:
        self.keys, self.values = keys, values
        self.index = like if like is not None and like.keys == keys else GroupIndex(keys)
        self._ids, self._counts = self.index.ids, self.index.counts
        self._totals: dict[int, int] = {}

    def count(self, slot: int, gen: int) -> int:
        """How many entries the filter has."""
        return self._counts.get(_id(slot, gen), 0)

    def filters(self) -> list[tuple[int, int]]:
        """Every filter that has entries."""
        return [_slot_gen(i) for i in self._counts]

    def others(self, held: AbstractSet[int]) -> list[tuple[int, int]]:
        """The filters that have entries and are not `held` (by filter_id)."""
        return [_slot_gen(i) for i in self._counts.keys() - held]

    def indices(self, slot: int, gen: int) -> list[int]:
        """The indices of the filter's entries."""
        return self.index.indices(_id(slot, gen))

    def __len__(self) -> int:
        return len(self.keys) // GROUP_KEY.size

    def key(self, i: int) -> bytes:
        return self.keys[i * GROUP_KEY.size:(i + 1) * GROUP_KEY.size]

    def value(self, i: int) -> bytes:
        return self.values[i * GROUP_SIZE:(i + 1) * GROUP_SIZE]

    def total(self, i: int) -> int:
        """An entry's RTT count (connections that ended plus live samples): its buckets' sum."""
        known = self._totals.get(i)
        if known is None:
            known = self._totals[i] = sum(_BUCKETS_IN_VALUE.unpack_from(self.values, i * GROUP_SIZE))
        return known

    def top(self, slot: int, gen: int, k: int) -> list[int]:
        """The indices of the filter's `k` busiest entries (ties: the smaller key first)."""
        mine = self.indices(slot, gen) if self.count(slot, gen) else []
        if k >= len(mine):
            return list(mine)
        return heapq.nsmallest(k, mine, key=lambda i: (-self.total(i), self.key(i)))


def filter_id(slot: int, gen: int) -> int:
    """How GroupRows and GroupIndex name a filter: a key's first 8 bytes, (slot, gen),
    read as one native u64."""
    return slot | gen << 32 if _LITTLE else slot << 32 | gen


_id = filter_id


def _slot_gen(of_filter: int) -> tuple[int, int]:
    low, high = of_filter & 0xFFFFFFFF, of_filter >> 32
    return (low, high) if _LITTLE else (high, low)


def created(row: bytes, gen: int) -> int:
    """Groups made for the filter of generation `gen`: its slot's group_stats, every CPU's
    value one after the other (a per-CPU lookup's bytes; each 16, 8-byte aligned)."""
    return sum(n for g, n in GROUP_STAT.iter_unpack(row) if g == gen)


T = TypeVar("T")


class Lazy(Sequence[T]):
    """A sequence of known length made on first use: a filter's groups are decoded only
    when shown (a scrape of 1,000 filters shows the groups of a few dozen)."""

    __slots__ = ("_items", "_length", "_make")  # one per filter a scrape: no __dict__

    def __init__(self, length: int, make: Callable[[], Sequence[T]]) -> None:
        self._length = length
        self._make: Callable[[], Sequence[T]] | None = make
        self._items: Sequence[T] = ()

    def _made(self) -> Sequence[T]:
        if self._make is not None:
            self._items, self._make = self._make(), None
            assert len(self._items) == self._length
        return self._items

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, i: int) -> T: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[T]: ...

    def __getitem__(self, i: int | slice) -> T | Sequence[T]:
        return self._made()[i]

    def __iter__(self) -> Iterator[T]:
        return iter(self._made())


class GroupSet(NamedTuple):  # a tuple: a scrape makes one per filter with a breakdown
    """A filter's groups now: those the kernel holds, and how many it made and evicted."""

    by: By
    groups: Sequence[Group]  # those asked for (maybe Lazy: decoded when read)
    live: int  # its groups now (groups may hold only some): the kernel's entries; `by container` and
    # `by pod`: the named and merged groups (the kernel's entries being one per cgroup and netns)
    evicted: int  # kernel entries made and gone (the LRU made room with them), whatever the kind
    max_groups: int  # --max-groups: entries for every filter together


def evicted(created: int, live: int, before: int = 0) -> int:
    """Entries made and no longer there (user space deletes only a removed filter's):
    evicted. An insert is counted just after it lands, so for a moment `created` may
    lag `live` by one: never less than `before`, the last answer, nor 0."""
    return max(before, created - live, 0)


class GroupMemory:
    """When each group key was first made, as readers saw it: a key seen again with a
    later `first_ns` was evicted and made again (its counts start over). Bounded: the
    least recently seen keys are forgotten past `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 1)
        self._first: OrderedDict[bytes, tuple[int, bool]] = OrderedDict()  # raw key: (first_ns, restarted)

    def seen(self, raw_key: bytes, first_ns: int) -> bool:
        """Note the group; whether it restarted since it was first seen."""
        known = self._first.get(raw_key)
        restarted = known is not None and (known[1] or first_ns > known[0])
        self._first[raw_key] = (first_ns if known is None else min(first_ns, known[0]), restarted)
        self._first.move_to_end(raw_key)
        while len(self._first) > self.limit:
            self._first.popitem(last=False)
        return restarted

    def forget(self, filters: Iterable[tuple[int, int]]) -> None:
        """Drop the keys of filters gone (their slots and generations)."""
        gone = {FILTER_OF_KEY.pack(s, g) for s, g in filters}
        for raw in [k for k in self._first if k[:FILTER_OF_KEY.size] in gone]:
            del self._first[raw]


def group_json(g: Group, by: By, mono_to_wall: Callable[[int], float], cgroup_path: CgroupPath = no_paths,
               iso: Callable[[float], str] = str) -> dict[str, Any]:
    """One group as the API shows it."""
    since, last = mono_to_wall(g.first_ns), mono_to_wall(g.last_ns)
    return {"group": g.key.text(by, cgroup_path), **g.key.to_json(by, cgroup_path),
            "since": iso(since), "since_unix": since, "last": iso(last), "last_unix": last,
            "restarted": g.restarted,
            "closed": {**summary(g.closed), "histogram": g.closed.to_json()},
            "sampled": {**summary(g.sampled), "histogram": g.sampled.to_json()}}
