"""Reading ttcp's events in the test's own process: one tracer per attach mode,
and a collector that drains its ring until the kernel has nothing more."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.support.kernel import mode_probe, require, scaled, settle
from tests.support.kernel_objects import readable
from ttcp.rtt import events
from ttcp.rtt.tracer import MODES, Tracer
from ttcp.workloads.resolver import Resolver


def collect(tracer: Tracer, settle_s: float = 0.3, limit_s: float = 10.0) -> list[events.Event]:
    """Drain the ring until no new record arrived for `settle_s`; events named by the
    tracer's table (and with cgroup paths where the tracer has a resolver)."""
    assert tracer.ring is not None and tracer.table is not None
    ring, names = tracer.ring, tracer.table.names
    paths = tracer.resolver.paths if isinstance(tracer.resolver, Resolver) else events.no_paths
    got: list[events.Event] = []
    deadline = time.monotonic() + scaled(limit_s)
    while time.monotonic() < deadline:
        if not readable(ring, settle(settle_s)):
            break
        ring.consume(lambda raw: got.append(events.decode(raw, names, paths)))
    return got


@pytest.fixture(params=MODES)
def tracer(request: pytest.FixtureRequest, no_bpf_leaks: None) -> Iterator[Tracer]:
    """A tracer attached in each mode this kernel has (fentry skipped, with the
    probe's reason, where it does not load), its ring emptied of whatever other
    sockets closed meanwhile."""
    require(mode_probe(request.param))
    with Tracer(max_filters=64) as t:
        t.open_maps()
        t.attach(request.param, log=lambda msg: None)
        assert t.report.mode == request.param
        collect(t, settle_s=0.05)
        yield t
