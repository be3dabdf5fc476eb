"""The filter table's rules, apart from its maps (h11's way: this decides, the caller writes).

Which counter slot and generation a new filter gets (the lowest free slot, the
most recently freed first; generations only grow, so a slot reused, or a
filter re-added, starts from zero), whether a request fits (all or nothing:
nothing changes before the plan is whole), and the `cfg` word the program
reads: which kinds of filter exist (always exact) and each side's host bitmap
(allowed to keep up to STALE_HOST_BITS bits of removed addresses, so that
removals cost no cfg write). ttcp.rtt.filter_table.KernelFilterTable performs
the map writes these rules decide; tests/support/memory_table.py keeps the
same rules with no maps at all.

A filter counts by its kind bit (one bit of cfg.kinds per kind of lookup the
program does), whatever its key; the host bitmap is one policy on top, for
the filters it gives a bit (exact addresses). A new key kind adds a kind bit,
and a policy of its own if it wants a bitmap.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType

from ttcp.errors import TtcpError
from ttcp.rtt import filters as F
from ttcp.rtt.filters import Filter

STALE_HOST_BITS = 64  # host bits of removed addresses a written cfg may keep
SIDES = 2  # src, dst: one host bitmap each
CONFIG = struct.Struct(f"=I{SIDES * F.HOST_BITS // 8}s")  # struct config: kinds, host_bits[2]


class TableFullError(TtcpError):
    """The table cannot take the filters asked for (nothing was added)."""

    def __init__(self, limit: int, used: int, adding: int) -> None:
        self.limit, self.used, self.adding = limit, used, adding
        super().__init__(f"the filter table holds {limit} entries ({used} in use, this request adds "
                         f"{adding})")


class NotInTableError(TtcpError):
    """Filters asked to be removed that the table does not hold (nothing was removed)."""

    def __init__(self, missing: Sequence[Filter]) -> None:
        self.missing = list(missing)
        super().__init__("not in the filter table: " + ", ".join(map(str, missing)))


class CorruptTableError(TtcpError):
    """The maps hold something ttcp never writes (two filters sharing a counter slot,
    a slot past the stats map): another writer changed a pinned table."""


class Origin(IntEnum):
    """Who put a filter in the table. The API (and --filter) add and remove their own;
    a filter of the filters file (--filters-file) is the file's to remove: the API may
    read it, not delete it. The file takes over a filter it lists that the API added."""

    API = 0
    FILE = 1


@dataclass(frozen=True)
class Slot:
    """A filter's counters: an index of the stats array and the generation it was stamped with."""

    index: int
    gen: int


@dataclass(frozen=True)
class Config:
    """`cfg` as the program reads it: the kinds in use and each side's host bitmap."""

    kinds: int
    host_bits: tuple[int, ...]  # one bitmap per side, bit n set: some filter's address hashes to n

    def pack(self) -> bytes:
        return CONFIG.pack(self.kinds, b"".join(b.to_bytes(F.HOST_BITS // 8, "little") for b in self.host_bits))

    def serves(self, wanted: Config) -> bool:
        """Whether this cfg, already written, still does for `wanted`: the same kinds,
        every wanted bit set, and at most STALE_HOST_BITS bits no filter needs."""
        pairs = list(zip(wanted.host_bits, self.host_bits, strict=True))
        return (self.kinds == wanted.kinds and not any(w & ~h for w, h in pairs)
                and sum((h & ~w).bit_count() for w, h in pairs) <= STALE_HOST_BITS)


class HostBitmap:
    """The host-bit policy: one bit per exact address of each side (filters.host_bit),
    counted, so that a bit goes when its last filter does."""

    def __init__(self) -> None:
        self._uses: Counter[tuple[int, int]] = Counter()  # (side index, bit) -> filters on it
        self.bits = [0] * SIDES

    @staticmethod
    def key(f: Filter) -> tuple[int, int] | None:
        """The (side index, bit) a filter sets, or None for a filter that sets none."""
        return (f.side - 1, F.host_bit(f.addr)) if f.is_host else None

    def count(self, f: Filter, step: int) -> None:
        key = self.key(f)
        if key is None:
            return
        self._uses[key] += step
        side, bit = key
        if self._uses[key]:
            self.bits[side] |= 1 << bit
        else:
            del self._uses[key]
            self.bits[side] &= ~(1 << bit)

    def with_filters(self, fs: Iterable[Filter]) -> tuple[int, ...]:
        """The bitmaps with the bits of `fs` set too."""
        bits = list(self.bits)
        for key in filter(None, map(self.key, fs)):
            bits[key[0]] |= 1 << key[1]
        return tuple(bits)


class TableRules:
    """The bookkeeping of one filter table: filters, slots, generations, counts, cfg.

    Planning (plan_add, plan_remove) changes nothing and raises when a request
    cannot be served whole; the caller then performs the writes and reports
    each one done (added, removed), and a finished change (changed).
    """

    def __init__(self, max_entries: int, slots: int, held: Mapping[Filter, Slot] | None = None,
                 origins: Mapping[Filter, Origin] | None = None) -> None:
        """`max_entries` filters at most, `slots` counter slots; `held`: what the maps
        hold already (a pinned table), checked (CorruptTableError), and who added each
        (`origins`; Origin.API where it does not say)."""
        self.max_entries = max_entries
        self._slots: dict[Filter, Slot] = {}
        self._origins: dict[Filter, Origin] = {}
        self._kinds: Counter[int] = Counter()  # filters of each kind bit
        self._hosts = HostBitmap()
        owners: dict[int, Filter] = {}
        for f, slot in (held or {}).items():
            if slot.index >= slots:
                raise CorruptTableError(f"filter {f} counts into slot {slot.index}, past the "
                                        f"{slots} slots of the stats map")
            if slot.index in owners:
                raise CorruptTableError(f"filters {owners[slot.index]} and {f} count into the same slot")
            owners[slot.index] = f
            self._hold(f, slot, (origins or {}).get(f, Origin.API))
        self._free = sorted(set(range(slots)) - set(owners), reverse=True)  # the next one is last
        self._next_gen = max((s.gen for s in self._slots.values()), default=0) + 1
        self._version = 0
        self._listed: tuple[int, list[Filter]] = (-1, [])  # filters() of a version
        self._written: Config | None = None

    # ---- reading ----

    @property
    def version(self) -> int:
        """Changes whenever the set of filters does."""
        return self._version

    @property
    def slots(self) -> Mapping[Filter, Slot]:
        """Every filter held and its slot (a read-only view)."""
        return MappingProxyType(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, f: object) -> bool:
        return f in self._slots

    def filters(self) -> list[Filter]:
        """Every filter, in listing order (ttcp.rtt.filters.order_key)."""
        if self._listed[0] != self._version:
            self._listed = (self._version, sorted(self._slots, key=F.order_key))
        return list(self._listed[1])

    def origin(self, f: Filter) -> Origin | None:
        """Who added `f`; None when it is not held."""
        return self._origins.get(f)

    # ---- planning: nothing changes ----

    def plan_add(self, fs: Sequence[Filter]) -> list[tuple[Filter, Slot]]:
        """The filters of `fs` not held yet (once each, in order), with the slot each
        will get when added in that order; [] when all are held. TableFullError
        when they do not all fit."""
        new = list(dict.fromkeys(f for f in fs if f not in self._slots))
        if len(self._slots) + len(new) > self.max_entries or len(new) > len(self._free):
            raise TableFullError(self.max_entries, len(self._slots), len(new))
        return [(f, Slot(self._free[-1 - i], self._next_gen + i)) for i, f in enumerate(new)]

    def plan_remove(self, fs: Sequence[Filter]) -> list[Filter]:
        """The filters of `fs`, once each; NotInTableError naming those not held."""
        wanted = list(dict.fromkeys(fs))
        missing = [f for f in wanted if f not in self._slots]
        if missing:
            raise NotInTableError(missing)
        return wanted

    # ---- what the caller did ----

    def added(self, f: Filter, slot: Slot, origin: Origin = Origin.API) -> None:
        """`f` is in the maps now, counting into `slot`: the next one plan_add gave."""
        if f in self._slots or not self._free or slot != Slot(self._free[-1], self._next_gen):
            raise ValueError(f"{f} was not planned to take {slot} next")
        self._free.pop()
        self._next_gen += 1
        self._hold(f, slot, origin)

    def set_origin(self, fs: Iterable[Filter], origin: Origin) -> None:
        """Those of `fs` that are held now belong to `origin` (their counters stay)."""
        for f in fs:
            if f in self._slots:
                self._origins[f] = origin

    def removed(self, f: Filter) -> Slot:
        """`f` is out of the maps: its slot is free again (the next one taken). Its
        counters stay until a new owner stamps the slot with its own generation."""
        slot = self._slots.pop(f)
        del self._origins[f]
        self._count(f, -1)
        self._free.append(slot.index)
        return slot

    def changed(self) -> None:
        """A change is complete (a rolled-back one is not a change)."""
        self._version += 1

    # ---- cfg ----

    def config(self, adding: Iterable[Filter] = ()) -> Config:
        """The exact cfg for the filters held, and those of `adding` (about to be added)."""
        adding = list(adding)
        kinds = 0
        for kind, uses in self._kinds.items():
            if uses:
                kinds |= kind
        for f in adding:
            kinds |= f.kind_bit
        return Config(kinds, self._hosts.with_filters(adding))

    def config_to_write(self, adding: Iterable[Filter] = ()) -> Config | None:
        """The cfg to write now (before an add: with its filters in, so they match
        from the moment they enter the maps), or None when the one written still
        serves (Config.serves)."""
        wanted = self.config(adding)
        if self._written is not None and self._written.serves(wanted):
            return None
        return wanted

    def config_written(self, cfg: Config) -> None:
        self._written = cfg

    # ---- counting ----

    def _hold(self, f: Filter, slot: Slot, origin: Origin) -> None:
        self._slots[f] = slot
        self._origins[f] = origin
        self._count(f, 1)

    def _count(self, f: Filter, step: int) -> None:
        """Keep the filters of each kind, and of each host bit, counted (a change
        costs the same whatever the table's size)."""
        self._kinds[f.kind_bit] += step
        self._hosts.count(f, step)


def plan_compaction(held: Mapping[Filter, Slot], limit: int) -> list[tuple[Filter, Slot, int]]:
    """For a table about to shrink to `limit` slots: each filter whose slot is
    `limit` or past it, with the free slot below it moves to (lowest first),
    in slot order. TableFullError when more than `limit` filters are held."""
    if len(held) > limit:
        raise TableFullError(limit, len(held), 0)
    free = sorted(set(range(limit)) - {s.index for s in held.values()}, reverse=True)
    return [(f, slot, free.pop()) for f, slot in sorted(held.items(), key=lambda item: item[1].index)
            if slot.index >= limit]
