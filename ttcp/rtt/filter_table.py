"""The filter table: what the API edits and the BPF program matches against.

`FilterTable` is the small protocol the HTTP layer speaks; `KernelFilterTable`
keeps it in the program's maps (see bpf/tcprtt.bpf.c):

- exact addresses in the `hosts` hash, networks in the `nets` LPM trie,
  keyed as ttcp.rtt.filters encodes them;
- each filter's value names a slot of the per-CPU `stats` array and the
  generation the slot had when the filter was created; the program only
  counts into a slot whose generation matches, so a slot being recycled
  never takes a stray update, and a re-added filter starts from zero;
- `cfg.kinds` in the program's .bss says which of the eight filter kinds
  exist, so the program skips every lookup that cannot match, and
  `cfg.host_bits` holds one bit per exact address of each side
  (filters.host_bit), so a socket whose bit is clear costs no hash lookup.
  Both are written whole, before an add (the new filters' bits and kinds
  already in, so they match from the moment they enter the maps) and after a
  change that leaves them wrong: the kinds always exact, the bits allowed to
  keep up to STALE_HOST_BITS bits of removed addresses (_write_config).

ttcp is the only writer of these maps (the API runs on one thread, and a
pinned table is locked to one process), so the table keeps an index of what
it wrote: which filters exist, in which slot. Reads of counters always go to
the kernel. Every change is all or nothing: capacity is checked first, and a
write the kernel still refuses midway is undone before the error surfaces.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ttcp.errors import TtcpError
from ttcp.maps import Array, HashMap, KeyExistsError, LpmTrie, MapFullError, PerCpuArray
from ttcp.rtt import filters as F
from ttcp.rtt.filters import Filter
from ttcp.rtt.histogram import HIST, Histogram, summed

STATS_HEAD = struct.Struct("=QQ")  # struct filter_stats: gen, last_match_ns, then two struct hist
STATS_SIZE = STATS_HEAD.size + 2 * HIST.size
_CLOSED_AT = STATS_HEAD.size
_SAMPLED_AT = STATS_HEAD.size + HIST.size
STALE_HOST_BITS = 64  # host bits of removed addresses cfg may keep (ttcp.rtt.filter_table._write_config)
CONFIG = struct.Struct(f"=I{2 * F.HOST_BITS // 8}s")  # struct config: kinds, host_bits[2]


class TableFullError(TtcpError):
    """The table cannot take the filters asked for (nothing was added)."""

    def __init__(self, limit: int, used: int, adding: int) -> None:
        self.limit, self.used, self.adding = limit, used, adding
        super().__init__(f"the filter table holds {limit} entries ({used} in use, this request adds "
                         f"{adding})")


class CorruptTableError(TtcpError):
    """The maps hold something ttcp never writes (two filters sharing a counter slot,
    a slot past the stats map): another writer changed a pinned table."""


class NotInTableError(TtcpError):
    """Filters asked to be removed that the table does not hold (nothing was removed)."""

    def __init__(self, missing: Sequence[Filter]) -> None:
        self.missing = list(missing)
        super().__init__("not in the filter table: " + ", ".join(map(str, missing)))


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
    """What the API needs of a filter table; errors are TableFullError and NotInTableError."""

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

    def add(self, fs: Sequence[Filter]) -> list[Filter]:
        """Add the absent ones, all or none; returns those this call added."""
        ...

    def remove(self, fs: Sequence[Filter]) -> None:
        """Remove them all, or none when one is absent (NotInTableError)."""
        ...


@dataclass(frozen=True)
class _Slot:
    index: int
    gen: int


class KernelFilterTable:
    """A FilterTable in the BPF program's maps."""

    def __init__(self, hosts: HashMap[bytes, bytes], nets: LpmTrie[bytes, bytes], stats: PerCpuArray,
                 config: Array) -> None:
        self.hosts, self.nets, self.stats_map, self.config = hosts, nets, stats, config
        if config.value_size != CONFIG.size or stats.value_size != STATS_SIZE:
            raise TtcpError(f"the program's config ({config.value_size} bytes) or stats "
                            f"({stats.value_size} bytes) differ from ttcp's layout "
                            f"({CONFIG.size}, {STATS_SIZE}): object and ttcp do not match")
        self._max = min(hosts.max_entries, nets.max_entries, stats.max_entries)
        self._slots: dict[Filter, _Slot] = {}
        self._next_gen = 1
        self._version = 0
        self._written: tuple[int, ...] | None = None  # cfg as last written: kinds, host bits of each side
        self._listed: tuple[int, list[Filter]] = (-1, [])  # filters() of a version
        self._parsed: dict[int, tuple[int, bytes, FilterStats]] = {}  # slot: gen, last row, parsed
        self._kind_uses: Counter[int] = Counter()  # filters of each kind bit
        self._bit_uses: Counter[tuple[int, int]] = Counter()  # host filters of each (side, host bit)
        self._bits = [0, 0]  # cfg.host_bits of each side, as integers
        self._reload()

    def _reload(self) -> None:
        """Index what the maps hold already (a pinned table after a restart)."""
        self._slots = dict(_held_slots(self.hosts, self.nets))
        for f in self._slots:
            self._count(f, 1)
        owners: dict[int, Filter] = {}
        for f, slot in self._slots.items():
            if slot.index >= self.stats_map.max_entries:
                raise CorruptTableError(f"filter {f} counts into slot {slot.index}, past the "
                                        f"{self.stats_map.max_entries} slots of the stats map")
            if slot.index in owners:
                raise CorruptTableError(f"filters {owners[slot.index]} and {f} count into the same slot")
            owners[slot.index] = f
        self._next_gen = max((s.gen for s in self._slots.values()), default=0) + 1
        self._free = sorted(set(range(self.stats_map.max_entries)) - set(owners), reverse=True)
        self._restamp()
        self._write_config()

    def _restamp(self) -> None:
        """Give every filter's slot its generation on every CPU where it lacks it
        (a stats map pinned apart from its filters, or re-created): the program
        would otherwise never count into it. Counters that have it are kept."""
        rows = self.stats_map.rows_of(s.index for s in self._slots.values())
        fresh = bytes(STATS_SIZE - STATS_HEAD.size)
        for slot in self._slots.values():
            cpus = self.stats_map.split(rows[slot.index])
            if any(STATS_HEAD.unpack_from(r)[0] != slot.gen for r in cpus):
                self.stats_map.put_each(slot.index, [
                    r if STATS_HEAD.unpack_from(r)[0] == slot.gen else STATS_HEAD.pack(slot.gen, 0) + fresh
                    for r in cpus])

    # ---- reading ----

    @property
    def max_entries(self) -> int:
        return self._max

    @property
    def version(self) -> int:
        return self._version

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, f: object) -> bool:
        return f in self._slots

    def filters(self) -> list[Filter]:
        if self._listed[0] != self._version:
            self._listed = (self._version, sorted(self._slots, key=F.order_key))
        return list(self._listed[1])

    def stats(self, fs: Iterable[Filter]) -> dict[Filter, FilterStats]:
        held = {f: self._slots[f] for f in fs if f in self._slots}
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

    def add(self, fs: Sequence[Filter]) -> list[Filter]:
        new = list(dict.fromkeys(f for f in fs if f not in self._slots))
        if not new:
            return []
        if len(self._slots) + len(new) > self._max or len(new) > len(self._free):
            raise TableFullError(self._max, len(self._slots), len(new))
        added: list[Filter] = []
        self._write_config(new)
        try:
            for f in new:
                self._insert(f)
                added.append(f)
        except BaseException:
            self._delete(added)
            self._write_config()
            raise
        self._changed()
        return added

    def _insert(self, f: Filter) -> None:
        index, gen = self._free[-1], self._next_gen
        # The slot starts from zero under its new generation before the filter can match.
        self.stats_map.put_all(index, STATS_HEAD.pack(gen, 0) + bytes(STATS_SIZE - STATS_HEAD.size))
        target, key = self._map_of(f)
        try:
            target.put(key, F.VALUE.pack(index, gen, f.bits), only_new=True)
        except MapFullError:
            raise TableFullError(self._max, len(self._slots), 1) from None
        except KeyExistsError:  # not in the index, yet in the map: refuse rather than share a slot
            raise TtcpError(f"filter {f} is in the kernel table but not in ttcp's index") from None
        self._free.pop()
        self._next_gen += 1
        self._slots[f] = _Slot(index, gen)
        self._count(f, 1)

    def remove(self, fs: Sequence[Filter]) -> None:
        missing = [f for f in dict.fromkeys(fs) if f not in self._slots]
        if missing:
            raise NotInTableError(missing)
        self._delete(list(dict.fromkeys(fs)))
        self._changed()

    def _delete(self, fs: Sequence[Filter]) -> None:
        for f in fs:
            target, key = self._map_of(f)
            target.delete(key)
            slot = self._slots.pop(f)
            self._count(f, -1)
            self._parsed.pop(slot.index, None)
            # The slot keeps its counters until a new owner stamps it (_insert):
            # nothing reads a free slot, and a program still holding the old
            # value only ever counts into its own generation, which no reader
            # asks for once the filter is gone. One bpf() call fewer per removal.
            self._free.append(slot.index)

    def _changed(self) -> None:
        self._version += 1
        self._write_config()

    def _count(self, f: Filter, step: int) -> None:
        """Keep the filters of each kind, and of each host bit, counted (a change
        costs the same whatever the table's size)."""
        self._kind_uses[f.kind_bit] += step
        if f.is_host:
            key = (f.side, F.host_bit(f.addr))
            self._bit_uses[key] += step
            if self._bit_uses[key]:
                self._bits[f.side - 1] |= 1 << key[1]
            else:
                del self._bit_uses[key]
                self._bits[f.side - 1] &= ~(1 << key[1])

    def _write_config(self, adding: Iterable[Filter] = ()) -> None:
        """cfg.kinds and cfg.host_bits for the filters held (and those being added).

        The kinds written are always exact (a kind not in use costs the program
        nothing). The host bits written may keep up to STALE_HOST_BITS bits of
        removed addresses: a stale bit only lets a socket reach a hash lookup
        that misses, and skipping the write makes an API client that adds and
        removes addresses (the usual toggling) cost no cfg write at all."""
        kinds = 0
        for kind, uses in self._kind_uses.items():
            if uses:
                kinds |= kind
        bits = list(self._bits)
        for f in adding:
            kinds |= f.kind_bit
            if f.is_host:
                bits[f.side - 1] |= 1 << F.host_bit(f.addr)
        if self._written is not None and self._written[0] == kinds:
            held = self._written[1:]
            missing = any(b & ~w for b, w in zip(bits, held, strict=True))
            stale = sum((w & ~b).bit_count() for b, w in zip(bits, held, strict=True))
            if not missing and stale <= STALE_HOST_BITS:
                return
        self.config.put(0, CONFIG.pack(kinds, b"".join(b.to_bytes(F.HOST_BITS // 8, "little") for b in bits)))
        self._written = (kinds, *bits)


def _key_of(f: Filter) -> bytes:
    """f's key in its map: `hosts` for an exact address, `nets` for a network."""
    return F.host_key(f) if f.is_host else F.net_key(f)


def _held_slots(hosts: HashMap[bytes, bytes] | None,
                nets: HashMap[bytes, bytes] | None) -> Iterator[tuple[Filter, _Slot]]:
    """Every filter the maps hold, with the counter slot its value names."""
    for decode, target in ((F.from_host_key, hosts), (F.from_net_key, nets)):
        for raw_key, raw_value in target.items() if target is not None else ():
            index, gen, _ = F.VALUE.unpack(raw_value)
            yield decode(raw_key), _Slot(index, gen)


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
    held = dict(_held_slots(hosts, nets))
    if len(held) > limit:
        raise TableFullError(limit, len(held), 0)
    free = sorted(set(range(limit)) - {s.index for s in held.values()}, reverse=True)
    moved = 0
    for f, slot in sorted(held.items(), key=lambda item: item[1].index):
        if slot.index < limit:
            continue
        new = free.pop()
        stats.put_each(new, stats.values(slot.index))
        target = hosts if f.is_host else nets
        assert target is not None  # f came from it
        target.put(_key_of(f), F.VALUE.pack(new, slot.gen, f.bits), only_existing=True)
        stats.put_all(slot.index, bytes(STATS_SIZE))
        moved += 1
    return moved
