"""The API's tests written for any FilterTable, collected again here on the real
table in the BPF program's maps (tests/unit/test_server.py runs them on the
in-memory one), so both tables behave alike behind the API; and what only the
kernel's table can do: refuse an insert midway because another writer filled
its map."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support import kernel_objects
from tests.support.api import Client, f, run, texts
from tests.support.leaks import bpf_fds, leaked_objects
from tests.unit.test_server import (  # noqa: F401 - collected here, against the kernel's table
    test_a_cgroup_path_may_end_in_groups,
    test_a_selector_held_with_another_breakdown_is_409_and_nothing_changes,
    test_delete,
    test_filters_body_writes,
    test_get_lists_the_table,
    test_multi_line_body_is_all_or_nothing,
    test_put_stores_canonical_filters,
    test_seed_curl_lines,
    test_single_filter_resource,
    test_table_full_is_507_and_nothing_is_half_applied,
    test_the_groups_route_and_its_neighbours,
)
from ttcp.rtt import filters as F
from ttcp.rtt.filter_table import FilterTable
from ttcp.rtt.tracer import Tracer

pytestmark = pytest.mark.kernel


@pytest.fixture
def make_table() -> Iterator[Callable[..., FilterTable]]:
    """Tables of any size in the program's real maps; no BPF object outlives the test."""
    tracers: list[Tracer] = []
    fds, ids = bpf_fds(), kernel_objects.all_ids()

    def make(max_entries: int = 64) -> FilterTable:
        t = Tracer(max_filters=max_entries, ringbuf_size=4096)
        tracers.append(t)
        return t.open_maps()

    yield make
    for t in tracers:
        t.close()
    problems = [f"fd {fd}" for fd in set(bpf_fds()) - set(fds)] + leaked_objects(ids)  # after the close
    assert not problems, f"BPF leaks: {problems}"


@pytest.fixture
def table(make_table: Callable[..., FilterTable]) -> FilterTable:
    return make_table()


def test_kernel_map_filled_behind_the_tables_back_rolls_back(no_bpf_leaks: None) -> None:
    """Another writer (bpftool, a stray process) fills the hosts map: the kernel
    refuses the table's insert midway, and what the request had inserted goes."""
    with Tracer(max_filters=4, ringbuf_size=4096) as t:
        table = t.open_maps()
        table.add([f("10.0.0.1")])
        for i in range(3):  # not through the table: its index does not know them
            table.hosts.put(F.host_key(f(f"10.9.9.{i}")), F.VALUE.pack(60 + i, 1, 128, 0, 0, 0))

        async def scenario(c: Client) -> None:
            r = await c.call("PUT", "/", 507, data="10.0.0.2\n10.0.0.3")
            assert "--max-filters" in r.body["error"]

        run(table, scenario)
        assert texts(table) == {"10.0.0.1"}
        assert len(list(table.hosts.keys())) == 4  # ours and the three strangers, no more
