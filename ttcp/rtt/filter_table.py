"""The filter table: what the API edits and the BPF program matches against.

`FilterTable` is the small protocol the HTTP layer speaks; `KernelFilterTable`
keeps it in the program's maps (see bpf/tcprtt.bpf.c):

- exact addresses in the `hosts` hash, networks in the `nets` LPM trie,
  keyed as ttcp.rtt.filters encodes them; a workload's address filters in
  `nets` under its wid, and the workloads themselves in `cgroups` and `netns`
  (ttcp.rtt.table_rules.WorkloadRules says what goes where);
- each filter's value names a slot of the per-CPU `stats` array and the
  generation the slot had when the filter was created; the program only
  counts into a slot whose generation matches, so a slot being recycled
  never takes a stray update, and a re-added filter starts from zero; the
  generation also names the filter in events (FilterNames);
- `texts[slot]`: each filter's canonical text, which the program never reads:
  pinned with the table, it tells a restarted ttcp the filters that keys do not
  spell (those with a workload);
- `cfg` in the program's .bss: which filter kinds exist, so the program skips
  every lookup that cannot match, one bit per exact address of each side, so a
  socket whose bit is clear costs no hash lookup, and the levels of cgroup filters;
- a filter's breakdown (its `by` clause) is in its value; the program keeps its
  groups in the `groups` LRU hash (ttcp.rtt.groups), keyed by its slot and
  generation: removing a filter deletes them, and a read sweeps away any group
  of a filter no longer held (a late update racing a removal).

Which slot, which generation, which wid, whether a request fits and which cfg
and workload entries to write are ttcp.rtt.table_rules' decisions; this
module resolves workloads through a WorkloadResolver (I/O, ttcp.workloads)
and performs the map writes the rules call for, in an order that keeps the
program right at every step: cfg before an add (the new filters' bits and
kinds already in), a slot stamped and its text written before its filter
enters a map, cfg again after a change that leaves it wrong.

ttcp is the only writer of these maps (the API and the workload watcher run on
one thread, and a pinned table is locked to one process), so the rules' index
of what was written is the table's. Reads of counters always go to the kernel.
Every change is all or nothing: it is planned whole first, and a write the
kernel still refuses midway is undone before the error surfaces.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import struct
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ttcp.errors import TtcpError
from ttcp.maps import Array, HashMap, KeyExistsError, LpmTrie, MapFullError, PerCpuArray
from ttcp.rtt import filters as F
from ttcp.rtt import groups as G
from ttcp.rtt.events import FilterNames
from ttcp.rtt.filters import By, ByKind, Filter, FilterError, Workload
from ttcp.rtt.groups import Group, GroupKey, GroupMemory, GroupSet
from ttcp.rtt.histogram import HIST, Histogram, summed
from ttcp.rtt.table_rules import (
    CONFIG,
    EMPTY_TEXT,
    TEXT,
    Origin,
    Resolution,
    Slot,
    TableFullError,
    TableRules,
    WorkloadState,
    Write,
    plan_compaction,
    text_of,
    text_value,
)

log = logging.getLogger("ttcp")

STATS_HEAD = struct.Struct("=QQ")  # struct filter_stats: gen, last_match_ns, then two struct hist
STATS_SIZE = STATS_HEAD.size + 2 * HIST.size
_CLOSED_AT = STATS_HEAD.size
_SAMPLED_AT = STATS_HEAD.size + HIST.size


@dataclass(frozen=True)
class FilterStats:
    """What the program counted for one filter, all CPUs added up."""

    last_match_ns: int  # CLOCK_MONOTONIC of the latest match; 0: never
    closed: Histogram  # RTT of each matching connection when it ended; count = matches
    sampled: Histogram  # live RTT samples of matching established connections

    @property
    def matches(self) -> int:
        return self.closed.count

    @classmethod
    def empty(cls) -> FilterStats:
        return cls(0, Histogram.empty(), Histogram.empty())


class WorkloadError(FilterError):
    """A workload part that cannot be resolved here (a netns file that does not exist,
    no cgroup2 mount): the filter is refused, with a message that says why."""


class WorkloadResolver(Protocol):
    """Resolves filters' workload parts (ttcp.workloads does, with the file system).

    resolve() takes hold of what the filter needs (a netns fd, a cgroup path
    watch) until release(); it raises WorkloadError for a workload this host
    cannot give. Changes of a cgroup path's id later reach the table through
    KernelFilterTable.resolution_changed."""

    def resolve(self, w: Workload) -> Resolution: ...

    def release(self, w: Workload) -> None: ...

    def note(self, w: Workload) -> tuple[str, tuple[str, ...]]:
        """What GET /filters adds about a container or pod: a note ("" none) and the
        containers sharing its network namespace."""
        ...


class NoWorkloads:
    """The resolver of a table that takes no workload filters."""

    def resolve(self, w: Workload) -> Resolution:
        raise WorkloadError(f"{w}: this filter table takes no workload filters")

    def release(self, w: Workload) -> None:
        return None

    def note(self, w: Workload) -> tuple[str, tuple[str, ...]]:
        return "", ()


class FilterTable(Protocol):
    """What the API needs of a filter table; errors are TableFullError and NotInTableError
    (ttcp.rtt.table_rules), and WorkloadError for a workload that cannot be resolved."""

    @property
    def max_entries(self) -> int: ...

    @property
    def version(self) -> int:
        """Changes whenever the set of filters does (for answers rendered once per change)."""
        ...

    def __len__(self) -> int: ...

    def __contains__(self, f: object) -> bool: ...

    def filters(self) -> list[Filter]:
        """Every filter, in listing order (ttcp.rtt.filters.order_key)."""
        ...

    def stats(self, fs: Iterable[Filter]) -> dict[Filter, FilterStats]:
        """The counters of those filters the table holds."""
        ...

    def workload_state(self, f: Filter) -> WorkloadState | None:
        """Whether a workload filter is resolved, pending or shadowed (None: no workload)."""
        ...

    def add(self, fs: Sequence[Filter], origin: Origin = Origin.API) -> list[Filter]:
        """Add the absent ones, all or none, as `origin`'s; returns those this call added."""
        ...

    def origin(self, f: Filter) -> Origin | None:
        """Who added `f` (None: not in the table)."""
        ...

    def set_origin(self, fs: Iterable[Filter], origin: Origin) -> None:
        """Hand those of `fs` in the table to `origin` (counters kept)."""
        ...

    def remove(self, fs: Sequence[Filter]) -> None:
        """Remove them all, or none when one is absent (NotInTableError)."""
        ...

    def holder(self, f: Filter) -> Filter | None:
        """The filter held with f's kernel selector: f, f with another `by` clause, or None."""
        ...

    def groups(self, fs: Iterable[Filter], top: int | None = None) -> dict[Filter, GroupSet]:
        """The groups of those filters held with a breakdown: each one's `top` busiest
        (None: all; 0: none, only the counts), and how many it has, made and lost."""
        ...


class RuledTable:
    """What a FilterTable answers from its rules alone (ttcp.rtt.table_rules): size,
    version, membership, the listing and workload states. The tables build on it."""

    rules: TableRules
    resolver: WorkloadResolver

    @property
    def max_entries(self) -> int:
        return self.rules.max_entries

    @property
    def version(self) -> int:
        return self.rules.version

    def __len__(self) -> int:
        return len(self.rules)

    def __contains__(self, f: object) -> bool:
        return f in self.rules

    def filters(self) -> list[Filter]:
        return self.rules.filters()

    def workload_state(self, f: Filter) -> WorkloadState | None:
        state = self.rules.workloads.state(f)
        if state is None or f.workload is None or not f.workload.named:
            return state
        note, shared = self.resolver.note(f.workload)
        return dataclasses.replace(state, note=note or None, shared_with=shared)

    def origin(self, f: Filter) -> Origin | None:
        return self.rules.origin(f)

    def set_origin(self, fs: Iterable[Filter], origin: Origin) -> None:
        self.rules.set_origin(fs, origin)

    def holder(self, f: Filter) -> Filter | None:
        return self.rules.holder(f)


@dataclass
class GroupMaps:
    """The program's `groups` LRU hash and `group_stats` (per CPU, by slot: groups made)."""

    groups: HashMap[bytes, bytes]
    stats: PerCpuArray
    max_groups: int = 0  # --max-groups: the groups the map holds before it evicts (0: its max_entries)

    @property
    def held(self) -> int:
        """The groups of all filters together the kernel holds before it evicts one."""
        return self.max_groups or self.groups.max_entries

    def read(self, like: G.GroupIndex | None = None) -> G.GroupRows:
        """The whole map, in one batched read where the kernel has them; `like`: an
        earlier read's index, taken over if the keys did not change."""
        keys, values = self.groups.dump()
        return G.GroupRows(keys, values, like)


def resolve_all(resolver: WorkloadResolver, rules: TableRules,
                fs: Iterable[Filter]) -> tuple[dict[Workload, Resolution], list[Workload]]:
    """Each distinct workload part of `fs` resolved: those the table holds already as
    they are, the others by `resolver` (held: the second list, for the caller to
    release if the change is undone). On an error, those held so far are
    released and the error goes on."""
    done: dict[Workload, Resolution] = {}
    fresh: list[Workload] = []
    try:
        for f in fs:
            w = f.workload
            if w is None or w in done:
                continue
            known = rules.workloads.resolution_of(w)
            if known is None:
                known = resolver.resolve(w)
                fresh.append(w)
            done[w] = known
    except BaseException:
        for w in fresh:
            resolver.release(w)
        raise
    return done, fresh


class KernelFilterTable(RuledTable):
    """A FilterTable in the BPF program's maps."""

    def __init__(self, hosts: HashMap[bytes, bytes], nets: LpmTrie[bytes, bytes], stats: PerCpuArray,
                 config: Array, texts: Array, workload_maps: Mapping[str, HashMap[bytes, bytes]],
                 resolver: WorkloadResolver | None = None, group_maps: GroupMaps | None = None) -> None:
        """Take over the maps as they are: what they hold already (a pinned table
        after a restart) is indexed and checked, its slots restamped where needed,
        its workloads resolved again and cfg written for it. Without `group_maps`
        the table takes no filter with a breakdown."""
        self.hosts, self.nets, self.stats_map, self.config, self.texts = hosts, nets, stats, config, texts
        self.maps: dict[str, HashMap[bytes, bytes]] = {"hosts": hosts, "nets": nets, **workload_maps}
        self.resolver: WorkloadResolver = resolver or NoWorkloads()
        self.group_maps = group_maps
        self.memory = GroupMemory(4 * group_maps.groups.max_entries if group_maps is not None else 1)
        self._decoded: dict[bytes, tuple[bytes, Group]] = {}  # a group's key: its last value, decoded
        # The container and pod of a (netns, cgroup id): `by container` and `by pod` name and
        # merge the kernel's groups with it (the command sets the container registry's).
        self.workload_names: G.Namer = G.no_names
        # Between scrapes: the last read's index (which entry is whose, kept while no group is
        # made or evicted), the held filters with a breakdown (filter_id; for the table's
        # version) and each slot's evictions as last answered, with what they came from
        # (gen, group_stats row, live entries, evicted): a slot whose row and count did not
        # change is not summed again (group_stats changes only when a group is made).
        self._index: G.GroupIndex | None = None
        self._held: tuple[int, frozenset[int]] = (-1, frozenset())
        self._made: dict[int, tuple[int, bytes, int, int]] = {}
        self._made_rows: tuple[bytes | None, object] = (None, None)  # group_stats as last read whole
        # (PerCpuArray.rows), and for which filters (_wanted_slots' list)
        self._wanted: tuple[int, list[Filter], list[tuple[int, int, int, Filter]]] = (-1, [], [])
        self.names = FilterNames()
        if config.value_size != CONFIG.size or stats.value_size != STATS_SIZE or texts.value_size != TEXT.size:
            raise TtcpError(f"the program's config ({config.value_size} bytes), stats ({stats.value_size} "
                            f"bytes) or texts ({texts.value_size} bytes) differ from ttcp's layout "
                            f"({CONFIG.size}, {STATS_SIZE}, {TEXT.size}): object and ttcp do not match")
        held = held_filters(hosts, nets, texts)
        self._drop_workload_keys()
        limit = min([hosts.max_entries, nets.max_entries, stats.max_entries, texts.max_entries,
                     *(m.max_entries for m in workload_maps.values())])
        self.rules = TableRules(limit, stats.max_entries, held, held_origins(texts, held))
        self._parsed: dict[int, tuple[int, bytes, FilterStats]] = {}  # slot: gen, last row, parsed
        for f, slot in self.rules.slots.items():
            self.names.add(slot.gen, str(f))
        self._restamp()
        self._write_texts(held)
        self._resolve_held()
        self._write_config()
        self._sweep()

    def _drop_workload_keys(self) -> None:
        """Address keys of workloads (wid != 0) go: their wids are given again below."""
        for key in [k for k in self.nets if F.from_net_key(k)[0]]:
            self.nets.delete(key)
        for key in [k for k in self.hosts if F.from_host_key(k)[0]]:
            self.hosts.delete(key)

    def _restamp(self) -> None:
        """Give every filter's slot its generation on every CPU where it lacks it
        (a stats map pinned apart from its filters, or re-created): the program
        would otherwise never count into it. Counters that have it are kept."""
        slots = self.rules.slots
        rows = self.stats_map.rows_of(s.index for s in slots.values())
        fresh = bytes(STATS_SIZE - STATS_HEAD.size)
        for slot in slots.values():
            cpus = self.stats_map.split(rows[slot.index])
            if any(STATS_HEAD.unpack_from(r)[0] != slot.gen for r in cpus):
                self.stats_map.put_each(slot.index, [
                    r if STATS_HEAD.unpack_from(r)[0] == slot.gen else STATS_HEAD.pack(slot.gen, 0) + fresh
                    for r in cpus])

    def _write_texts(self, held: Mapping[Filter, Slot]) -> None:
        """Every held filter's text, where the texts map lacks it (a table of the
        previous layout had none)."""
        for f, slot in held.items():
            want = text_value(f, slot, self.rules.origin(f) or Origin.API)
            if self.texts.get(slot.index) != want:
                self.texts.put(slot.index, want)

    def _resolve_held(self) -> None:
        """The held filters with a workload, resolved as now (pending where it cannot
        be: a namespace whose file is gone), and their kernel entries written."""
        resolved: dict[Workload, Resolution] = {}
        for f in self.rules.slots:
            w = f.workload
            if w is None:
                continue
            if w not in resolved:
                try:
                    resolved[w] = self.resolver.resolve(w)
                except WorkloadError as e:
                    log.warning("filter %s: %s; kept, pending", f, e)
                    resolved[w] = (Resolution.cgroup(w.name, None) if w.kind == F.CGROUP
                                   else Resolution.netns(None, w.name))
            self.rules.workloads.add(f, resolved[w])
        self._apply(self.rules.workload_writes())

    # ---- reading ----

    def stats(self, fs: Iterable[Filter]) -> dict[Filter, FilterStats]:
        slots = self.rules.slots
        held = {f: slots[f] for f in fs if f in slots}
        rows = self.stats_map.rows_of(s.index for s in held.values())
        out = {}
        for f, slot in held.items():
            raw = rows[slot.index]
            known = self._parsed.get(slot.index)
            if known is None or known[0] != slot.gen or known[1] != raw:  # idle filters: not parsed again
                known = self._parsed[slot.index] = (slot.gen, raw, self._parse(raw, slot.gen))
            out[f] = known[2]
        return out

    def _parse(self, raw: bytes, gen: int) -> FilterStats:
        cpus = [r for r in self.stats_map.split(raw) if STATS_HEAD.unpack_from(r)[0] == gen]
        last = max((STATS_HEAD.unpack_from(r)[1] for r in cpus), default=0)
        return FilterStats(last, summed(cpus, _CLOSED_AT), summed(cpus, _SAMPLED_AT))

    # ---- writing ----

    def add(self, fs: Sequence[Filter], origin: Origin = Origin.API) -> list[Filter]:
        planned = self.rules.plan_add(fs)
        if not planned:
            return []
        if self.group_maps is None and any(f.by is not None for f, _ in planned):
            raise FilterError("this filter table keeps no groups: a filter with `by` cannot be added")
        resolutions, fresh = resolve_all(self.resolver, self.rules, (f for f, _ in planned))
        added: list[Filter] = []
        self._write_config(f for f, _ in planned)
        try:
            for f, slot in planned:
                self._insert(f, slot, resolutions[f.workload] if f.workload is not None else None, origin)
                added.append(f)
            self._apply(self.rules.workload_writes())
        except BaseException:
            self._delete(added)
            self._release(fresh)
            self._write_config()
            raise
        self._changed()
        return added

    def _insert(self, f: Filter, slot: Slot, resolution: Resolution | None, origin: Origin) -> None:
        # The slot starts from zero under its new generation before the filter can match.
        self.stats_map.put_all(slot.index, STATS_HEAD.pack(slot.gen, 0) + bytes(STATS_SIZE - STATS_HEAD.size))
        self.texts.put(slot.index, text_value(f, slot, origin))
        if f.workload is None:
            self._put_key(f, self.hosts if f.in_hosts else self.nets, F.key_of(f), F.value_of(f, slot.index, slot.gen))
        self.rules.added(f, slot, resolution, origin)  # a workload's entries: workload_writes()
        self.names.add(slot.gen, str(f))

    def _put_key(self, f: Filter, target: HashMap[bytes, bytes], key: bytes, value: bytes) -> None:
        try:
            target.put(key, value, only_new=True)
        except MapFullError:
            raise TableFullError(self.max_entries, len(self.rules), 1) from None
        except KeyExistsError:  # not in the index, yet in the map: refuse rather than share a slot
            raise TtcpError(f"filter {f} is in the kernel table but not in ttcp's index") from None

    def _apply(self, writes: Iterable[Write]) -> None:
        for w in writes:
            target = self.maps[w.map]
            if w.value is None:
                target.delete(w.key)
            else:
                try:
                    target.put(w.key, w.value)
                except MapFullError:
                    raise TableFullError(self.max_entries, len(self.rules), 1) from None

    def set_origin(self, fs: Iterable[Filter], origin: Origin) -> None:
        """The new owner is written to each changed filter's texts entry, so a pinned
        table remembers it across restarts."""
        slots = self.rules.slots
        for f in self.rules.set_origin(fs, origin):
            self.texts.put(slots[f].index, text_value(f, slots[f], origin))

    def remove(self, fs: Sequence[Filter]) -> None:
        planned = self.rules.plan_remove(fs)
        self._delete(planned)
        self._release({f.workload: None for f in planned if f.workload is not None})
        self._changed()

    def _delete(self, fs: Sequence[Filter]) -> None:
        gone = {(self.rules.slots[f].index, self.rules.slots[f].gen) for f in fs if f.by is not None}
        for f in fs:
            slot = self.rules.slots[f]
            self.texts.put(slot.index, EMPTY_TEXT)  # first: a crash then leaves no workload to rebuild
            if f.workload is None:
                (self.hosts if f.in_hosts else self.nets).delete(F.key_of(f))
            self.rules.removed(f)
            self.names.remove(slot.gen)
            self._parsed.pop(slot.index, None)
            # The slot keeps its counters until a new owner stamps it (_insert):
            # nothing reads a free slot, and a program still holding the old
            # value only ever counts into its own generation, which no reader
            # asks for once the filter is gone. One bpf() call fewer per removal.
        self._apply(self.rules.workload_writes())
        if gone:
            self._drop_groups(gone)

    # ---- groups ----

    def _drop_groups(self, gone: Collection[tuple[int, int]], rows: G.GroupRows | None = None) -> int:
        """Delete the groups of the filters gone (their slots and generations), among
        `rows` (a read of the map; None: read it); returns how many. Their group_stats
        stay: the program restarts a slot's count at a new generation."""
        if self.group_maps is None:
            return 0
        rows = self.group_maps.read() if rows is None else rows
        keys = [rows.key(i) for slot, gen in gone for i in rows.indices(slot, gen)]
        self.memory.forget(gone)
        for slot, gen in gone:
            if self._made.get(slot, (-1,))[0] == gen:
                del self._made[slot]
        for k in keys:
            self._decoded.pop(k, None)
        return self.group_maps.groups.delete_many(keys)

    def groups(self, fs: Iterable[Filter], top: int | None = None) -> dict[Filter, GroupSet]:
        """One read of the whole `groups` map (a few batched calls) for every filter asked
        for; the groups of filters no longer held are deleted on the way."""
        wanted = self._wanted_slots(fs)
        if not wanted or self.group_maps is None:
            return {}
        maps = self.group_maps
        rows = maps.read(self._index)
        self._index = rows.index
        # group_stats changes only when a group is made: read whole and unchanged since the
        # last call for the same filters, no slot's evictions need summing again unless its
        # live count changed.
        whole = maps.stats.rows()
        same = whole is not None and self._made_rows[1] is wanted and whole == self._made_rows[0]
        self._made_rows = (whole, wanted)
        width = len(whole) // maps.stats.max_entries if whole is not None else 0
        made = maps.stats.rows_of(index for index, *_ in wanted) if whole is None else {}
        last, counts, size = self._made, rows.index.counts, maps.held
        out: dict[Filter, GroupSet] = {}
        for index, gen, filter_id, f in wanted:  # once per filter a scrape: kept lean
            assert f.by is not None
            live, known = counts.get(filter_id, 0), last.get(index)
            if known is None or known[0] != gen or known[2] != live or not same:
                row = made[index] if whole is None else whole[index * width:(index + 1) * width]
                if known is None or known[0] != gen or known[2] != live or known[1] != row:
                    before = known[3] if known is not None and known[0] == gen else 0
                    known = last[index] = (gen, row, live, G.evicted(G.created(row, gen), live, before))
            if f.by.kind == ByKind.WORKLOAD:  # named and merged: all of its entries decoded now
                merged = self._merged(rows, index, gen, f.by)
                out[f] = GroupSet(f.by, merged if top is None else merged[:top], len(merged), known[3], size)
                continue
            shown = live if top is None else min(top, live)
            out[f] = GroupSet(f.by, G.Lazy(shown, self._decoder(rows, index, gen, shown)), live, known[3], size)
        self._sweep(rows)
        return out

    def _merged(self, rows: G.GroupRows, slot: int, gen: int, by: By) -> list[Group]:
        """A `by container` or `by pod` filter's groups: every kernel entry of it (one per
        cgroup and netns) named, those of one container or pod summed, busiest first."""
        parts = [self._group(rows.key(i), rows.value(i)) for i in rows.indices(slot, gen)]
        return G.busiest(G.merged(parts, G.workload_key(by, self.workload_names)))

    def _wanted_slots(self, fs: Iterable[Filter]) -> list[tuple[int, int, int, Filter]]:
        """(slot, gen, filter_id, filter) of those of `fs` held with a breakdown; the
        last answer's again for the same filters (a scrape asks for the same list)."""
        fs = list(fs)
        version, asked, known = self._wanted
        if version == self.rules.version and asked == fs:
            return known
        slots = self.rules.slots
        known = [(slots[f].index, slots[f].gen, G.filter_id(slots[f].index, slots[f].gen), f) for f in fs
                 if f in slots and f.by is not None]
        self._wanted = (self.rules.version, fs, known)
        return known

    def _sweep(self, rows: G.GroupRows | None = None) -> None:
        """Delete the groups of filters no longer held (a late update racing a removal,
        a pinned table's leftovers); `rows`: a read of the map."""
        if self.group_maps is None:
            return
        rows = self.group_maps.read() if rows is None else rows
        if self._held[0] != self.rules.version:
            self._held = (self.rules.version, frozenset(G.filter_id(s.index, s.gen)
                                                        for f, s in self.rules.slots.items() if f.by is not None))
        strays = rows.others(self._held[1])
        if strays:
            log.info("deleting the groups of %d filters no longer held", len(strays))
            self._drop_groups(strays, rows)

    def _decoder(self, rows: G.GroupRows, slot: int, gen: int, k: int) -> Callable[[], list[Group]]:
        """What picks a filter's `k` busiest entries of `rows` and decodes them, once they
        are read (GroupSet.groups is Lazy: a scrape shows the groups of few filters); a
        partial, not a closure: one object per filter a scrape."""
        return functools.partial(self._top, rows, slot, gen, k)

    def _top(self, rows: G.GroupRows, slot: int, gen: int, k: int) -> list[Group]:
        return [self._group(rows.key(i), rows.value(i)) for i in rows.top(slot, gen, k)]

    def _group(self, key: bytes, value: bytes) -> Group:
        """A row as a Group (decoded again only when its value changed), its restart noted."""
        known = self._decoded.get(key)
        if known is None or known[0] != value:
            if self.group_maps is not None and len(self._decoded) >= self.group_maps.groups.max_entries:
                self._decoded = {}  # more than the map can hold: keys gone long ago, start over
                self._decoded = {}
            known = self._decoded[key] = (value, Group.unpack(GroupKey.unpack(key)[2], value))
        g = known[1]
        return dataclasses.replace(g, restarted=True) if self.memory.seen(key, g.first_ns) else g

    def _release(self, workloads: Iterable[Workload]) -> None:
        for w in workloads:
            if not self.rules.in_use(w):
                self.resolver.release(w)

    def resolution_changed(self, resolution: Resolution, now: float | None = None) -> bool:
        """A cgroup path's id changed (removed, created, created again: the watcher
        says so): its entries follow; the old id lingers (table_rules.LINGER_S,
        until expire()). False when the table had nothing to change."""
        when = time.monotonic() if now is None else now
        if not self.rules.workloads.resolved(resolution.selector, resolution.id, when):
            return False
        self._apply(self.rules.workload_writes())
        return True

    def workload_moved(self, w: Workload, resolution: Resolution) -> bool:
        """Container or pod `w` resolves to `resolution` now: its filters follow (cfg
        first when the new resolution needs another cgroup level, then the entries:
        the old ones go in the same pass). False when nothing changed."""
        if not self.rules.moved(w, resolution):
            return False
        self._write_config()
        self._apply(self.rules.workload_writes())
        return True

    def expire(self, now: float | None = None) -> float | None:
        """Drop the lingering ids whose time is up; when to call again (None: never)."""
        workloads = self.rules.workloads
        if workloads.expire(time.monotonic() if now is None else now):
            self._apply(self.rules.workload_writes())
        return workloads.next_expiry()

    def _changed(self) -> None:
        self.rules.changed()
        self._write_config()

    def _write_config(self, adding: Iterable[Filter] = ()) -> None:
        """Write cfg if the rules ask for it (a removal mostly does not: table_rules)."""
        cfg = self.rules.config_to_write(adding)
        if cfg is not None:
            self.config.put(0, cfg.pack())
            self.rules.config_written(cfg)


def held_origins(texts: Array | None, held: Mapping[Filter, Slot]) -> dict[Filter, Origin]:
    """Who added each held filter, as its texts entry says (Origin.API where the entry
    is missing, is another filter's, or names no origin ttcp knows)."""
    return {f: _origin_in(texts, f, slot) for f, slot in held.items()}


def _origin_in(texts: Array | None, f: Filter, slot: Slot) -> Origin:
    entry = text_of(texts.get(slot.index)) if texts is not None else None
    if entry is None or entry[0] != slot.gen or entry[2] != str(f):
        return Origin.API
    try:
        return Origin(entry[1])
    except ValueError:  # a byte this ttcp never writes
        return Origin.API


def held_filters(hosts: HashMap[bytes, bytes] | None, nets: HashMap[bytes, bytes] | None,
                 texts: Array | None, old_layout: Collection[str] = ()) -> dict[Filter, Slot]:
    """Every filter a table's maps hold, with the counter slot its value names: those
    without a workload from their keys (wid 0), those with one from `texts` (their
    keys do not spell them). `old_layout` names the maps whose keys are of the
    previous layout (no wid: a pinned table of an earlier ttcp)."""
    return {f: slot for f, slot, _, _ in _held_entries(hosts, nets, texts, old_layout)}


def _held_entries(hosts: HashMap[bytes, bytes] | None, nets: HashMap[bytes, bytes] | None,
                  texts: Array | None, old_layout: Collection[str]
                  ) -> Iterator[tuple[Filter, Slot, HashMap[bytes, bytes] | None, bytes]]:
    """(filter, slot, the map holding its key and the key as stored) of every filter
    held; a workload's filter has no such key (None, b"")."""
    seen: set[Filter] = set()
    decoders = (("hosts", F.from_host_key, F.upgraded_host_key, hosts),
                ("nets", F.from_net_key, F.upgraded_net_key, nets))
    for name, decode, upgrade, target in decoders:
        for raw_key, raw_value in target.items() if target is not None else ():
            wid, f = decode(upgrade(raw_key) if name in old_layout else raw_key)
            if not wid:
                index, gen = F.VALUE.unpack(raw_value)[:2]
                f = f.with_by(F.by_of_value(raw_value))  # its breakdown: in the value, not the key
                seen.add(f)
                yield f, Slot(index, gen), target, raw_key
    for index, raw in enumerate(texts.values()) if texts is not None else ():
        entry = text_of(raw)
        if entry is None:
            continue
        gen, _, text = entry
        try:
            f = F.parse(text)
        except FilterError:
            log.warning("texts[%d] holds %r, which is no filter: ignored", index, text[:80])
            continue
        if f.workload is not None and f not in seen:
            seen.add(f)
            yield f, Slot(index, gen), None, b""


def compact_slots(hosts: HashMap[bytes, bytes] | None, nets: HashMap[bytes, bytes] | None,
                  stats: PerCpuArray, texts: Array | None, limit: int, old_layout: Collection[str] = (),
                  group_maps: GroupMaps | None = None) -> int:
    """Move every filter whose counter slot is `limit` or past it to a free slot below,
    counters, text and groups kept, so that the table fits a stats map of `limit` slots;
    returns how many moved. A map that does not exist is None; `old_layout` as
    for held_filters. TableFullError when more than `limit` filters exist (the
    caller should have said so first).

    For a pinned table about to shrink, before its maps are copied. Each move
    copies the slot's values on every CPU and its text, repoints the filter (one
    map update; a workload's filter has no key to repoint: its keys are written
    again at start), then clears the old slot: stopped anywhere, the maps stay
    consistent. The groups of a filter with a breakdown follow it (copied under
    the new slot, then deleted: stopped between the two, the old ones are swept
    as strays at start). No program may be using the maps meanwhile.
    """
    entries = {f: (target, key) for f, _, target, key in _held_entries(hosts, nets, texts, old_layout)}
    moves = plan_compaction(held_filters(hosts, nets, texts, old_layout), limit)
    rows = group_maps.read() if group_maps is not None and moves else None
    for f, slot, new in moves:
        if group_maps is not None and rows is not None and f.by is not None:
            mine = [(rows.key(i), rows.value(i)) for i in rows.indices(slot.index, slot.gen)]
            for key, value in mine:
                group_maps.groups.put(G.FILTER_OF_KEY.pack(new, slot.gen) + key[G.FILTER_OF_KEY.size:], value)
            group_maps.stats.put_each(new, group_maps.stats.values(slot.index))
            group_maps.groups.delete_many(k for k, _ in mine)
        stats.put_each(new, stats.values(slot.index))
        if texts is not None:
            texts.put(new, text_value(f, Slot(new, slot.gen), _origin_in(texts, f, slot)))
        target, key = entries[f]
        if target is not None:
            target.put(key, F.value_of(f, new, slot.gen), only_existing=True)
        stats.put_all(slot.index, bytes(STATS_SIZE))
        if texts is not None:
            texts.put(slot.index, EMPTY_TEXT)
    return len(moves)
