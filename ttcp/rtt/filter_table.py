"""The filter table: what the API edits and the BPF program matches against.

`FilterTable` is the small protocol the HTTP layer speaks; `KernelFilterTable`
keeps it in the program's maps (see bpf/tcprtt.bpf.c):

- exact addresses in the `hosts` hash, networks in the `nets` LPM trie,
  keyed as ttcp.rtt.filters encodes them;
- each filter's value names a slot of the per-CPU `stats` array and the
  generation the slot had when the filter was created; the program only
  counts into a slot whose generation matches, so a slot being recycled
  never takes a stray update, and a re-added filter starts from zero;
- `cfg` in the program's .bss: which of the eight filter kinds exist, so the
  program skips every lookup that cannot match, and one bit per exact address
  of each side, so a socket whose bit is clear costs no hash lookup.

Which slot, which generation, whether a request fits and which cfg to write
are ttcp.rtt.table_rules' decisions; this module performs the map writes they
call for, in an order that keeps the program right at every step: cfg before
an add (the new filters' bits and kinds already in), a slot stamped before
its filter enters a map, cfg again after a change that leaves it wrong.

ttcp is the only writer of these maps (the API runs on one thread, and a
pinned table is locked to one process), so the rules' index of what was
written is the table's. Reads of counters always go to the kernel. Every
change is all or nothing: it is planned whole first, and a write the kernel
still refuses midway is undone before the error surfaces.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ttcp.errors import TtcpError
from ttcp.maps import Array, HashMap, KeyExistsError, LpmTrie, MapFullError, PerCpuArray
from ttcp.rtt import filters as F
from ttcp.rtt.filters import Filter
from ttcp.rtt.histogram import HIST, Histogram, summed
from ttcp.rtt.table_rules import (
    CONFIG,
    Origin,
    Slot,
    TableFullError,
    TableRules,
    plan_compaction,
)

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


class FilterTable(Protocol):
    """What the API needs of a filter table; errors are TableFullError and NotInTableError
    (ttcp.rtt.table_rules)."""

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


class RuledTable:
    """What a FilterTable answers from its rules alone (ttcp.rtt.table_rules): size,
    version, membership and the listing. The tables build on it."""

    rules: TableRules

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

    def origin(self, f: Filter) -> Origin | None:
        return self.rules.origin(f)

    def set_origin(self, fs: Iterable[Filter], origin: Origin) -> None:
        self.rules.set_origin(fs, origin)


class KernelFilterTable(RuledTable):
    """A FilterTable in the BPF program's maps."""

    def __init__(self, hosts: HashMap[bytes, bytes], nets: LpmTrie[bytes, bytes], stats: PerCpuArray,
                 config: Array) -> None:
        """Take over the maps as they are: what they hold already (a pinned table
        after a restart) is indexed and checked, its slots restamped where needed,
        and cfg written for it."""
        self.hosts, self.nets, self.stats_map, self.config = hosts, nets, stats, config
        if config.value_size != CONFIG.size or stats.value_size != STATS_SIZE:
            raise TtcpError(f"the program's config ({config.value_size} bytes) or stats "
                            f"({stats.value_size} bytes) differ from ttcp's layout "
                            f"({CONFIG.size}, {STATS_SIZE}): object and ttcp do not match")
        self.rules = TableRules(min(hosts.max_entries, nets.max_entries, stats.max_entries),
                                stats.max_entries, dict(_held_slots(hosts, nets)))
        self._parsed: dict[int, tuple[int, bytes, FilterStats]] = {}  # slot: gen, last row, parsed
        self._restamp()
        self._write_config()

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

    def _map_of(self, f: Filter) -> tuple[HashMap[bytes, bytes], bytes]:
        return (self.hosts if f.is_host else self.nets), _key_of(f)

    def add(self, fs: Sequence[Filter], origin: Origin = Origin.API) -> list[Filter]:
        planned = self.rules.plan_add(fs)
        if not planned:
            return []
        added: list[Filter] = []
        self._write_config(f for f, _ in planned)
        try:
            for f, slot in planned:
                self._insert(f, slot, origin)
                added.append(f)
        except BaseException:
            self._delete(added)
            self._write_config()
            raise
        self._changed()
        return added

    def _insert(self, f: Filter, slot: Slot, origin: Origin) -> None:
        # The slot starts from zero under its new generation before the filter can match.
        self.stats_map.put_all(slot.index, STATS_HEAD.pack(slot.gen, 0) + bytes(STATS_SIZE - STATS_HEAD.size))
        target, key = self._map_of(f)
        try:
            target.put(key, F.VALUE.pack(slot.index, slot.gen, f.bits), only_new=True)
        except MapFullError:
            raise TableFullError(self.max_entries, len(self.rules), 1) from None
        except KeyExistsError:  # not in the index, yet in the map: refuse rather than share a slot
            raise TtcpError(f"filter {f} is in the kernel table but not in ttcp's index") from None
        self.rules.added(f, slot, origin)

    def remove(self, fs: Sequence[Filter]) -> None:
        self._delete(self.rules.plan_remove(fs))
        self._changed()

    def _delete(self, fs: Sequence[Filter]) -> None:
        for f in fs:
            target, key = self._map_of(f)
            target.delete(key)
            slot = self.rules.removed(f)
            self._parsed.pop(slot.index, None)
            # The slot keeps its counters until a new owner stamps it (_insert):
            # nothing reads a free slot, and a program still holding the old
            # value only ever counts into its own generation, which no reader
            # asks for once the filter is gone. One bpf() call fewer per removal.

    def _changed(self) -> None:
        self.rules.changed()
        self._write_config()

    def _write_config(self, adding: Iterable[Filter] = ()) -> None:
        """Write cfg if the rules ask for it (a removal mostly does not: table_rules)."""
        cfg = self.rules.config_to_write(adding)
        if cfg is not None:
            self.config.put(0, cfg.pack())
            self.rules.config_written(cfg)


def _key_of(f: Filter) -> bytes:
    """f's key in its map: `hosts` for an exact address, `nets` for a network."""
    return F.host_key(f) if f.is_host else F.net_key(f)


def _held_slots(hosts: HashMap[bytes, bytes] | None,
                nets: HashMap[bytes, bytes] | None) -> Iterator[tuple[Filter, Slot]]:
    """Every filter the maps hold, with the counter slot its value names."""
    for decode, target in ((F.from_host_key, hosts), (F.from_net_key, nets)):
        for raw_key, raw_value in target.items() if target is not None else ():
            index, gen, _ = F.VALUE.unpack(raw_value)
            yield decode(raw_key), Slot(index, gen)


def compact_slots(hosts: HashMap[bytes, bytes] | None, nets: HashMap[bytes, bytes] | None,
                  stats: PerCpuArray, limit: int) -> int:
    """Move every filter whose counter slot is `limit` or past it to a free slot below,
    counters kept, so that the table fits a stats map of `limit` slots; returns
    how many moved. A filter map that does not exist is None. TableFullError
    when more than `limit` filters exist (the caller should have said so first).

    For a pinned table about to shrink, before its maps are copied. Each move
    copies the slot's values on every CPU, repoints the filter (one map update),
    then clears the old slot: stopped anywhere, the maps stay consistent. No
    program may be using the maps meanwhile.
    """
    moves = plan_compaction(dict(_held_slots(hosts, nets)), limit)
    for f, slot, new in moves:
        stats.put_each(new, stats.values(slot.index))
        target = hosts if f.is_host else nets
        assert target is not None  # f came from it
        target.put(_key_of(f), F.VALUE.pack(new, slot.gen, f.bits), only_existing=True)
        stats.put_all(slot.index, bytes(STATS_SIZE))
    return len(moves)
