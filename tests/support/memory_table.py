"""A FilterTable in memory, for the API's own tests (no root, no kernel).

It follows the protocol of ttcp.rtt.filter_table exactly — the same errors, the
same all-or-nothing rules, the same listing order — and lets a test set a
filter's counters. tests/test_server.py runs a set of its tests against the
real KernelFilterTable too, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ttcp.rtt import filters as F
from ttcp.rtt.filter_table import FilterStats, NotInTableError, TableFullError
from ttcp.rtt.filters import Filter


class MemoryFilterTable:
    def __init__(self, max_entries: int = 64) -> None:
        self._max = max_entries
        self._stats: dict[Filter, FilterStats] = {}
        self._version = 0
        self.fail_after: int | None = None  # make the Nth insert of a call raise (fault tests)

    @property
    def max_entries(self) -> int:
        return self._max

    @property
    def version(self) -> int:
        return self._version

    def __len__(self) -> int:
        return len(self._stats)

    def __contains__(self, f: object) -> bool:
        return f in self._stats

    def filters(self) -> list[Filter]:
        return sorted(self._stats, key=F.order_key)

    def stats(self, fs: Iterable[Filter]) -> dict[Filter, FilterStats]:
        return {f: self._stats[f] for f in fs if f in self._stats}

    def add(self, fs: Sequence[Filter]) -> list[Filter]:
        new = list(dict.fromkeys(f for f in fs if f not in self._stats))
        if not new:
            return []
        if len(self._stats) + len(new) > self._max:
            raise TableFullError(self._max, len(self._stats), len(new))
        added: list[Filter] = []
        try:
            for i, f in enumerate(new):
                if self.fail_after is not None and i >= self.fail_after:
                    raise OSError("injected failure")
                self._stats[f] = FilterStats.empty()
                added.append(f)
        except BaseException:
            for f in added:
                del self._stats[f]
            raise
        self._version += 1
        return added

    def remove(self, fs: Sequence[Filter]) -> None:
        missing = [f for f in dict.fromkeys(fs) if f not in self._stats]
        if missing:
            raise NotInTableError(missing)
        for f in dict.fromkeys(fs):
            del self._stats[f]
        self._version += 1

    # ---- for tests ----

    def set_stats(self, f: Filter, stats: FilterStats) -> None:
        if f not in self._stats:
            raise KeyError(f)
        self._stats[f] = stats
