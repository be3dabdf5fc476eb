"""The API's connection limits carried out (ttcp.api.connections) on real sockets: the
cap and who gives way, the request deadline, the idle keep-alive timeout, the limit on
GET /events clients, what a client sees for each (a JSON error, then the close), and
aiohttp's own 400s as JSON. The server is ttcp's, in this process, over a table in
memory; clients are raw sockets, so that half-sent requests are really half sent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.api import hooks
from tests.support.kernel import scaled
from tests.support.memory_table import MemoryFilterTable
from ttcp import server
from ttcp.api.connections import LISTEN_BACKLOG, track
from ttcp.api.event_stream import EventHub
from ttcp.api.limits import Connections, Limits

HALF_REQUESTS = (  # what a slow or hostile client leaves behind, in turn
    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Ag",  # headers cut short
    b"PUT / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n10.0.",  # body cut short
    b"",  # nothing at all
)


@dataclass
class Api:
    port: int
    connections: Connections[Any]
    hub: EventHub

    async def open(self, data: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        if data:
            writer.write(data)
            await writer.drain()
        return reader, writer

    async def get(self, path: str, headers: str = "") -> tuple[int, bytes, float]:
        """A fresh client's GET: status, body, seconds."""
        t0 = time.monotonic()
        reader, writer = await self.open(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
                                         "Connection: close\r\n\r\n".encode())
        status, body = parse(await asyncio.wait_for(reader.read(), scaled(5)))
        writer.close()
        return status, body, time.monotonic() - t0


def parse(reply: bytes) -> tuple[int, bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes; TimeoutError if it does not."""
    out = b""
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                out += chunk
    return out


@contextlib.asynccontextmanager
async def serving(limits: Limits, app: Any = None) -> AsyncIterator[Api]:
    hub = EventHub(max_clients=limits.stream_clients)
    connections: Connections[Any] = Connections(limits)
    app = app or server.create_app(MemoryFilterTable(), hooks(events=hub))
    runner = await server.start(app, "127.0.0.1", 0, connections=connections)
    try:
        yield Api(runner.addresses[0][1], connections, hub)
    finally:
        await server.stop(runner)


def run(limits: Limits, scenario: Callable[[Api], Awaitable[None]], app: Any = None) -> None:
    async def main() -> None:
        async with serving(limits, app) as api:
            await scenario(api)

    asyncio.run(main())


def json_error(reply: bytes, status: int) -> str:
    """The error of a JSON error answer, which the server sends before it closes."""
    head, _, body = reply.partition(b"\r\n\r\n")
    assert parse(reply)[0] == status, reply[:300]
    assert b"Content-Type: application/json" in head, head
    assert b"Connection: close" in head or head.startswith(b"HTTP/1.0"), head  # 1.0: no keep-alive anyway
    error = json.loads(body)["error"]
    assert isinstance(error, str) and error
    return error


# ---- the cap ----------------------------------------------------------------------------------


def test_half_requests_over_the_cap_give_way_to_a_fresh_client() -> None:
    async def scenario(api: Api) -> None:
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        kept, kept_writer = await api.open(request)  # a keep-alive client, idle between requests
        await kept.readuntil(b"}")
        clients = [await api.open(HALF_REQUESTS[i % 3]) for i in range(20)]
        await asyncio.sleep(0.1)
        status, _, took = await api.get("/healthz")
        assert status == 200 and took < 0.1
        kept_writer.write(request)  # spared: half-requests give way first
        assert parse(await kept.readuntil(b"}"))[0] == 200
        # The 14 longest waiting ones were told why, and closed; the 6 newest wait on.
        for reader, _ in clients[:14]:
            assert "closed to admit a newer one" in json_error(await until_closed(reader, 1), 503)
        for reader, _ in clients[14:]:
            assert not reader.at_eof()
        counts = api.connections.counts
        assert counts.rejected == {"cap": 0, "evicted": 14, "deadline": 0} and counts.peak <= 8 + 1
        for _, writer in [*clients, (kept, kept_writer)]:
            writer.close()

    run(Limits(max_connections=8), scenario)


def _blocking_app(release: asyncio.Event) -> Any:
    from aiohttp import web

    async def block(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="done")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[track])
    app.router.add_get("/block", block)
    app.router.add_get("/healthz", healthz)
    return app


def test_when_every_connection_is_busy_a_newcomer_reads_its_503_then_the_close() -> None:
    release = asyncio.Event()

    async def scenario(api: Api) -> None:
        busy = [await api.open(b"GET /block HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") for _ in range(2)]
        await asyncio.sleep(0.05)
        # Its request sent and unread: the 503 must still arrive before the close, not a reset.
        reader, writer = await api.open(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + b"x" * 5000)
        t0 = time.monotonic()
        assert "too many API connections" in json_error(await until_closed(reader, 2), 503)
        assert time.monotonic() - t0 < 1.5
        writer.close()
        assert api.connections.counts.rejected["cap"] == 1
        release.set()
        for r, _ in busy:
            assert parse(await until_closed(r, 2)) == (200, b"done")
        assert (await api.get("/healthz"))[0] == 200

    run(Limits(max_connections=2), scenario, _blocking_app(release))


# ---- the deadline and the keep-alive timeout ---------------------------------------------------


def test_requests_not_received_within_the_deadline_get_408_and_are_closed() -> None:
    async def scenario(api: Api) -> None:
        t0 = time.monotonic()
        late = [await api.open(data) for data in HALF_REQUESTS]
        trickled, writer = await api.open()
        request = b"PUT /filters HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 9\r\n\r\n10.0.0.1\n"
        for i in range(0, len(request), 10):  # slow, but whole within the deadline
            writer.write(request[i:i + 10])
            await asyncio.sleep(0.02)
        assert parse(await trickled.readuntil(b"\r\n\r\n"))[0] == 204
        for reader, _ in late:
            assert "not received within 0.5 s" in json_error(await until_closed(reader, scaled(2)), 408)
        assert 0.5 <= time.monotonic() - t0 < 0.5 + scaled(0.5)
        assert not trickled.at_eof()  # answered, now idle: the deadline is not for it
        assert api.connections.counts.rejected == {"cap": 0, "evicted": 0, "deadline": 3}
        writer.close()

    run(Limits(request_timeout_s=0.5), scenario)


def test_the_deadline_runs_from_the_first_byte_of_each_request() -> None:
    async def scenario(api: Api) -> None:
        reader, writer = await api.open(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await reader.readuntil(b"}")
        await asyncio.sleep(0.6)  # idle longer than the deadline: fine
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # then half a request
        t0 = time.monotonic()
        assert "not received" in json_error(await until_closed(reader, scaled(2)), 408)
        assert 0.4 <= time.monotonic() - t0 < 0.4 + scaled(0.4)

    run(Limits(request_timeout_s=0.4), scenario)


def test_an_idle_connection_is_closed_after_the_keepalive_timeout() -> None:
    async def scenario(api: Api) -> None:
        reader, _writer = await api.open(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        t0 = time.monotonic()
        assert parse(await until_closed(reader, scaled(3)))[0] == 200  # then a plain close
        assert 0.5 <= time.monotonic() - t0 < 0.5 + scaled(1.5)
        assert api.connections.counts.open == 0

    run(Limits(keepalive_timeout_s=0.5), scenario)


# ---- GET /events -------------------------------------------------------------------------------


def test_events_clients_have_their_own_limit_and_are_never_evicted() -> None:
    async def scenario(api: Api) -> None:
        assert api.hub.max_clients == 2
        streams = [await api.open(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") for _ in range(2)]
        for reader, _ in streams:
            assert parse(await reader.readuntil(b"\r\n\r\n"))[0] == 200
        status, body, _ = await api.get("/events")
        assert status == 503 and "too many GET /events clients (at most 2)" in json.loads(body)["error"]
        assert api.hub.refused_clients == 1
        flood = [await api.open(HALF_REQUESTS[1]) for _ in range(10)]  # streams are busy: never evicted
        assert (await api.get("/healthz"))[0] == 200
        api.hub.publish(['{"n": 1}'])
        for reader, _ in streams:
            assert b'{"n": 1}' in await asyncio.wait_for(reader.readuntil(b"}"), 2)
        for _, writer in streams + flood:
            writer.close()

    run(Limits(max_connections=4, max_stream_clients=3), scenario)


# ---- what aiohttp answers by itself, and clients that leave -------------------------------------


@pytest.mark.parametrize("raw", [
    b"PUT / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: a\x01b\r\n\r\n",  # a control character in a header
    b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # request line too long
    b"PUT / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
])
def test_unparsable_http_gets_a_json_400(raw: bytes) -> None:
    async def scenario(api: Api) -> None:
        reader, writer = await api.open(raw)
        assert json_error(await until_closed(reader, scaled(2)), 400).startswith("malformed HTTP request: ")
        writer.close()

    run(Limits(), scenario)


def test_a_filter_with_a_newline_reaches_the_parser() -> None:
    async def scenario(api: Api) -> None:
        status, body, _ = await api.get("/filters/10.0.0.1%0A10.0.0.2")
        assert status == 400 and "unexpected" in json.loads(body)["error"]

    run(Limits(), scenario)


def test_a_client_that_leaves_mid_body_is_nothing_to_report(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(api: Api) -> None:
        for data in (HALF_REQUESTS[1], b"PUT / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n"):
            _, writer = await api.open(data)
            await asyncio.sleep(0.05)  # the handler awaits the body
            writer.close()
        await asyncio.sleep(0.1)
        assert (await api.get("/healthz"))[0] == 200

    with caplog.at_level(logging.DEBUG, logger="ttcp"):
        run(Limits(), scenario)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_no_descriptor_outlives_its_connection() -> None:
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def scenario(api: Api) -> None:
        before = fds()
        clients = [await api.open(HALF_REQUESTS[i % 3]) for i in range(40)]  # 24 evicted, 16 timed out
        for reader, _ in clients:
            await until_closed(reader, scaled(2))
        for _, writer in clients:
            writer.close()
        await asyncio.sleep(0.1)
        assert fds() == before and api.connections.counts.open == 0

    run(Limits(max_connections=16, request_timeout_s=0.3), scenario)


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss is not installed (apt-get install iproute2)")
def test_the_listen_queue_is_deep() -> None:
    """asyncio listens with its accept batch (16); ttcp deepens the queue afterwards."""
    async def scenario(api: Api) -> None:
        ss = await asyncio.create_subprocess_exec("ss", "-ltnH", f"sport = :{api.port}",
                                                  stdout=asyncio.subprocess.PIPE)
        out, _ = await ss.communicate()
        assert int(out.split()[2]) == LISTEN_BACKLOG  # Send-Q of a listening socket: its backlog

    run(Limits(), scenario)
