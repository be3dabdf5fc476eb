"""The HTTP API against a real kernel hash map and a real listening server.

Each test serves a freshly created "filter" map on an ephemeral 127.0.0.1 port
and talks to it with aiohttp's client (or curl). Every answer is also checked
against ttcp/data/openapi.json: a status the document does not list for that
route and method fails the test, so the document cannot drift from the code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import aiohttp
import pytest

from ttcp import addresses, server
from ttcp.errors import TtcpError
from ttcp.maps import HashMap, RawCodec
from ttcp.tracer import FILTER_STATS

pytestmark = pytest.mark.kernel

OPENAPI = json.loads(resources.files("ttcp").joinpath("data", "openapi.json").read_text())
EPOCH = 1_700_000_000.0  # fake boot time: mono ns 0 is this Unix time


def _mono_to_wall(ns: int) -> float:
    return EPOCH + ns / 1e9


def _health() -> dict:
    return {"status": "ok", "attach_mode": "tp_btf", "events": 3, "dropped": 1}


def key(text: str) -> bytes:
    return addresses.key_of(text)


def texts(filters: HashMap) -> set[str]:
    return {addresses.from_key(k) for k in filters}


# ---- fixtures ------------------------------------------------------------------------


@pytest.fixture
def make_map(no_bpf_leaks: None) -> Iterator[Callable[..., HashMap]]:
    """Create real filter maps (any size, any HashMap subclass); all closed afterwards."""
    made: list[HashMap] = []

    def make(max_entries: int = 64, cls: type[HashMap] = HashMap) -> HashMap:
        m = cls.create(RawCodec(16), FILTER_STATS, max_entries, "filter")
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


@pytest.fixture
def filters(make_map: Callable[..., HashMap]) -> HashMap:
    return make_map()


# ---- client ----------------------------------------------------------------------------


def _documented(path: str, method: str) -> dict | None:
    """The OpenAPI operation serving `path`, or None if the document has none."""
    if path.startswith("/filters/") and path != "/filters/":
        path = "/filters/{addr}"
    return OPENAPI["paths"].get(path, {}).get(method.lower())


@dataclass
class Reply:
    status: int
    headers: Any
    body: Any  # decoded JSON, or None for an empty body


@dataclass
class Client:
    session: aiohttp.ClientSession
    port: int

    async def call(self, method: str, path: str, expect: int, **kw: Any) -> Reply:
        """One request; asserts the status, JSON error shape and that the status is documented."""
        async with self.session.request(method, path, **kw) as r:
            raw = await r.read()
            reply = Reply(r.status, r.headers, json.loads(raw) if raw else None)
        assert reply.status == expect, (method, path, reply.status, reply.body)
        if expect >= 400 and method != "HEAD":
            assert r.content_type == "application/json"
            assert isinstance(reply.body, dict) and isinstance(reply.body["error"], str)
            assert set(reply.body) == {"error"}
        op = _documented(path, method)
        if op is None:
            assert expect in (404, 405)  # documented globally (components.responses)
        else:
            assert str(expect) in op["responses"], f"{method} {path} -> {expect} is not in openapi.json"
        return reply


@contextlib.asynccontextmanager
async def serving(filters: HashMap, health: Callable[[], dict] = _health) -> AsyncIterator[Client]:
    app = server.create_app(filters, health=health, mono_to_wall=_mono_to_wall)
    runner = await server.start(app, "127.0.0.1", 0)
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            yield Client(session, port)
    finally:
        await server.stop(runner)


def run(filters: HashMap, scenario: Callable[[Client], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        async with serving(filters, **kw) as client:
            await scenario(client)

    asyncio.run(main())


# ---- GET / PUT / DELETE on / ------------------------------------------------------------


def test_get_lists_the_kernel_map(filters: HashMap) -> None:
    async def scenario(c: Client) -> None:
        assert (await c.call("GET", "/", 200)).body == []
        filters.put(key("2001:db8::1"), (0, 0))
        filters.put(key("10.178.0.5"), (4, 99))
        assert (await c.call("GET", "/", 200)).body == ["10.178.0.5", "2001:db8::1"]
        filters.delete(key("10.178.0.5"))  # written behind the server's back: no cached copy
        assert (await c.call("GET", "/", 200)).body == ["2001:db8::1"]

    run(filters, scenario)


def test_put_stores_canonical_keys(filters: HashMap) -> None:
    async def scenario(c: Client) -> None:
        await c.call("PUT", "/", 204, data="::ffff:10.0.0.1")
        await c.call("PUT", "/", 204, data="2001:DB8::1")
        assert (await c.call("GET", "/", 200)).body == ["10.0.0.1", "2001:db8::1"]
        assert set(filters.keys()) == {key("10.0.0.1"), key("2001:db8::1")}
        assert filters.get(key("10.0.0.1")) == (0, 0)

    run(filters, scenario)


def test_put_is_idempotent_and_keeps_counters(filters: HashMap) -> None:
    filters.put(key("192.168.0.1"), (7, 123_456))

    async def scenario(c: Client) -> None:
        await c.call("PUT", "/", 204, data="192.168.0.1")
        await c.call("PUT", "/", 204, data="192.168.0.1\n192.168.0.2")

    run(filters, scenario)
    assert filters.get(key("192.168.0.1")) == (7, 123_456)
    assert texts(filters) == {"192.168.0.1", "192.168.0.2"}


def test_multi_line_body_is_all_or_nothing(filters: HashMap) -> None:
    async def scenario(c: Client) -> None:
        r = await c.call("PUT", "/", 400, data="10.0.0.1\n10.0.0.x\n10.0.0.3\n")
        assert "10.0.0.x" in r.body["error"]
        assert len(filters) == 0
        body = "\r\n  10.0.0.1 \r\n\n\t2001:db8::2\n10.0.0.1\n::ffff:10.0.0.1\n\n"
        await c.call("PUT", "/", 204, data=body)
        assert texts(filters) == {"10.0.0.1", "2001:db8::2"}

    run(filters, scenario)


def test_body_whitespace_and_trailing_newline(filters: HashMap) -> None:
    async def scenario(c: Client) -> None:
        await c.call("PUT", "/", 204, data=b"  192.168.0.1 \n")
        await c.call("PUT", "/", 204, data=b"\xef\xbb\xbf10.0.0.9\n")  # a BOM from an editor
        assert texts(filters) == {"192.168.0.1", "10.0.0.9"}
        await c.call("DELETE", "/", 204, data="\t192.168.0.1\n\n")
        assert texts(filters) == {"10.0.0.9"}

    run(filters, scenario)


def test_empty_body_or_bad_single_address_is_400(filters: HashMap) -> None:
    async def scenario(c: Client) -> None:
        assert "no address" in (await c.call("PUT", "/", 400, data="\n \n")).body["error"]
        await c.call("PUT", "/", 400)
        for bad in ("10.0.0.0/8", "fe80::1%eth0", "1.2.3.4 5.6.7.8", "999.1.1.1", "1.2.3.4&5.6.7.8"):
            r = await c.call("PUT", "/", 400, data=bad)
            assert repr(bad) in r.body["error"]
        assert "one address per line" in r.body["error"]  # the hint for curl -d a -d b
        assert len(filters) == 0

    run(filters, scenario)


def test_delete(filters: HashMap) -> None:
    for a in ("10.0.0.1", "10.0.0.2", "2001:db8::1"):
        filters.put(key(a), (1, 1))

    async def scenario(c: Client) -> None:
        await c.call("DELETE", "/", 204, data="10.0.0.1")
        assert texts(filters) == {"10.0.0.2", "2001:db8::1"}
        r = await c.call("DELETE", "/", 404, data="10.0.0.1")
        assert "10.0.0.1" in r.body["error"]
        r = await c.call("DELETE", "/", 404, data="10.0.0.2\n10.9.9.9\n2001:DB8::1")
        assert "10.9.9.9" in r.body["error"] and "10.0.0.2" not in r.body["error"]
        assert texts(filters) == {"10.0.0.2", "2001:db8::1"}  # nothing deleted
        await c.call("DELETE", "/", 400, data="10.0.0.2\nnope")
        assert texts(filters) == {"10.0.0.2", "2001:db8::1"}
        await c.call("DELETE", "/", 204, data="10.0.0.2\n2001:DB8::1\n10.0.0.2")
        assert len(filters) == 0

    run(filters, scenario)


def test_invalid_utf8_is_400(filters: HashMap) -> None:
    async def scenario(c: Client) -> None:
        r = await c.call("PUT", "/", 400, data=b"10.0.0.1\n\xff\xfe10.0.0.2\n")
        assert "UTF-8" in r.body["error"]
        await c.call("DELETE", "/filters", 400, data=b"\xc3")

    run(filters, scenario)
    assert len(filters) == 0


# ---- body size ----------------------------------------------------------------------------


def test_body_size_limit(filters: HashMap) -> None:
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
        assert len(filters) == 0
        await c.call("PUT", "/", 204, data=chunked(exact))  # exactly the limit is fine
        assert texts(filters) == {"10.0.0.1"}

    run(filters, scenario)


def test_declared_oversize_is_refused_without_waiting_for_the_body(filters: HashMap) -> None:
    async def scenario(c: Client) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", c.port)
        try:
            writer.write(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n10.0.0.1\n")
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), timeout=5)
        finally:
            writer.close()
            await writer.wait_closed()
        assert status.split()[1] == b"413"

    run(filters, scenario)
    assert len(filters) == 0


# ---- capacity ---------------------------------------------------------------------------------


def test_table_full_is_507_and_nothing_is_half_applied(make_map: Callable[..., HashMap]) -> None:
    filters = make_map(4)
    for a in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        filters.put(key(a), (0, 0))

    async def scenario(c: Client) -> None:
        r = await c.call("PUT", "/", 507, data="10.0.0.4\n10.0.0.5")
        assert "holds 4 entries (3 in use, this request adds 2)" in r.body["error"]
        assert "--max-filters" in r.body["error"]
        assert texts(filters) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
        await c.call("PUT", "/", 204, data="10.0.0.4\n10.0.0.1")  # fills it exactly
        await c.call("PUT", "/", 204, data="10.0.0.2")  # present: fine when full
        await c.call("PUT", "/filters/10.0.0.9", 507)
        await c.call("PUT", "/filters/10.0.0.3", 200)
        assert len(filters) == 4

    run(filters, scenario)


class RacingMap(HashMap):
    """A real map plus a second writer that strikes during the server's first insert.

    Models another process (a second agent, bpftool) writing after the
    server's checks but before or after its first write: `race` entries are
    written just before (`race_before`) or just after that first insert.
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.race: list[tuple[bytes, tuple[int, int]]] = []
        self.race_before = False

    def put(self, key: bytes, value: Any, **kw: Any) -> None:
        race, self.race = self.race, []
        if self.race_before:
            self._write(race)
        super().put(key, value, **kw)
        if not self.race_before:
            self._write(race)

    def _write(self, entries: list[tuple[bytes, tuple[int, int]]]) -> None:
        for k, v in entries:
            super().put(k, v)


def test_kernel_refusal_midway_rolls_back(make_map: Callable[..., HashMap]) -> None:
    filters = make_map(4, RacingMap)
    filters.put(key("10.0.0.1"), (0, 0))
    filters.race = [(key("10.9.9.1"), (0, 0)), (key("10.9.9.2"), (0, 0))]

    async def scenario(c: Client) -> None:
        r = await c.call("PUT", "/", 507, data="10.0.0.2\n10.0.0.3\n10.0.0.4")
        assert "--max-filters" in r.body["error"]

    run(filters, scenario)
    assert texts(filters) == {"10.0.0.1", "10.9.9.1", "10.9.9.2"}


def test_key_inserted_meanwhile_keeps_its_counters(make_map: Callable[..., HashMap]) -> None:
    filters = make_map(8, RacingMap)
    filters.race, filters.race_before = [(key("10.0.0.7"), (7, 9))], True

    async def scenario(c: Client) -> None:
        await c.call("PUT", "/", 204, data="10.0.0.7\n10.0.0.8")

    run(filters, scenario)
    assert filters.get(key("10.0.0.7")) == (7, 9)
    assert filters.get(key("10.0.0.8")) == (0, 0)


def test_concurrent_puts_are_each_all_or_nothing(make_map: Callable[..., HashMap]) -> None:
    filters = make_map(7)
    bodies = [f"10.1.{i}.1\n10.1.{i}.2\n10.1.{i}.3" for i in range(8)]

    async def put(c: Client, body: str) -> int:
        async with c.session.put("/", data=body) as r:
            return r.status

    async def scenario(c: Client) -> None:
        statuses = await asyncio.gather(*(put(c, b) for b in bodies))
        assert sorted(statuses) == [204, 204] + [507] * 6
        for body, status in zip(bodies, statuses):
            present = [a in texts(filters) for a in body.split()]
            assert present == [status == 204] * 3

    run(filters, scenario)


# ---- methods and paths ------------------------------------------------------------------------


def test_other_methods_are_405_with_allow(filters: HashMap) -> None:
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
        assert len(filters) == 0

    run(filters, scenario)


def test_unknown_path_is_404_json(filters: HashMap) -> None:
    async def scenario(c: Client) -> None:
        r = await c.call("GET", "/nope", 404)
        assert "/nope" in r.body["error"]
        await c.call("PUT", "/filters/", 404, data="10.0.0.1")
        assert len(filters) == 0

    run(filters, scenario)


# ---- /filters ---------------------------------------------------------------------------------


def test_filters_listing_shows_counters(filters: HashMap) -> None:
    filters.put(key("2001:db8::5"), (0, 0))
    filters.put(key("10.0.0.1"), (42, 2_500_000_000))

    async def scenario(c: Client) -> None:
        body = (await c.call("GET", "/filters", 200)).body
        assert body["count"] == 2 and body["max_entries"] == 64
        v4, v6 = body["filters"]
        assert v4["address"] == "10.0.0.1" and v4["matches"] == 42
        assert v4["last_match_unix"] == pytest.approx(EPOCH + 2.5)
        when = datetime(2023, 11, 14, 22, 13, 22, 500000, tzinfo=UTC)
        assert v4["last_match"] == "2023-11-14T22:13:22.500000Z"
        assert datetime.fromisoformat(v4["last_match"]) == when
        assert v6 == {"address": "2001:db8::5", "matches": 0, "last_match": None, "last_match_unix": None}

    run(filters, scenario)


def test_filters_body_writes(filters: HashMap) -> None:
    async def scenario(c: Client) -> None:
        await c.call("PUT", "/filters", 204, data="10.0.0.1\n2001:DB8::7\n")
        await c.call("PUT", "/filters", 204, json={"addresses": ["10.0.0.2", "::ffff:10.0.0.1"]})
        assert texts(filters) == {"10.0.0.1", "10.0.0.2", "2001:db8::7"}
        for bad in ({"addresses": "10.0.0.3"}, ["10.0.0.3"], {"addresses": [1]}):
            await c.call("PUT", "/filters", 400, json=bad)
        r = await c.call("PUT", "/filters", 400, json={"addresses": ["10.0.0.3", "bogus"]})
        assert "bogus" in r.body["error"]
        await c.call("PUT", "/filters", 400, data="{", headers={"Content-Type": "application/json"})
        await c.call("PUT", "/filters", 400, json={"addresses": []})
        await c.call("DELETE", "/filters", 404, json={"addresses": ["10.0.0.2", "10.0.0.3"]})
        assert texts(filters) == {"10.0.0.1", "10.0.0.2", "2001:db8::7"}
        await c.call("DELETE", "/filters", 204, data="10.0.0.2\n2001:db8::7")
        assert texts(filters) == {"10.0.0.1"}

    run(filters, scenario)


def test_single_filter_resource(filters: HashMap) -> None:
    async def scenario(c: Client) -> None:
        await c.call("GET", "/filters/2001:DB8::1", 404)
        r = await c.call("PUT", "/filters/2001:DB8::1", 201)
        assert r.headers["Location"] == "/filters/2001:db8::1"
        assert r.body == {"address": "2001:db8::1", "matches": 0, "last_match": None, "last_match_unix": None}
        filters.put(key("2001:db8::1"), (3, 1_000_000_000))
        r = await c.call("PUT", "/filters/2001:db8:0::1", 200)
        assert r.body["matches"] == 3 and r.body["last_match_unix"] == pytest.approx(EPOCH + 1)
        assert filters.get(key("2001:db8::1")) == (3, 1_000_000_000)
        r = await c.call("GET", "/filters/2001:db8::1", 200)
        assert r.body["address"] == "2001:db8::1" and r.body["matches"] == 3
        await c.call("PUT", "/filters/::ffff:10.0.0.1", 201)
        assert (await c.call("GET", "/filters/10.0.0.1", 200)).body["address"] == "10.0.0.1"
        await c.call("DELETE", "/filters/2001:db8::1", 204)
        await c.call("DELETE", "/filters/2001:db8::1", 404)
        assert texts(filters) == {"10.0.0.1"}
        r = await c.call("GET", "/filters/10.0.0.0/8", 400)
        assert "CIDR" in r.body["error"]
        r = await c.call("PUT", "/filters/fe80::1%25eth0", 400)
        assert "zone" in r.body["error"]
        r = await c.call("DELETE", "/filters/not-an-ip", 400)
        assert "not-an-ip" in r.body["error"]
        assert texts(filters) == {"10.0.0.1"}

    run(filters, scenario)


# ---- /healthz, /openapi.json, errors, lifecycle --------------------------------------------------


def test_healthz(filters: HashMap) -> None:
    async def scenario(c: Client) -> None:
        assert (await c.call("GET", "/healthz", 200)).body == _health()

    run(filters, scenario)


def test_unexpected_exception_is_500_and_server_survives(
    filters: HashMap, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_health() -> dict:
        raise RuntimeError("sensor on fire")

    async def scenario(c: Client) -> None:
        r = await c.call("GET", "/healthz", 500)
        assert "sensor on fire" not in r.body["error"]
        await c.call("PUT", "/", 204, data="10.0.0.1")
        assert (await c.call("GET", "/", 200)).body == ["10.0.0.1"]

    with caplog.at_level(logging.ERROR, logger="ttcp.server"):
        run(filters, scenario, health=broken_health)
    assert any("sensor on fire" in str(rec.exc_info[1]) for rec in caplog.records if rec.exc_info)


def test_openapi_documents_every_route(filters: HashMap) -> None:
    app = server.create_app(filters, health=_health, mono_to_wall=_mono_to_wall)
    served = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        served.add((path.replace("{addr:.+}", "{addr}"), route.method.lower()))
    documented = {(p, m) for p, ops in OPENAPI["paths"].items() for m in ops if m != "parameters"
                  and m != "description"}
    assert served == documented
    assert {"/", "/filters", "/filters/{addr}", "/healthz", "/openapi.json"} <= {p for p, _ in served}
    for path, method in documented:
        op = OPENAPI["paths"][path][method]
        assert "500" in op["responses"]
        if method in ("put", "delete") and path != "/filters/{addr}":
            assert {"400", "413"} <= set(op["responses"]) and "requestBody" in op

    async def scenario(c: Client) -> None:
        assert (await c.call("GET", "/openapi.json", 200)).body == OPENAPI

    run(filters, scenario)


def test_no_access_log(filters: HashMap, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture) -> None:
    async def scenario(c: Client) -> None:
        await c.call("GET", "/", 200)
        await c.call("GET", "/nope", 404)

    with caplog.at_level(logging.DEBUG, logger="aiohttp.access"):
        run(filters, scenario)
    assert not [r for r in caplog.records if r.name == "aiohttp.access"]
    assert capfd.readouterr().out == ""


def test_start_reports_bind_errors_in_one_line(filters: HashMap) -> None:
    async def main() -> None:
        app = server.create_app(filters, health=_health, mono_to_wall=_mono_to_wall)
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            with pytest.raises(TtcpError) as info:
                await server.start(app, "127.0.0.1", port)
        assert f"127.0.0.1:{port}" in str(info.value) and "--port" in str(info.value)
        with pytest.raises(TtcpError) as info:
            await server.start(app, "192.0.2.1", 8090)  # TEST-NET-1: never a local address
        assert "\n" not in str(info.value) and "--host" in str(info.value)

    asyncio.run(main())


def test_stop_closes_the_listener(filters: HashMap) -> None:
    async def main() -> None:
        app = server.create_app(filters, health=_health, mono_to_wall=_mono_to_wall)
        runner = await server.start(app, "127.0.0.1", 0)
        port = runner.addresses[0][1]
        await server.stop(runner)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    asyncio.run(main())


# ---- the seed's curl command lines -------------------------------------------------------------

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
def test_seed_curl_lines(filters: HashMap) -> None:
    filters.put(key("10.178.0.5"), (0, 0))
    get, put, delete = SEED_LINES

    async def scenario(c: Client) -> None:
        assert await _curl(get, c.port) == (200, '["10.178.0.5"]')
        assert await _curl(put, c.port) == (204, "")
        assert texts(filters) == {"10.178.0.5", "192.168.0.1"}
        assert await _curl(put, c.port) == (204, "")
        code, body = await _curl(get, c.port)
        assert code == 200 and json.loads(body) == ["10.178.0.5", "192.168.0.1"]
        assert await _curl(delete, c.port) == (204, "")
        assert texts(filters) == {"10.178.0.5"}
        code, body = await _curl(delete, c.port)
        assert code == 404 and "192.168.0.1" in json.loads(body)["error"]

    run(filters, scenario)
