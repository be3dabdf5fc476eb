"""A FilterTable in memory, for the API's own tests (no root, no kernel).

It keeps the table's rules with ttcp.rtt.table_rules, as KernelFilterTable
does — the same errors, the same all-or-nothing planning, the same listing
order and version — with no maps behind them, and lets a test set a filter's
counters or make an insert fail midway. tests/kernel/test_server_kernel_table.py
runs the API's tests written for any table against the real KernelFilterTable
too, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ttcp.rtt.filter_table import FilterStats, NoWorkloads, RuledTable, WorkloadResolver, resolve_all
from ttcp.rtt.filters import Filter
from ttcp.rtt.groups import Group, GroupSet
from ttcp.rtt.table_rules import Origin, TableRules


class MemoryFilterTable(RuledTable):
    def __init__(self, max_entries: int = 64, resolver: WorkloadResolver | None = None) -> None:
        self.rules = TableRules(max_entries, max_entries)
        self.resolver: WorkloadResolver = resolver or NoWorkloads()
        self._stats: dict[Filter, FilterStats] = {}
        self._groups: dict[Filter, tuple[list[Group], int]] = {}  # a filter's groups, its evictions
        self.max_groups = 64
        self.fail_after: int | None = None  # make the Nth insert of a call raise (fault tests)

    def stats(self, fs: Iterable[Filter]) -> dict[Filter, FilterStats]:
        return {f: self._stats[f] for f in fs if f in self._stats}

    def groups(self, fs: Iterable[Filter], top: int | None = None) -> dict[Filter, GroupSet]:
        out = {}
        for f in fs:
            if f in self._stats and f.by is not None:
                groups, evicted = self._groups.get(f, ([], 0))
                busiest = sorted(groups, key=lambda g: -g.total)
                out[f] = GroupSet(f.by, busiest if top is None else busiest[:top], len(groups), evicted,
                                  self.max_groups)
        return out

    def add(self, fs: Sequence[Filter], origin: Origin = Origin.API) -> list[Filter]:
        planned = self.rules.plan_add(fs)
        resolutions, fresh = resolve_all(self.resolver, self.rules, (f for f, _ in planned))
        added: list[Filter] = []
        try:
            for i, (f, slot) in enumerate(planned):
                if self.fail_after is not None and i >= self.fail_after:
                    raise OSError("injected failure")
                self.rules.added(f, slot, resolutions[f.workload] if f.workload is not None else None, origin)
                self._stats[f] = FilterStats.empty()
                added.append(f)
        except BaseException:
            for f in added:
                self.rules.removed(f)
                del self._stats[f]
            for w in fresh:
                self.resolver.release(w)
            raise
        self.rules.workload_writes()  # no maps: what they would be is all there is to keep
        if added:
            self.rules.changed()
        return added

    def remove(self, fs: Sequence[Filter]) -> None:
        planned = self.rules.plan_remove(fs)
        for f in planned:
            self.rules.removed(f)
            del self._stats[f]
            self._groups.pop(f, None)
        for w in {f.workload for f in planned if f.workload is not None}:
            if not self.rules.in_use(w):
                self.resolver.release(w)
        self.rules.workload_writes()
        self.rules.changed()

    # ---- for tests ----

    def set_stats(self, f: Filter, stats: FilterStats) -> None:
        if f not in self._stats:
            raise KeyError(f)
        self._stats[f] = stats

    def set_groups(self, f: Filter, groups: list[Group], evicted: int = 0) -> None:
        if f not in self._stats or f.by is None:
            raise KeyError(f)
        self._groups[f] = (groups, evicted)
