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

Workloads (WorkloadRules): each filter with a workload part is resolved by the
caller (I/O: ttcp.workloads) to a Resolution: the kernel workload it selects
(a cgroup by its path, a network namespace by its inode) and, for a cgroup,
its id right now (None: pending, the path does not exist). Each distinct
kernel workload gets a small id, its wid, while filters resolve to it; its
entry in `cgroups`/`netns` (keyed by the cgroup id or inode) carries the wid,
its own filter (the one without an address part) and, for a cgroup, the id of
the nearest cgroup above it with filters (`up`: where the program goes on when
this one's filters do not select a socket). Two filters whose kernel keys are
the same (two names of one namespace) cannot both own it: the first does, the
other is shadowed until the owner goes. When a cgroup path's cgroup is removed
(and maybe created again), its old id stays in the map for LINGER_S more: a
socket keeps the id of the cgroup it was made in, and a service's connections
often end just after its cgroup went (a restart). The kernel entries are a function of
all that; WorkloadRules keeps what was written and answers the writes that
bring the maps to that function for what changed (workload_writes).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType

from ttcp.errors import TtcpError
from ttcp.rtt import filters as F
from ttcp.rtt.filters import Filter, Workload

STALE_HOST_BITS = 64  # host bits of removed addresses a written cfg may keep
SIDES = 2  # src, dst: one host bitmap each
# struct config: kinds, wkinds, cgroup_levels, host_bits[2]
CONFIG = struct.Struct(f"=III{SIDES * F.HOST_BITS // 8}s")
TEXT = struct.Struct(f"=IHBx{F.MAX_TEXT}s")  # struct filter_text: gen, len, origin, text
WORKLOAD_MAPS = {F.CGROUP: "cgroups", F.NETNS: "netns"}  # a workload kind's map
_WORKLOAD_KEYS = {F.CGROUP: struct.Struct("=Q"), F.NETNS: struct.Struct("=I")}  # cgroup id, netns inode
LINGER_S = 10.0  # how long a removed cgroup's id still selects its sockets


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


class SelectorHeldError(TtcpError):
    """A filter whose kernel selector another filter holds with another breakdown (`by`
    clause, or none): one key, one filter (nothing was added)."""

    def __init__(self, wanted: Filter, held: Filter) -> None:
        self.wanted, self.held = wanted, held
        super().__init__(f"{wanted}: the filter table holds {held}, which selects the same connections; "
                         f"remove it first to change its breakdown (a selector has one filter)")


class CorruptTableError(TtcpError):
    """The maps hold something ttcp never writes (two filters sharing a counter slot,
    a slot past the stats map): another writer changed a pinned table."""


class Origin(IntEnum):
    """Who put a filter in the table (kept in its texts entry, so a pinned table
    remembers it). The API (and --filter) add and remove their own; a filter of
    the filters file (--filters-file) is the file's to remove: the API may read
    it, not delete it. The file takes over a filter it lists that the API added."""

    API = 0
    FILE = 1


@dataclass(frozen=True)
class Slot:
    """A filter's counters: an index of the stats array and the generation it was stamped with."""

    index: int
    gen: int


@dataclass(frozen=True)
class Config:
    """`cfg` as the program reads it: the kinds in use, each side's host bitmap, the
    address kinds used with workloads and the levels of cgroup filters."""

    kinds: int
    host_bits: tuple[int, ...]  # one bitmap per side, bit n set: some filter's address hashes to n
    wkinds: int = 0  # address kinds (net kinds) of the filters with a workload
    cgroup_levels: int = 0  # bit L: some cgroup filter names a cgroup at level L

    def pack(self) -> bytes:
        return CONFIG.pack(self.kinds, self.wkinds, self.cgroup_levels,
                           b"".join(b.to_bytes(F.HOST_BITS // 8, "little") for b in self.host_bits))

    @classmethod
    def unpack(cls, raw: bytes) -> Config:
        kinds, wkinds, levels, bits = CONFIG.unpack(raw)
        half = F.HOST_BITS // 8
        return cls(kinds, tuple(int.from_bytes(bits[i * half:(i + 1) * half], "little") for i in range(SIDES)),
                   wkinds, levels)

    def serves(self, wanted: Config) -> bool:
        """Whether this cfg, already written, still does for `wanted`: the same kinds,
        workload kinds and levels, every wanted bit set, and at most STALE_HOST_BITS
        bits no filter needs."""
        pairs = list(zip(wanted.host_bits, self.host_bits, strict=True))
        return ((self.kinds, self.wkinds, self.cgroup_levels) == (wanted.kinds, wanted.wkinds, wanted.cgroup_levels)
                and not any(w & ~h for w, h in pairs)
                and sum((h & ~w).bit_count() for w, h in pairs) <= STALE_HOST_BITS)


def text_value(f: Filter, slot: Slot, origin: int = 0) -> bytes:
    """texts[slot] for filter f: its generation and canonical text."""
    text = str(f).encode()
    return TEXT.pack(slot.gen, len(text), origin, text)


def text_of(raw: bytes) -> tuple[int, int, str] | None:
    """(gen, origin, text) of a texts entry; None for an empty one (gen 0) or one
    ttcp cannot have written."""
    gen, length, origin, text = TEXT.unpack(raw)
    if not gen or length > F.MAX_TEXT:
        return None
    try:
        return gen, origin, text[:length].decode()
    except UnicodeDecodeError:
        return None


EMPTY_TEXT = bytes(TEXT.size)


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


# ---- workloads ---------------------------------------------------------------------------

Selector = tuple[str, str]  # (kind, cgroup path or netns inode in decimal): one kernel workload


@dataclass(frozen=True)
class Resolution:
    """What a filter's workload part selects in the kernel: `selector`, the workload
    (filters of one selector share its wid), and `id`, its key in the workload map
    now (a cgroup id, a netns inode; None: a cgroup path that does not exist yet)."""

    selector: Selector
    id: int | None

    @classmethod
    def cgroup(cls, path: str, cgroup_id: int | None) -> Resolution:
        return cls((F.CGROUP, path), cgroup_id)

    @classmethod
    def netns(cls, inode: int | None, name: str = "") -> Resolution:
        """A namespace by its inode; None (pending, under `name`): one that cannot be
        opened any more (a pinned table's, after a restart)."""
        return cls((F.NETNS, str(inode) if inode else f"?{name}"), inode)

    @classmethod
    def pending(cls, w: Workload) -> Resolution:
        """A container or pod with nothing running under its name now."""
        return cls.netns(None, str(w))

    @property
    def level(self) -> int | None:
        """The cgroup level it selects (None: not a cgroup)."""
        return Workload(F.CGROUP, self.selector[1]).level if self.selector[0] == F.CGROUP else None


@dataclass(frozen=True)
class WorkloadState:
    """A workload filter as GET /filters shows it."""

    kind: str
    name: str
    state: str  # "resolved", "pending" or "shadowed"
    id: int | None  # the cgroup id or netns inode it resolves to
    shadowed_by: str | None = None
    via: Selector | None = None  # a container's or pod's: the selector it resolves to now
    note: str | None = None  # a container's or pod's: what the kernel cannot tell apart, or why pending
    shared_with: tuple[str, ...] = ()  # the containers sharing its network namespace

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind}
        if self.kind in F.NAMED_KINDS:
            out.update({self.kind: self.name, "state": self.state})
            if self.via is not None and self.id is not None:
                out["resolved_to"] = ({"cgroup": self.via[1], "cgroup_id": self.id} if self.via[0] == F.CGROUP
                                      else {"netns": self.id})
            if self.shared_with:
                out["shared_with"] = list(self.shared_with)
            if self.note:
                out["note"] = self.note
        elif self.kind == F.CGROUP:
            out.update(path=self.name, state=self.state, cgroup_id=self.id)
        else:
            out.update(**({"inode": int(self.name)} if self.name.isdigit() else {"path": self.name}),
                       state=self.state, netns=self.id)
        if self.shadowed_by is not None:
            out["shadowed_by"] = self.shadowed_by
        return out


@dataclass(frozen=True)
class Write:
    """One kernel write a change calls for: `value` into map[key], or a delete (None)."""

    map: str  # hosts, nets, cgroups or netns
    key: bytes
    value: bytes | None


@dataclass
class _Workload:
    """One selector's bookkeeping."""

    wid: int
    id: int | None
    filters: dict[Filter, None] = field(default_factory=dict)  # in the order they came
    written: dict[tuple[str, bytes], bytes] = field(default_factory=dict)  # its kernel entries now
    lingering: dict[int, float] = field(default_factory=dict)  # ids of a removed cgroup: until when


class WorkloadRules:
    """The workload part of a table: wids, resolutions, owners, `up` links, and the
    kernel entries they call for. Pure: the caller resolves and writes."""

    def __init__(self, max_wids: int) -> None:
        self.max_wids = max_wids
        self._of: dict[Filter, Selector] = {}  # every workload filter's selector
        self._named: dict[Workload, tuple[Selector, int]] = {}  # a workload part: its selector, filters naming it
        self._sel: dict[Selector, _Workload] = {}
        self._owners: dict[tuple[Selector, Filter | None], list[Filter]] = {}  # kernel key -> filters, owner first
        self._free_wids: list[int] = []
        self._next_wid = 1
        self._dirty: dict[Selector, None] = {}
        self._gone: list[_Workload] = []  # selectors left with entries to delete

    # ---- reading ----

    def selector(self, f: Filter) -> Selector | None:
        return self._of.get(f)

    def resolution(self, f: Filter) -> Resolution | None:
        sel = self._of.get(f)
        return None if sel is None else Resolution(sel, self._sel[sel].id)

    def resolution_of(self, w: Workload) -> Resolution | None:
        """How the filters naming workload part `w` resolved (None: no filter names it)."""
        named = self._named.get(w)
        return None if named is None else Resolution(named[0], self._sel[named[0]].id)

    def selectors(self) -> dict[Selector, int | None]:
        """Every selector and its id now (None: pending)."""
        return {sel: w.id for sel, w in self._sel.items()}

    def owner(self, f: Filter) -> Filter | None:
        """The filter that owns f's kernel key (f itself, unless shadowed)."""
        sel = self._of.get(f)
        if sel is None:
            return None
        return self._owners[sel, _address_of(f)][0]

    def state(self, f: Filter) -> WorkloadState | None:
        sel = self._of.get(f)
        if sel is None or f.workload is None:
            return None
        w = self._sel[sel]
        owner = self.owner(f)
        via = sel if f.workload.named else None
        if owner != f:
            return WorkloadState(f.workload.kind, f.workload.name, "shadowed", w.id, str(owner), via)
        return WorkloadState(f.workload.kind, f.workload.name, "pending" if w.id is None else "resolved", w.id,
                             via=via)

    def wid(self, sel: Selector) -> int:
        return self._sel[sel].wid

    # ---- changes ----

    def add(self, f: Filter, res: Resolution) -> None:
        if f in self._of:
            raise ValueError(f"{f} is held already")
        w = self._sel.get(res.selector)
        if w is None:
            wid = self._free_wids.pop() if self._free_wids else self._take_wid()
            w = self._sel[res.selector] = _Workload(wid, res.id)
            self._touch_relatives(res.selector)
        w.filters[f] = None
        self._of[f] = res.selector
        assert f.workload is not None
        sel, uses = self._named.get(f.workload, (res.selector, 0))
        self._named[f.workload] = (sel, uses + 1)
        self._owners.setdefault((res.selector, _address_of(f)), []).append(f)
        self._dirty[res.selector] = None

    def _take_wid(self) -> int:
        wid = self._next_wid
        self._next_wid += 1
        return wid

    def remove(self, f: Filter) -> Selector:
        """f is gone; returns its selector (the caller releases it when it is no longer held)."""
        sel = self._of.pop(f)
        w = self._sel[sel]
        del w.filters[f]
        assert f.workload is not None
        named, uses = self._named[f.workload]
        if uses > 1:
            self._named[f.workload] = (named, uses - 1)
        else:
            del self._named[f.workload]
        key = (sel, _address_of(f))
        holders = self._owners[key]
        holders.remove(f)
        if not holders:
            del self._owners[key]
        if not w.filters:
            del self._sel[sel]
            self._free_wids.append(w.wid)
            self._free_wids.sort(reverse=True)
            self._gone.append(w)
            self._dirty.pop(sel, None)
            self._touch_relatives(sel)
        else:
            self._dirty[sel] = None
        return sel

    def holds(self, sel: Selector) -> bool:
        return sel in self._sel

    def resolved(self, sel: Selector, new_id: int | None, now: float = 0.0) -> bool:
        """The selector's id is now `new_id` (a cgroup removed, created, or created
        again; `now` a monotonic time: the old id lingers until now + LINGER_S);
        False when that changes nothing."""
        w = self._sel.get(sel)
        if w is None or w.id == new_id:
            return False
        if w.id is not None and sel[0] == F.CGROUP:
            w.lingering[w.id] = now + LINGER_S
        if new_id is not None:
            w.lingering.pop(new_id, None)
        w.id = new_id
        self._dirty[sel] = None
        self._touch_relatives(sel)
        return True

    def expire(self, now: float) -> bool:
        """Lingering ids whose time is up go (their entries are among the next writes)."""
        changed = False
        for sel, w in self._sel.items():
            gone = [i for i, until in w.lingering.items() if until <= now]
            for i in gone:
                del w.lingering[i]
                self._dirty[sel] = None
                changed = True
        return changed

    def next_expiry(self) -> float | None:
        """When the next lingering id goes (None: none lingers)."""
        return min((until for w in self._sel.values() for until in w.lingering.values()), default=None)

    def _touch_relatives(self, sel: Selector) -> None:
        """A cgroup selector appeared, went or changed id: the `up` of those below it changes."""
        kind, path = sel
        if kind != F.CGROUP:
            return
        prefix = path.rstrip("/") + "/"
        for other in self._sel:
            if other[0] == F.CGROUP and other != sel and other[1].startswith(prefix):
                self._dirty[other] = None

    def _up(self, sel: Selector) -> int:
        """The id of the nearest resolved cgroup selector above `sel` (0: none)."""
        path = sel[1]
        while path != "/":
            path = path.rsplit("/", 1)[0] or "/"
            w = self._sel.get((F.CGROUP, path))
            if w is not None and w.id is not None:
                return w.id
        return 0

    # ---- the kernel entries ----

    def desired(self, sel: Selector, values: Mapping[Filter, bytes]) -> dict[tuple[str, bytes], bytes]:
        """The kernel entries of one selector: its owners' address keys in `nets` (with
        its wid, pending or not) and, once resolved, its entry in the workload map.
        `values` holds each filter's struct filter_value."""
        w = self._sel[sel]
        out: dict[tuple[str, bytes], bytes] = {}
        own = bytes(F.VALUE.size)
        for f in w.filters:
            if self.owner(f) != f:
                continue
            if f.has_address:
                out["nets", F.net_key(f, w.wid)] = values[f]
            else:
                own = values[f]
        kind = sel[0]
        up = self._up(sel) if kind == F.CGROUP else 0
        for i in [*w.lingering, w.id]:  # a removed cgroup's sockets keep its id a while
            if i is not None:
                out[WORKLOAD_MAPS[kind], _WORKLOAD_KEYS[kind].pack(i)] = F.WORKLOAD.pack(up, w.wid, own)
        return out

    def workload_writes(self, values: Mapping[Filter, bytes]) -> list[Write]:
        """The writes that bring the kernel's entries of every selector changed since
        the last call to what they should be, in a safe order: address keys in,
        then workload entries in, then workload entries out, then address keys out
        (a workload entry makes its keys reachable). Marks them written."""
        keys_in: list[Write] = []
        entries_in: list[Write] = []
        entries_out: list[Write] = []
        keys_out: list[Write] = []
        gone, self._gone = self._gone, []
        for old in gone:
            for (name, key) in old.written:
                (keys_out if name in ("hosts", "nets") else entries_out).append(Write(name, key, None))
        dirty, self._dirty = list(self._dirty), {}
        for sel in dirty:
            w = self._sel[sel]
            want = self.desired(sel, values)
            for (name, key), value in want.items():
                if w.written.get((name, key)) != value:
                    (keys_in if name in ("hosts", "nets") else entries_in).append(Write(name, key, value))
            for (name, key) in w.written:
                if (name, key) not in want:
                    (keys_out if name in ("hosts", "nets") else entries_out).append(Write(name, key, None))
            w.written = want
        # A filter moved to another selector may get the wid its old one freed: a key
        # written again in this batch is not deleted after.
        put = {(w.map, w.key) for w in keys_in + entries_in}
        return keys_in + entries_in + [w for w in entries_out + keys_out if (w.map, w.key) not in put]

    def forget_written(self) -> None:
        """Every selector's entries are to be written again (the maps were emptied)."""
        for sel, w in self._sel.items():
            w.written = {}
            self._dirty[sel] = None


def _address_of(f: Filter) -> Filter | None:
    """The part of f's kernel key besides its workload: its address part (None: its own filter)."""
    return f.address_part() if f.has_address else None



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
        (`origins`; Origin.API where it does not say). Held filters with a workload
        are resolved by the caller next (workloads.add)."""
        self.max_entries = max_entries
        self._slots: dict[Filter, Slot] = {}
        self._origins: dict[Filter, Origin] = {}
        self._kinds: Counter[int] = Counter()  # filters of each kind bit (a workload's kind for theirs)
        self._wkinds: Counter[int] = Counter()  # filters with a workload, of each address kind bit
        self._levels: Counter[int] = Counter()  # cgroup filters of each level
        self._named_levels: dict[Workload, int] = {}  # a container's or pod's cgroup level, resolved to one
        self._uses: Counter[Workload] = Counter()  # filters of each workload part
        self._hosts = HostBitmap()
        self.workloads = WorkloadRules(max_entries)
        self._selectors: dict[Filter, Filter] = {}  # each held filter's selector -> the filter
        owners: dict[int, Filter] = {}
        for f, slot in (held or {}).items():
            if slot.index >= slots:
                raise CorruptTableError(f"filter {f} counts into slot {slot.index}, past the "
                                        f"{slots} slots of the stats map")
            if slot.index in owners:
                raise CorruptTableError(f"filters {owners[slot.index]} and {f} count into the same slot")
            if f.selector in self._selectors:
                raise CorruptTableError(f"filters {self._selectors[f.selector]} and {f} have one kernel key")
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

    def holder(self, f: Filter) -> Filter | None:
        """The filter held with f's selector (f itself, or f with another breakdown); None."""
        return self._selectors.get(f.selector)

    # ---- planning: nothing changes ----

    def plan_add(self, fs: Sequence[Filter]) -> list[tuple[Filter, Slot]]:
        """The filters of `fs` not held yet (once each, in order), with the slot each
        will get when added in that order; [] when all are held. TableFullError
        when they do not all fit; SelectorHeldError when one's selector is held (or
        asked for) with another breakdown."""
        new = list(dict.fromkeys(f for f in fs if f not in self._slots))
        asked: dict[Filter, Filter] = {}
        for f in new:
            other = self._selectors.get(f.selector) or asked.setdefault(f.selector, f)
            if other != f:
                raise SelectorHeldError(f, other)
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

    def added(self, f: Filter, slot: Slot, resolution: Resolution | None = None,
              origin: Origin = Origin.API) -> None:
        """`f` is in the maps now, counting into `slot`: the next one plan_add gave. A
        filter with a workload comes with its resolution (its kernel entries are
        then among workloads.workload_writes())."""
        if f in self._slots or not self._free or slot != Slot(self._free[-1], self._next_gen):
            raise ValueError(f"{f} was not planned to take {slot} next")
        if (f.workload is None) != (resolution is None):
            raise ValueError(f"{f}: a resolution goes with a workload, and only with one")
        self._free.pop()
        self._next_gen += 1
        if f.workload is not None and resolution is not None and f.workload.named and not self.in_use(f.workload):
            self._relevel(f.workload, resolution, [])  # the cgroup level it counts at
        self._hold(f, slot, origin)
        if resolution is not None:
            self.workloads.add(f, resolution)

    def set_origin(self, fs: Iterable[Filter], origin: Origin) -> list[Filter]:
        """Those of `fs` that are held now belong to `origin` (their counters stay);
        returns those whose origin changed (their texts entry is to be rewritten)."""
        changed = [f for f in dict.fromkeys(fs) if f in self._slots and self._origins[f] != origin]
        for f in changed:
            self._origins[f] = origin
        return changed

    def removed(self, f: Filter) -> Slot:
        """`f` is out of the maps: its slot is free again (the next one taken). Its
        counters stay until a new owner stamps the slot with its own generation."""
        slot = self._slots.pop(f)
        del self._origins[f]
        del self._selectors[f.selector]
        self._count(f, -1)
        self._free.append(slot.index)
        if self.workloads.selector(f) is not None:
            self.workloads.remove(f)
        return slot

    def moved(self, w: Workload, resolution: Resolution) -> bool:
        """Container or pod `w` resolves to `resolution` now (it started, restarted, ended,
        or another container took its name): its filters move there. False when
        that changes nothing. The kernel writes are workload_writes(), cfg config_to_write()."""
        fs = [f for f in self._slots if f.workload == w]
        if not fs or self.workloads.resolution_of(w) == resolution:
            return False
        self._relevel(w, resolution, fs)
        for f in fs:
            self.workloads.remove(f)
        for f in fs:
            self.workloads.add(f, resolution)
        return True

    def _relevel(self, w: Workload, resolution: Resolution, fs: list[Filter]) -> None:
        for f in fs:
            self._count(f, -1)
        level = resolution.level
        if level is None:
            self._named_levels.pop(w, None)
        else:
            self._named_levels[w] = level
        for f in fs:
            self._count(f, 1)

    def in_use(self, w: Workload) -> bool:
        """Whether a filter held names this workload part."""
        return self._uses[w] > 0

    def values(self) -> dict[Filter, bytes]:
        """Every filter's struct filter_value (its slot, generation, prefix length, breakdown)."""
        return {f: F.value_of(f, s.index, s.gen) for f, s in self._slots.items()}

    def workload_writes(self) -> list[Write]:
        """The kernel writes the workload changes since the last call call for."""
        return self.workloads.workload_writes(_Values(self._slots))

    def changed(self) -> None:
        """A change is complete (a rolled-back one is not a change)."""
        self._version += 1

    # ---- cfg ----

    def config(self, adding: Iterable[Filter] = ()) -> Config:
        """The exact cfg for the filters held, and those of `adding` (about to be added)."""
        adding = list(adding)
        kinds, wkinds = _in_use(self._kinds), _in_use(self._wkinds)
        levels = _in_use(Counter({1 << level: n for level, n in self._levels.items()}))
        for f in adding:
            k, w, level = _counts(f, self._named_levels)
            kinds |= k
            wkinds |= w
            levels |= 0 if level is None else 1 << level
        return Config(kinds, self._hosts.with_filters(f for f in adding if f.workload is None), wkinds, levels)

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
        self._selectors[f.selector] = f

    def _count(self, f: Filter, step: int) -> None:
        """Keep the filters of each kind, and of each host bit, counted (a change
        costs the same whatever the table's size)."""
        kind, wkind, level = _counts(f, self._named_levels)
        self._kinds[kind] += step
        if f.workload is None:
            self._hosts.count(f, step)
            return
        self._uses[f.workload] += step
        if not self._uses[f.workload]:
            del self._uses[f.workload]
            self._named_levels.pop(f.workload, None)
        if wkind:
            self._wkinds[wkind] += step
        if level is not None:
            self._levels[level] += step


def _in_use(counter: Counter[int]) -> int:
    """The bits of a counter's keys that some filter uses."""
    bits = 0
    for bit, uses in counter.items():
        if uses:
            bits |= bit
    return bits


def _counts(f: Filter, named_levels: Mapping[Workload, int]) -> tuple[int, int, int | None]:
    """What f adds to cfg: its bit of cfg.kinds (a workload's kind for a filter with
    one), its address kind among cfg.wkinds, and its cgroup level (None: no cgroup;
    a container's or pod's is its resolution's, in `named_levels`)."""
    if f.workload is None:
        return f.kind_bit, 0, None
    level = f.workload.level if f.workload.kind == F.CGROUP else named_levels.get(f.workload)
    return f.workload.kind_bit, f.kind_bit, level


class _Values(Mapping[Filter, bytes]):
    """Each filter's struct filter_value, made when asked for (a change reads a few)."""

    def __init__(self, slots: Mapping[Filter, Slot]) -> None:
        self._slots = slots

    def __getitem__(self, f: Filter) -> bytes:
        s = self._slots[f]
        return F.value_of(f, s.index, s.gen)

    def __iter__(self) -> Iterator[Filter]:
        return iter(self._slots)

    def __len__(self) -> int:
        return len(self._slots)


def plan_compaction(held: Mapping[Filter, Slot], limit: int) -> list[tuple[Filter, Slot, int]]:
    """For a table about to shrink to `limit` slots: each filter whose slot is
    `limit` or past it, with the free slot below it moves to (lowest first),
    in slot order. TableFullError when more than `limit` filters are held."""
    if len(held) > limit:
        raise TableFullError(limit, len(held), 0)
    free = sorted(set(range(limit)) - {s.index for s in held.values()}, reverse=True)
    return [(f, slot, free.pop()) for f, slot in sorted(held.items(), key=lambda item: item[1].index)
            if slot.index >= limit]
