"""The HTTP API against a real listening server and a filter table.

Each test serves a fresh table on an ephemeral 127.0.0.1 port and talks to it
with aiohttp's client (or curl), here on the in-memory table (no root). The
tests written for any FilterTable run again on the real table in the BPF
program's maps (tests/kernel/test_server_kernel_table.py), so both behave
alike. Every answer is also checked against ttcp/data/openapi.json: a status
the document does not list for that route and method fails the test, so the
document cannot drift from the code.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import logging
import shlex
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support.api import EPOCH, OPENAPI, Client, counters, f, health, hooks, run, texts
from tests.support.memory_table import MemoryFilterTable
from ttcp import server
from ttcp.api import openapi
from ttcp.errors import BindError
from ttcp.rtt.filter_table import FilterStats, FilterTable
from ttcp.rtt.filters import ByKind, address_bytes
from ttcp.rtt.groups import Group, GroupKey
from ttcp.rtt.histogram import Histogram

# ---- fixtures ------------------------------------------------------------------------


@pytest.fixture
def make_table() -> Callable[..., FilterTable]:
    """Tables of any size, in memory (tests/kernel/test_server_kernel_table.py collects the
    tests written for any FilterTable again, with tables in the program's real maps)."""
    return MemoryFilterTable


@pytest.fixture
def table(make_table: Callable[..., FilterTable]) -> FilterTable:
    return make_table()


# ---- GET / PUT / DELETE on / ------------------------------------------------------------


def test_get_lists_the_table(table: FilterTable) -> None:
    async def scenario(c: Client) -> None:
        assert (await c.call("GET", "/", 200)).body == []
        table.add([f("2001:db8::1"), f("10.178.0.5")])
        assert (await c.call("GET", "/", 200)).body == ["10.178.0.5", "2001:db8::1"]
        table.remove([f("10.178.0.5")])  # a change the cached body must see
        assert (await c.call("GET", "/", 200)).body == ["2001:db8::1"]
        table.add([f("dst 10.20.0.0/16 port 5432"), f("src 10.0.0.0/8"), f("10.0.0.9")])
        assert (await c.call("GET", "/", 200)).body == [
            "10.0.0.9", "2001:db8::1", "src 10.0.0.0/8", "dst 10.20.0.0/16 port 5432"]

    run(table, scenario)


def test_put_stores_canonical_filters(table: FilterTable) -> None:
    async def scenario(c: Client) -> None:
        await c.call("PUT", "/", 204, data="::ffff:10.0.0.1")
        await c.call("PUT", "/", 204, data="2001:DB8::1")
        await c.call("PUT", "/", 204, data="DST  ::ffff:10.20.0.0/112   PORT 5432")
        assert (await c.call("GET", "/", 200)).body == ["10.0.0.1", "2001:db8::1", "dst 10.20.0.0/16 port 5432"]
        assert set(table.filters()) == {f("10.0.0.1"), f("2001:db8::1"), f("dst 10.20.0.0/16 port 5432")}

    run(table, scenario)


def test_put_is_idempotent_and_keeps_counters(table: MemoryFilterTable) -> None:
    table.add([f("192.168.0.1")])
    table.set_stats(f("192.168.0.1"), counters(7, 123_456))

    async def scenario(c: Client) -> None:
        await c.call("PUT", "/", 204, data="192.168.0.1")
        await c.call("PUT", "/", 204, data="192.168.0.1\n192.168.0.2")

    run(table, scenario)
    assert table.stats([f("192.168.0.1")])[f("192.168.0.1")].matches == 7
    assert texts(table) == {"192.168.0.1", "192.168.0.2"}


def test_multi_line_body_is_all_or_nothing(table: FilterTable) -> None:
    async def scenario(c: Client) -> None:
        r = await c.call("PUT", "/", 400, data="10.0.0.1\n10.0.0.x\n10.0.0.3\n")
        assert "10.0.0.x" in r.body["error"]
        assert len(table) == 0
        r = await c.call("PUT", "/", 400, data="10.0.0.1\ndst 10.0.0.1/8\n")
        assert "host bits" in r.body["error"] and "10.0.0.1/8" in r.body["error"]
        assert len(table) == 0
        body = "\r\n  10.0.0.1 \r\n\n\t2001:db8::2\n10.0.0.1\n::ffff:10.0.0.1\n\n"
        await c.call("PUT", "/", 204, data=body)
        assert texts(table) == {"10.0.0.1", "2001:db8::2"}

    run(table, scenario)


def test_body_whitespace_and_trailing_newline(table: FilterTable) -> None:
    async def scenario(c: Client) -> None:
        await c.call("PUT", "/", 204, data=b"  192.168.0.1 \n")
        await c.call("PUT", "/", 204, data=b"\xef\xbb\xbf10.0.0.9\n")  # a BOM from an editor
        assert texts(table) == {"192.168.0.1", "10.0.0.9"}
        await c.call("DELETE", "/", 204, data="\t192.168.0.1\n\n")
        assert texts(table) == {"10.0.0.9"}

    run(table, scenario)


def test_empty_body_or_bad_single_filter_is_400(table: FilterTable) -> None:
    async def scenario(c: Client) -> None:
        assert "no filter" in (await c.call("PUT", "/", 400, data="\n \n")).body["error"]
        await c.call("PUT", "/", 400)
        for bad, part in (("10.0.0.1/8", "10.0.0.1/8"), ("fe80::1%eth0", "fe80::1%eth0"),
                          ("1.2.3.4 5.6.7.8", "5.6.7.8"), ("999.1.1.1", "999.1.1.1"),
                          ("dst 1.2.3.4 port 0", "'0'"), ("src", "src"), ("1.2.3.4&5.6.7.8", "1.2.3.4&5.6.7.8")):
            r = await c.call("PUT", "/", 400, data=bad)
            assert part in r.body["error"], (bad, r.body)
        assert "one filter per line" in r.body["error"]  # the hint for curl -d a -d b
        assert len(table) == 0

    run(table, scenario)


def test_delete(table: FilterTable) -> None:
    table.add([f(a) for a in ("10.0.0.1", "10.0.0.2", "2001:db8::1", "dst 10.9.0.0/16")])

    async def scenario(c: Client) -> None:
        await c.call("DELETE", "/", 204, data="10.0.0.1")
        assert texts(table) == {"10.0.0.2", "2001:db8::1", "dst 10.9.0.0/16"}
        r = await c.call("DELETE", "/", 404, data="10.0.0.1")
        assert "10.0.0.1" in r.body["error"]
        r = await c.call("DELETE", "/", 404, data="10.0.0.2\n10.9.9.9\n2001:DB8::1")
        assert "10.9.9.9" in r.body["error"] and "10.0.0.2" not in r.body["error"]
        r = await c.call("DELETE", "/", 404, data="src 10.9.0.0/16")  # the side is part of a filter
        assert "src 10.9.0.0/16" in r.body["error"]
        assert texts(table) == {"10.0.0.2", "2001:db8::1", "dst 10.9.0.0/16"}  # nothing deleted
        await c.call("DELETE", "/", 400, data="10.0.0.2\nnope")
        assert texts(table) == {"10.0.0.2", "2001:db8::1", "dst 10.9.0.0/16"}
        await c.call("DELETE", "/", 204, data="10.0.0.2\n2001:DB8::1\n10.0.0.2\ndst 10.9.0.0/16")
        assert len(table) == 0

    run(table, scenario)


def test_invalid_utf8_is_400(table: FilterTable) -> None:
    async def scenario(c: Client) -> None:
        r = await c.call("PUT", "/", 400, data=b"10.0.0.1\n\xff\xfe10.0.0.2\n")
        assert "UTF-8" in r.body["error"]
        await c.call("DELETE", "/filters", 400, data=b"\xc3")

    run(table, scenario)
    assert len(table) == 0


# ---- body size ----------------------------------------------------------------------------


def test_body_size_limit(table: FilterTable) -> None:
    line = b"10.0.0.1\n"
    exact = line * (server.MAX_BODY // len(line))
    exact += b" " * (server.MAX_BODY - len(exact))

    async def chunked(payload: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 4096):
            yield payload[i : i + 4096]

    async def scenario(c: Client) -> None:
        r = await c.call("PUT", "/", 413, data=exact + b"\n")
        assert str(server.MAX_BODY) in r.body["error"]
        await c.call("PUT", "/filters", 413, data=b"10.0.0.2\n" * 8000)
        await c.call("DELETE", "/", 413, data=chunked(b"10.0.0.3\n" * 8000))
        assert len(table) == 0
        await c.call("PUT", "/", 204, data=chunked(exact))  # exactly the limit is fine
        assert texts(table) == {"10.0.0.1"}

    run(table, scenario)


def test_declared_oversize_is_refused_without_waiting_for_the_body(table: FilterTable) -> None:
    async def scenario(c: Client) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", c.port)
        try:
            writer.write(b"PUT / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 70000\r\n\r\n10.0.0.1\n")
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), timeout=5)
        finally:
            writer.close()
            await writer.wait_closed()
        assert status.split()[1] == b"413"

    run(table, scenario)
    assert len(table) == 0


# ---- capacity ---------------------------------------------------------------------------------


def test_table_full_is_507_and_nothing_is_half_applied(make_table: Callable[..., FilterTable]) -> None:
    table = make_table(4)
    table.add([f("10.0.0.1"), f("10.0.0.2"), f("dst 10.3.0.0/16")])

    async def scenario(c: Client) -> None:
        r = await c.call("PUT", "/", 507, data="10.0.0.4\nsrc 10.5.0.0/16")
        assert "holds 4 entries (3 in use, this request adds 2)" in r.body["error"]
        assert "--max-filters" in r.body["error"]
        assert texts(table) == {"10.0.0.1", "10.0.0.2", "dst 10.3.0.0/16"}
        await c.call("PUT", "/", 204, data="10.0.0.4\n10.0.0.1")  # fills it exactly
        await c.call("PUT", "/", 204, data="10.0.0.2")  # present: fine when full
        await c.call("PUT", "/filters/10.0.0.9", 507)
        await c.call("PUT", "/filters/dst%2010.3.0.0%2F16", 200)
        assert len(table) == 4

    run(table, scenario)


def test_failure_midway_rolls_back(table: MemoryFilterTable) -> None:
    table.add([f("10.0.0.1")])
    table.fail_after = 2

    async def scenario(c: Client) -> None:
        await c.call("PUT", "/", 500, data="10.0.0.2\n10.0.0.3\n10.0.0.4")

    run(table, scenario)
    assert texts(table) == {"10.0.0.1"}


def test_concurrent_puts_are_each_all_or_nothing(make_table: Callable[..., FilterTable]) -> None:
    table = make_table(7)
    bodies = [f"10.1.{i}.1\n10.1.{i}.2\n10.1.{i}.3" for i in range(8)]

    async def put(c: Client, body: str) -> int:
        async with c.session.put("/", data=body) as r:
            return r.status

    async def scenario(c: Client) -> None:
        statuses = await asyncio.gather(*(put(c, b) for b in bodies))
        assert sorted(statuses) == [204, 204] + [507] * 6
        for body, status in zip(bodies, statuses, strict=True):
            present = [a in texts(table) for a in body.split()]
            assert present == [status == 204] * 3

    run(table, scenario)


# ---- methods and paths ------------------------------------------------------------------------


def test_other_methods_are_405_with_allow(table: FilterTable) -> None:
    async def scenario(c: Client) -> None:
        r = await c.call("POST", "/", 405, data="10.0.0.1")
        assert r.headers["Allow"].split(",") == ["DELETE", "GET", "PUT"]
        assert "POST" in r.body["error"]
        r = await c.call("PATCH", "/filters/10.0.0.1", 405)
        assert set(r.headers["Allow"].split(",")) == {"GET", "PUT", "DELETE"}
        r = await c.call("DELETE", "/healthz", 405)
        assert r.headers["Allow"] == "GET"
        r = await c.call("HEAD", "/", 405)
        assert r.headers["Allow"].split(",") == ["DELETE", "GET", "PUT"]
        assert len(table) == 0

    run(table, scenario)


def test_unknown_path_is_404_json(table: FilterTable) -> None:
    async def scenario(c: Client) -> None:
        r = await c.call("GET", "/nope", 404)
        assert "/nope" in r.body["error"]
        await c.call("PUT", "/filters/", 404, data="10.0.0.1")
        assert len(table) == 0

    run(table, scenario)


# ---- /filters ---------------------------------------------------------------------------------


def test_filters_listing_shows_counters(table: MemoryFilterTable) -> None:
    table.add([f("2001:db8::5"), f("10.0.0.1"), f("dst 10.20.0.0/16 port 5432")])
    table.set_stats(f("10.0.0.1"), counters(42, 2_500_000_000))

    async def scenario(c: Client) -> None:
        body = (await c.call("GET", "/filters", 200)).body
        assert body["count"] == 3 and body["max_entries"] == 64
        v4, v6, net = body["filters"]
        assert v4["address"] == "10.0.0.1" and v4["matches"] == 42
        assert v4["last_match_unix"] == pytest.approx(EPOCH + 2.5)
        when = datetime(2023, 11, 14, 22, 13, 22, 500000, tzinfo=UTC)
        assert v4["last_match"] == "2023-11-14T22:13:22.500000Z"
        assert datetime.fromisoformat(v4["last_match"]) == when
        assert v6 == {"filter": "2001:db8::5", "side": "src", "address": "2001:db8::5", "matches": 0,
                      "last_match": None, "last_match_unix": None, "origin": "api"}
        assert net == {"filter": "dst 10.20.0.0/16 port 5432", "side": "dst", "address": "10.20.0.0/16",
                       "port": 5432, "matches": 0, "last_match": None, "last_match_unix": None, "origin": "api"}

    run(table, scenario)


def test_filters_body_writes(table: FilterTable) -> None:
    async def scenario(c: Client) -> None:
        await c.call("PUT", "/filters", 204, data="10.0.0.1\n2001:DB8::7\n")
        await c.call("PUT", "/filters", 204, json={"addresses": ["10.0.0.2", "::ffff:10.0.0.1"]})
        assert texts(table) == {"10.0.0.1", "10.0.0.2", "2001:db8::7"}
        await c.call("PUT", "/filters", 204, json={"filters": [
            "dst 10.20.0.0/16 port 5432", {"side": "src", "address": "fd00::/8"},
            {"side": "dst", "address": "192.0.2.7", "port": 443}, {"address": "10.0.0.3"}]})
        assert texts(table) == {"10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::7", "dst 10.20.0.0/16 port 5432",
                                "src fd00::/8", "dst 192.0.2.7 port 443"}
        for bad in ({"addresses": "10.0.0.3"}, ["10.0.0.3"], {"addresses": [1]},
                    {"filters": [{"side": "up", "address": "10.0.0.4"}]},
                    {"filters": [{"address": "10.0.0.4", "port": 0}]},
                    {"filters": [{"address": "10.0.0.4", "port": "80"}]},
                    {"filters": [{"address": "10.0.0.4", "mask": 8}]},
                    {"filters": [7]}, {"filters": ["10.0.0.4"], "addresses": []}):
            await c.call("PUT", "/filters", 400, json=bad)
        r = await c.call("PUT", "/filters", 400, json={"addresses": ["10.0.0.3", "bogus"]})
        assert "bogus" in r.body["error"]
        await c.call("PUT", "/filters", 400, data="{", headers={"Content-Type": "application/json"})
        await c.call("PUT", "/filters", 400, json={"addresses": []})
        await c.call("DELETE", "/filters", 404, json={"addresses": ["10.0.0.2", "10.0.0.4"]})
        assert len(table) == 7
        await c.call("DELETE", "/filters", 204, data="10.0.0.2\n2001:db8::7")
        await c.call("DELETE", "/filters", 204, json={"filters": [{"side": "dst", "address": "10.20.0.0/16",
                                                                   "port": 5432}]})
        assert texts(table) == {"10.0.0.1", "10.0.0.3", "src fd00::/8", "dst 192.0.2.7 port 443"}

    run(table, scenario)


def test_single_filter_resource(table: FilterTable) -> None:
    async def scenario(c: Client) -> None:
        await c.call("GET", "/filters/2001:DB8::1", 404)
        r = await c.call("PUT", "/filters/2001:DB8::1", 201)
        assert r.headers["Location"] == "/filters/2001:db8::1"
        assert r.body == {"filter": "2001:db8::1", "side": "src", "address": "2001:db8::1", "matches": 0,
                          "last_match": None, "last_match_unix": None, "origin": "api"}
        r = await c.call("PUT", "/filters/2001:db8:0::1", 200)
        assert r.body["matches"] == 0
        r = await c.call("GET", "/filters/2001:db8::1", 200)
        assert r.body["address"] == "2001:db8::1" and r.body["histograms"]["closed"]["count"] == 0
        await c.call("PUT", "/filters/::ffff:10.0.0.1", 201)
        assert (await c.call("GET", "/filters/10.0.0.1", 200)).body["address"] == "10.0.0.1"
        r = await c.call("PUT", "/filters/dst 10.20.0.0/16 port 5432", 201)
        assert r.headers["Location"] == "/filters/dst%2010.20.0.0/16%20port%205432"
        assert (await c.call("GET", r.headers["Location"], 200)).body["port"] == 5432
        await c.call("DELETE", "/filters/2001:db8::1", 204)
        await c.call("DELETE", "/filters/2001:db8::1", 404)
        await c.call("DELETE", "/filters/DST%2010.20.0.0%2F16%20PORT%205432", 204)
        assert texts(table) == {"10.0.0.1"}
        r = await c.call("GET", "/filters/10.0.0.1/8", 400)
        assert "host bits" in r.body["error"]
        r = await c.call("PUT", "/filters/fe80::1%25eth0", 400)
        assert "zone" in r.body["error"]
        r = await c.call("DELETE", "/filters/not-an-ip", 400)
        assert "not-an-ip" in r.body["error"]
        assert texts(table) == {"10.0.0.1"}

    run(table, scenario)


def test_counters_of_a_present_filter_survive_a_put(table: MemoryFilterTable) -> None:
    table.add([f("2001:db8::1")])
    table.set_stats(f("2001:db8::1"), counters(3, 1_000_000_000))

    async def scenario(c: Client) -> None:
        r = await c.call("PUT", "/filters/2001:db8:0::1", 200)
        assert r.body["matches"] == 3 and r.body["last_match_unix"] == pytest.approx(EPOCH + 1)

    run(table, scenario)
    assert table.stats([f("2001:db8::1")])[f("2001:db8::1")].matches == 3


# ---- breakdowns: one filter per selector, GET /filters/{filter}/groups ------------------------

DB = "dst 10.20.0.0/16 port 5432"
DB_PATH = "/filters/dst%2010.20.0.0%2F16%20port%205432%20by%20raddr"


def test_a_selector_held_with_another_breakdown_is_409_and_nothing_changes(table: FilterTable) -> None:
    async def scenario(c: Client) -> None:
        await c.call("PUT", "/", 204, data=DB)
        r = await c.call("PUT", "/", 409, data=f"10.0.0.1\n{DB} by raddr")
        assert r.body["error"].startswith(f"{DB} by raddr: the filter table holds {DB},")
        assert "nothing was added" in r.body["error"]
        await c.call("PUT", f"/filters/{DB} by rport", 409)
        await c.call("PUT", "/filters", 409, json={"filters": [{"side": "dst", "address": "10.20.0.0/16",
                                                                 "port": 5432, "by": "raddr"}]})
        assert texts(table) == {DB}
        r = await c.call("DELETE", f"/filters/{DB} by raddr", 404)
        assert f"(the table holds {DB}, with the same selector)" in r.body["error"]
        await c.call("DELETE", "/", 204, data=DB)
        r = await c.call("PUT", f"/filters/{DB} by raddr", 201)
        assert r.headers["Location"] == DB_PATH.replace("%2F", "/")
        assert r.body["by"] == "raddr" and r.body["groups"] == 0 and r.body["groups_evicted"] == 0
        await c.call("PUT", "/", 204, data=f"{DB}  BY  RADDR")  # itself again: fine
        await c.call("PUT", "/", 409, data=DB)
        assert texts(table) == {f"{DB} by raddr"}

    run(table, scenario)


def test_the_groups_route_and_its_neighbours(table: FilterTable) -> None:
    async def scenario(c: Client) -> None:
        await c.call("GET", DB_PATH + "/groups", 404)  # not in the table
        await c.call("PUT", "/", 204, data=f"{DB} by raddr\n10.0.0.1")
        body = (await c.call("GET", DB_PATH + "/groups", 200)).body
        assert body["filter"] == f"{DB} by raddr" and body["by"] == "raddr" and body["groups"] == []
        assert (body["top"], body["sort"], body["histogram"]) == (20, "count", "closed")
        assert "histogram_quantile" in body["estimator"] and "starts from zero" in body["restarts"]
        r = await c.call("GET", "/filters/10.0.0.1/groups", 404)  # a filter without a breakdown
        assert "has no `by` clause" in r.body["error"] and "10.0.0.1 by raddr" in r.body["error"]
        r = await c.call("GET", "/filters/10.0.0.300/groups", 400)  # the groups of no filter
        assert "'10.0.0.300'" in r.body["error"]
        for method in ("PUT", "DELETE"):  # a path ending in /groups that is no filter: the groups' route
            await c.call(method, "/filters/0/groups", 405)
        for query, why in (("top=0", "top must be"), ("top=10001", "top must be"), ("top=x", "top must be"),
                           ("sort=p75", "sort must be"), ("histogram=live", "histogram must be"),
                           ("order=p99", "unknown query parameter")):
            r = await c.call("GET", f"{DB_PATH}/groups?{query}", 400)
            assert why in r.body["error"]
        for method in ("PUT", "DELETE", "POST"):  # read only
            r = await c.call(method, DB_PATH + "/groups", 405)
            assert r.headers["Allow"] == "GET"
        assert texts(table) == {f"{DB} by raddr", "10.0.0.1"}
        listing = (await c.call("GET", "/filters", 200)).body["filters"]
        assert [(e["filter"], e.get("groups")) for e in listing] == [("10.0.0.1", None), (f"{DB} by raddr", 0)]

    run(table, scenario)


def test_a_cgroup_path_may_end_in_groups(table: FilterTable) -> None:
    """`cgroup /app/groups` is a filter of its own: the path is the filter's, not a groups route."""
    async def scenario(c: Client) -> None:
        for method, status in (("GET", 404), ("DELETE", 404), ("PUT", 400)):  # the filter's own answers
            r = await c.call(method, "/filters/cgroup%20%2Fapp%2Fgroups", status)  # (PUT: no workloads here)
            assert "cgroup /app/groups" in r.body["error"]

    run(table, scenario)
    assert server.groups_route("cgroup /app/groups") is None
    assert server.groups_route("cgroup /app by cgroup/groups") == "cgroup /app by cgroup"
    assert server.groups_route("not a filter/groups") == "not a filter"  # groups asked for: 400 naming it


def test_groups_answer_top_n_in_the_order_asked(table: MemoryFilterTable) -> None:
    grouped = f(f"{DB} by raddr")
    table.add([grouped])

    def g(last: int, rtts: list[int], since_ns: int, restarted: bool = False) -> Group:
        buckets = [0] * 26
        for r in rtts:
            buckets[r.bit_length() - 1] += 1
        h = Histogram(len(rtts), sum(rtts), tuple(buckets))
        return Group(GroupKey(ByKind.RADDR, address_bytes(f"10.20.3.{last}")), since_ns, since_ns + 1, h,
                     Histogram.empty(), restarted)

    table.set_groups(grouped, [g(1, [100] * 5, 1_000_000_000), g(2, [3000, 3000], 2_000_000_000, True),
                               g(3, [600] * 3, 3_000_000_000)], evicted=7)

    async def scenario(c: Client) -> None:
        body = (await c.call("GET", DB_PATH + "/groups", 200)).body
        assert [x["group"] for x in body["groups"]] == ["10.20.3.1", "10.20.3.3", "10.20.3.2"]
        assert (body["groups_total"], body["evicted"], body["max_groups"]) == (3, 7, 64)
        first = body["groups"][0]
        assert first["raddr"] == "10.20.3.1" and first["closed"]["count"] == 5 and first["closed"]["mean_us"] == 100
        assert 64 <= first["closed"]["p50_us"] < 128 and first["sampled"]["count"] == 0
        assert first["closed"]["histogram"]["count"] == 5 and first["since_unix"] == pytest.approx(EPOCH + 1)
        assert first["since"] == "2023-11-14T22:13:21.000000Z" and first["restarted"] is False
        body = (await c.call("GET", DB_PATH + "/groups?top=1&sort=p99", 200)).body
        assert [x["group"] for x in body["groups"]] == ["10.20.3.2"] and body["groups"][0]["restarted"] is True
        body = (await c.call("GET", DB_PATH + "/groups?sort=mean&histogram=sampled&top=2", 200)).body
        assert len(body["groups"]) == 2 and body["histogram"] == "sampled"
        entry = (await c.call("GET", DB_PATH, 200)).body
        assert entry["groups"] == 3 and entry["groups_evicted"] == 7

    run(table, scenario)


# ---- histograms, metrics, sampling, events ----------------------------------------------


def test_histograms_route(table: MemoryFilterTable) -> None:
    table.add([f("10.0.0.1"), f("dst ::1 port 80")])
    h = Histogram(3, 60, (0, 0, 0, 1, 2) + (0,) * 21)
    table.set_stats(f("10.0.0.1"), FilterStats(5, h, Histogram.empty()))

    async def scenario(c: Client) -> None:
        body = (await c.call("GET", "/histograms", 200)).body
        assert [x["filter"] for x in body["filters"]] == ["10.0.0.1", "dst ::1 port 80"]
        closed = body["filters"][0]["closed"]
        assert closed["count"] == 3 and closed["sum_us"] == 60
        assert closed["buckets"][-2:] == [{"low_us": 8, "high_us": 15, "count": 1},
                                          {"low_us": 16, "high_us": 31, "count": 2}]
        one = (await c.call("GET", "/filters/10.0.0.1", 200)).body
        assert one["histograms"]["closed"] == closed and one["matches"] == 3

    run(table, scenario)


def test_sampling_switch(table: FilterTable) -> None:
    state = {"enabled": False}

    def set_sampling(on: bool) -> dict[str, Any]:
        if on and state.get("broken"):
            from ttcp.errors import TtcpError
            raise TtcpError("no hook loads here")
        state["enabled"] = on
        return dict(state)

    async def scenario(c: Client) -> None:
        assert (await c.call("GET", "/sampling", 200)).body == {"enabled": False}
        assert (await c.call("PUT", "/sampling", 200, data="on")).body == {"enabled": True}
        assert (await c.call("PUT", "/sampling", 200, json={"enabled": False})).body == {"enabled": False}
        for bad in ("maybe", "", "on off"):
            r = await c.call("PUT", "/sampling", 400, data=bad)
            assert "on or off" in r.body["error"]
        await c.call("PUT", "/sampling", 400, json={"enabled": "yes"})
        state["broken"] = True
        r = await c.call("PUT", "/sampling", 503, data="on")
        assert "no hook loads here" in r.body["error"] and state["enabled"] is False

    run(table, scenario, sampling=lambda: {"enabled": state["enabled"]}, set_sampling=set_sampling)


# ---- /healthz, /openapi.json, errors, lifecycle --------------------------------------------------


def test_healthz(table: FilterTable) -> None:
    async def scenario(c: Client) -> None:
        assert (await c.call("GET", "/healthz", 200)).body == health()

    run(table, scenario)


def test_unexpected_exception_is_500_and_server_survives(
    table: FilterTable, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_health() -> dict[str, Any]:
        raise RuntimeError("sensor on fire")

    async def scenario(c: Client) -> None:
        r = await c.call("GET", "/healthz", 500)
        assert "sensor on fire" not in r.body["error"]
        await c.call("PUT", "/", 204, data="10.0.0.1")
        assert (await c.call("GET", "/", 200)).body == ["10.0.0.1"]

    with caplog.at_level(logging.ERROR, logger="ttcp.server"):
        run(table, scenario, health=broken_health)
    assert any("sensor on fire" in str(rec.exc_info[1]) for rec in caplog.records if rec.exc_info)


def test_openapi_documents_every_route(table: FilterTable) -> None:
    app = server.create_app(table, hooks())
    served = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        served.add((path.replace(server.FILTER_PATH.removeprefix("/filters/"), "{filter}"), route.method.lower()))
    served.add(("/filters/{filter}/groups", "get"))  # GET /filters/{filter}'s handler, for a text ending so
    documented = {(p, m) for p, ops in OPENAPI["paths"].items() for m in ops if m != "parameters"
                  and m != "description"}
    assert served == documented
    assert {"/", "/filters", "/filters/{filter}", "/healthz", "/openapi.json", "/histograms", "/metrics",
            "/events", "/sampling"} <= {p for p, _ in served}
    for path, method in documented:
        op = OPENAPI["paths"][path][method]
        assert "500" in op["responses"]
        if method in ("put", "delete") and path in ("/", "/filters"):
            assert {"400", "413"} <= set(op["responses"]) and "requestBody" in op

    async def scenario(c: Client) -> None:  # no token here: the document says so (tests/unit/test_openapi.py)
        assert (await c.call("GET", "/openapi.json", 200)).body == openapi.without_token(copy.deepcopy(OPENAPI))

    run(table, scenario)


def test_no_access_log(table: FilterTable, caplog: pytest.LogCaptureFixture,
                       capfd: pytest.CaptureFixture[str]) -> None:
    async def scenario(c: Client) -> None:
        await c.call("GET", "/", 200)
        await c.call("GET", "/nope", 404)

    with caplog.at_level(logging.DEBUG, logger="aiohttp.access"):
        run(table, scenario)
    assert not [r for r in caplog.records if r.name == "aiohttp.access"]
    assert capfd.readouterr().out == ""


def test_start_reports_bind_errors_in_one_line(table: FilterTable) -> None:
    async def main() -> None:
        app = server.create_app(table, hooks())
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            with pytest.raises(BindError) as info:
                await server.start(app, "127.0.0.1", port)
        assert f"127.0.0.1:{port}" in str(info.value) and info.value.errno == 98  # EADDRINUSE
        with pytest.raises(BindError) as info:
            await server.start(app, "192.0.2.1", 8090)  # TEST-NET-1: never a local address
        assert "\n" not in str(info.value) and info.value.errno == 99  # EADDRNOTAVAIL

    asyncio.run(main())


def test_stop_closes_the_listener(table: FilterTable) -> None:
    async def main() -> None:
        app = server.create_app(table, hooks())
        runner = await server.start(app, "127.0.0.1", 0)
        port = runner.addresses[0][1]
        await server.stop(runner)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    asyncio.run(main())


# ---- the original ttcp's curl command lines ---------------------------------------------------------

SEED_LINES = [
    "curl -L http://localhost:8090 -XGET",
    "curl -L http://localhost:8090 -XPUT -d 192.168.0.1",
    "curl -L http://localhost:8090 -XDELETE -d 192.168.0.1",
]


async def _curl(line: str, port: int) -> tuple[int, str]:
    """Run one seed line verbatim (port swapped), plus -sS and -w to see the status."""
    argv = shlex.split(line.replace(":8090", f":{port}")) + ["-sS", "-w", "\n%{http_code}"]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 0, err.decode()
    body, _, code = out.decode().rpartition("\n")
    return int(code), body


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (apt-get install curl)")
def test_seed_curl_lines(table: FilterTable) -> None:
    table.add([f("10.178.0.5")])
    get, put, delete = SEED_LINES

    async def scenario(c: Client) -> None:
        assert await _curl(get, c.port) == (200, '["10.178.0.5"]')
        assert await _curl(put, c.port) == (204, "")
        assert texts(table) == {"10.178.0.5", "192.168.0.1"}
        assert await _curl(put, c.port) == (204, "")
        code, body = await _curl(get, c.port)
        assert code == 200 and json.loads(body) == ["10.178.0.5", "192.168.0.1"]
        assert await _curl(delete, c.port) == (204, "")
        assert texts(table) == {"10.178.0.5"}
        code, body = await _curl(delete, c.port)
        assert code == 404 and "192.168.0.1" in json.loads(body)["error"]

    run(table, scenario)


def test_a_workload_the_table_cannot_resolve_is_400_and_changes_nothing() -> None:
    """A table without a workload resolver (ttcp.rtt.filter_table.NoWorkloads) refuses
    workload filters as it would any workload this host cannot give: 400, whole body."""
    table = MemoryFilterTable()

    async def scenario(c: Client) -> None:
        r = await c.call("PUT", "/", 400, data="10.0.0.1\ncgroup /system.slice/app.service")
        assert "cgroup /system.slice/app.service: this filter table takes no workload filters" in r.body["error"]
        assert len(table) == 0
        r = await c.call("PUT", "/filters", 400, json={"filters": [{"cgroup": "../x"}]})
        assert "must be absolute" in r.body["error"]

    run(table, scenario)


def test_the_cycle_collector_is_held_off_while_metrics_are_made_and_only_then() -> None:
    assert gc.isenabled()
    with server.gc_held_off():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ZeroDivisionError), server.gc_held_off():
        1 / 0  # noqa: B018
    assert gc.isenabled()
    gc.disable()
    try:
        with server.gc_held_off():
            pass
        assert not gc.isenabled()  # held off by someone else: left so
    finally:
        gc.enable()
