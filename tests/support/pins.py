"""What the --pin tests share: a bpffs directory of the test's own (the `pin_dir`
fixture, a pytest plugin of tests/conftest.py), what is pinned there, the
table's counters, and loopback traffic from the tests' client addresses."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.traffic import Server, connect_many
from ttcp import syscalls
from ttcp.obj.spec import CollectionSpec
from ttcp.rtt import filters as F
from ttcp.rtt.filter_table import KernelFilterTable
from ttcp.rtt.tracer import Tracer, default_object

A, B, C = "127.0.14.2", "127.0.14.3", "127.0.14.4"  # the pin tests' client addresses
HOSTS = CollectionSpec(str(default_object())).maps["hosts"]  # the spec a pinned hosts map must meet


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    """A directory of this test's own in bpffs (bpffs refuses dots in names), removed afterwards."""
    path = Path("/sys/fs/bpf") / f"ttcp-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        assert not path.exists(), f"{path} is left behind"


def pins(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def pinned_id(path: Path) -> int:
    fd = syscalls.obj_get(path)
    try:
        return syscalls.map_info(fd).id
    finally:
        syscalls.close(fd)


def matches(table: KernelFilterTable) -> dict[str, int]:
    return {str(f): s.matches for f, s in table.stats(table.filters()).items()}


def traffic(srv: Server, **per_source: int) -> None:
    for src, n in per_source.items():
        connect_many(srv, src, n)


def quiet(message: str) -> None:
    pass


def seeded(pin_dir: Path, size: int, texts: list[str], remove: tuple[str, ...] = (), **conns: int) -> dict[str, int]:
    """A pinned table of `size` with the filters of `texts` (less `remove`), counting `conns`
    loopback connections per source; their counters, once that ttcp is gone."""
    with Tracer(max_filters=size, ringbuf_size=4096, pin_dir=pin_dir) as t, Server("127.0.0.1") as srv:
        table = t.open_maps()
        table.add([F.parse(x) for x in texts])
        if remove:
            table.remove([F.parse(x) for x in remove])
        t.attach(log=quiet)
        traffic(srv, **conns)
        return matches(table)
