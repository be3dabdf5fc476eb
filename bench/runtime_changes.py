"""What one container runtime change costs the event loop (no kernel, no runtime): a
Resolver with CONTAINERS running containers, each in its own namespace, and FILTERS
followed `container NAME` filters; the time of `apply()` for one container's start,
restart and removal, and of `resolve()` (what GET /filters pays per filter, via note()).

    .venv/bin/python bench/runtime_changes.py [CONTAINERS [FILTERS]]

Placements are given, not read from /proc (the pids do not exist, so nothing is held).
"""

from __future__ import annotations

import statistics
import sys
import time

from ttcp.rtt import filters as F
from ttcp.workloads.placement import Placer
from ttcp.workloads.registry import Placement
from ttcp.workloads.resolver import Resolver
from ttcp.workloads.runtime import Container, Gone, Seen

PID0 = 10_000_000  # above any pid_max: no /proc entry, no hold


def main(containers: int = 5000, filters: int = 1000, rounds: int = 50) -> None:
    r = Resolver("benchmark: no cgroup2")
    places: dict[int, Placement] = {}

    class Given(Placer):
        def __call__(self, c: Container) -> Placement | None:
            return places.get(c.pid)

    r.placer = Given(None)

    def seen(i: int, pid: int) -> Seen:
        places[pid] = Placement(4026540000 + i, f"/docker/{i}", 100_000 + i, False)
        return Seen(Container("docker", f"{i:064x}", f"c{i}", pid=pid))

    r.apply([seen(i, PID0 + i) for i in range(containers)])
    workloads = []
    for i in range(filters):
        w = F.parse(f"container c{i * containers // filters}").workload
        assert w is not None
        workloads.append(w)
    t0 = time.perf_counter()
    for w in workloads:
        r.resolve(w)
    resolve_all = time.perf_counter() - t0
    times = []
    for k in range(rounds):
        i = k * containers // rounds
        for change in ([Gone("docker", f"{i:064x}")], [seen(i, PID0 + containers + k)],
                       [Gone("docker", f"{i:064x}", removed=True)], [seen(i, PID0 + 2 * containers + k)]):
            t0 = time.perf_counter()
            r.apply(change)
            times.append(time.perf_counter() - t0)
    print(f"{containers} containers, {filters} followed filters: apply() of one change "
          f"median {statistics.median(times) * 1e3:.3f} ms, max {max(times) * 1e3:.3f} ms "
          f"({len(times)} changes); resolve() of every filter {resolve_all * 1e3:.1f} ms")
    r.close()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
