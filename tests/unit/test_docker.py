"""The Docker source: parsers on captured real answers (Docker 20.10, API 1.41) and
mutations of them, and the client and watcher against hostile unix-socket
servers (real sockets, real aiohttp): absent, hanging, non-HTTP, broken JSON,
garbage and oversized event lines, an idle stream whose engine hangs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from ttcp.errors import TtcpError
from ttcp.workloads.docker import (
    ApiVersion,
    DockerError,
    DockerGarbage,
    LineSplitter,
    negotiate,
    parse_event,
    parse_inspect,
    parse_list,
    parse_version,
    since_param,
)
from ttcp.workloads.docker_watch import DockerClient, DockerWatcher, Timeouts
from ttcp.workloads.runtime import Change, Gone, Lost, Pod, Relisted, Seen

FIX = Path(__file__).parents[1] / "support" / "runtimes"


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """An async test run on its own loop, bounded."""
    @functools.wraps(test)
    def sync() -> None:
        asyncio.run(asyncio.wait_for(test(), 30))
    return sync
FAST = Timeouts(connect=0.3, request=0.5, headers=0.5, ping_every=0.3, healthy_after=1.0)


# ---- pure ----------------------------------------------------------------------------------------


def test_inspect_of_a_real_pod_labelled_container() -> None:
    c = parse_inspect((FIX / "docker-20.10-inspect-pod.json").read_bytes())
    assert c.name == "ttcp-ctr-pod" and c.running and c.pid > 0 and len(c.id) == 64 and c.runtime == "docker"
    assert c.pod == Pod("shop", "web-0") and c.image == "ttcp-test/debian:bookworm" and c.container_name == "app"
    assert not c.host_network and c.shares_netns_of is None and not c.sandbox


def test_inspect_of_a_real_host_network_container() -> None:
    c = parse_inspect((FIX / "docker-20.10-inspect-hostnet.json").read_bytes())
    assert c.host_network and c.pod is None and c.container_name == ""


def test_inspect_of_a_container_sharing_another_ones_network() -> None:
    c = json.loads((FIX / "docker-20.10-inspect-pod.json").read_bytes())
    c["HostConfig"]["NetworkMode"] = "container:" + "a" * 64
    c["Config"]["Labels"]["io.kubernetes.docker.type"] = "podsandbox"
    parsed = parse_inspect(json.dumps(c).encode())
    assert parsed.shares_netns_of == "a" * 64 and parsed.sandbox


def test_docker_errors_are_ttcp_errors() -> None:
    assert issubclass(DockerGarbage, DockerError) and issubclass(DockerError, TtcpError)


@pytest.mark.parametrize("mutate", [
    lambda c: c.update(Name="web"),  # no leading "/"
    lambda c: c.update(Name="/-web"),  # breaks Docker's name rule
    lambda c: c.update(Id="xyz"),
    lambda c: c["State"].update(Pid="12"),
    lambda c: c["State"].update(Pid=True),
    lambda c: c["State"].update(Pid=-1),
    lambda c: c["Config"].update(Labels={"a": 1}),
    lambda c: c.pop("HostConfig"),
])
def test_inspect_rejects_garbage(mutate: Callable[[dict[str, object]], None]) -> None:
    c = json.loads((FIX / "docker-20.10-inspect-pod.json").read_bytes())
    mutate(c)
    with pytest.raises(DockerGarbage):
        parse_inspect(json.dumps(c).encode())


def test_stopped_container_has_no_pid() -> None:
    c = json.loads((FIX / "docker-20.10-inspect-pod.json").read_bytes())
    c["State"].update(Running=False)
    assert parse_inspect(json.dumps(c).encode()).pid == 0


def test_real_event_lines() -> None:
    lines = (FIX / "docker-20.10-events.ndjson").read_bytes().splitlines()
    evs = [e for e in map(parse_event, lines) if e is not None]
    actions = [e.action for e in evs]
    assert actions[:2] == ["create", "start"] and "restart" in actions and "destroy" in actions
    assert all(e.name for e in evs)  # exec_create/exec_start are dropped
    assert len(evs) < len(lines)
    renamed = [e for e in evs if e.action == "rename"]
    assert renamed and renamed[0].attributes["oldName"].startswith("/")


@pytest.mark.parametrize("line", [b"not json", b"[]", b'{"Type":"container","Action":"start"}',
                                  b'{"Type":"container","Action":"start","Actor":{"ID":"1"},"timeNano":1}'])
def test_event_garbage(line: bytes) -> None:
    with pytest.raises(DockerGarbage):
        parse_event(line)


def test_line_splitter_bounds_and_joins() -> None:
    s = LineSplitter(max_line=16)
    assert s.feed(b'{"a"') == [] and s.feed(b':1}\n{"b":2}\n\n{') == [b'{"a":1}', b'{"b":2}']
    assert s.feed(b"x" * 17) == [] and s.skipped == 1  # dropped up to its newline
    assert s.feed(b"y" * 100) == [] and s.feed(b'zz\n{"c":3}\n') == [b'{"c":3}'] and s.skipped == 1
    assert s.feed(b"w" * 10 + b"v" * 10 + b'\n') == [] and s.skipped == 2  # too long in one chunk


def test_versions() -> None:
    assert parse_version("1.41") == ApiVersion(41)
    assert str(negotiate(ApiVersion(41))) == "1.41"
    assert str(negotiate(ApiVersion(60), ApiVersion(44))) == "1.52"  # capped at what we checked
    assert str(negotiate(ApiVersion(60), ApiVersion(55))) == "1.55"  # never below the server's minimum
    with pytest.raises(DockerError):
        negotiate(ApiVersion(12))
    for bad in ("", "2.0", "1.x", "1.41; rm"):
        with pytest.raises(DockerGarbage):
            parse_version(bad)
    assert since_param(1796587435990290779) == "1796587435.990290779"
    assert since_param(5) == "0.000000005"


def test_list() -> None:
    ids = parse_list((FIX / "docker-20.10-list.json").read_bytes())
    assert ids and all(len(i) == 64 for i in ids)
    with pytest.raises(DockerGarbage):
        parse_list(b'{"Id": 1}')


# ---- hostile servers (real sockets, real aiohttp) ----------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def request_path(reader: asyncio.StreamReader) -> bytes | None:
    """The path of a fake engine's next request (its head read whole); None once the client is gone."""
    try:
        req = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return req.split(b" ")[1]


async def ok(writer: asyncio.StreamWriter, body: bytes) -> None:
    """A fake engine's 200 answer, with the API version a real 20.10 sends."""
    writer.write(b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()


@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory(prefix="ttcp-ctr-") as d:
        path = f"{d}/docker.sock"
        srv = await asyncio.start_unix_server(handler, path)
        try:
            yield path
        finally:
            srv.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 1)


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1024)
    writer.write(b"\x00\xffSSH-2.0-OpenSSH\r\n\r\n" * 10)
    await writer.drain()
    writer.close()


def http(status: int, body: bytes, headers: str = "") -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            req = await reader.readuntil(b"\r\n\r\n")
            if not req:
                return
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body)
            await writer.drain()
    return handle


@run
async def test_absent_socket_fails_fast() -> None:
    t0 = time.monotonic()
    async with DockerClient("/nonexistent/docker.sock", FAST) as c:
        with pytest.raises(DockerError, match="_ping"):
            await c.negotiate()
    assert time.monotonic() - t0 < 0.5


@run
async def test_hanging_engine_times_out() -> None:
    async with server(hang) as path, DockerClient(path, FAST) as c:
        t0 = time.monotonic()
        with pytest.raises(DockerError, match="no answer within"):
            await c.negotiate()
        assert time.monotonic() - t0 < FAST.request + 0.3


@run
async def test_non_http_garbage() -> None:
    async with server(garbage) as path, DockerClient(path, FAST) as c:
        with pytest.raises(DockerError):
            await c.negotiate()


@run
async def test_http_with_garbage_json() -> None:
    async with server(http(200, b"{\"Api", "Api-Version: 1.41\r\n")) as path, DockerClient(path, FAST) as c:
        await c.negotiate()
        with pytest.raises(DockerGarbage):
            await c.list_ids()


@run
async def test_bad_api_version_header() -> None:
    async with server(http(200, b"OK", "Api-Version: banana\r\n")) as path, DockerClient(path, FAST) as c:
        with pytest.raises(DockerGarbage):
            await c.negotiate()


def fake_engine(events: list[bytes], *, then_hang: bool = True, ping_hangs_after: float | None = None) -> Handler:
    """A minimal engine: /_ping, an empty /containers/json, /events sending `events`."""
    t0 = time.monotonic()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (path := await request_path(reader)) is not None:
            if path.startswith(b"/_ping"):
                if ping_hangs_after is not None and time.monotonic() - t0 > ping_hangs_after:
                    await asyncio.sleep(3600)
                writer.write(b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\nOK")
            elif b"/containers/json" in path:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]")
            elif b"/events" in path:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                for e in events:
                    writer.write(f"{len(e):x}\r\n".encode() + e + b"\r\n")
                    await writer.drain()
                if then_hang:
                    await asyncio.sleep(3600)
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 404 X\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
    return handle


async def run_watcher(path: str, seconds: float, changes: list[Change] | None = None
                      ) -> tuple[DockerWatcher, list[str]]:
    log: list[str] = []
    w = DockerWatcher(path, (changes if changes is not None else []).extend, log.append, FAST)
    task = asyncio.create_task(w.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return w, log


@run
async def test_garbage_event_line_reconnects_and_logs_once() -> None:
    async with server(fake_engine([b'{"Type":"container"\n', b"garbage\n"])) as path:
        w, log = await run_watcher(path, 2.0)
    assert 3 <= w.stats["connects"] <= 6 and w.stats["failures"] >= 3  # backoff, not a spin
    assert len(log) == 1 and "not JSON" in log[0]  # one line per change of reason


@run
async def test_oversized_event_line_resyncs_without_reconnecting() -> None:
    async with server(fake_engine([b"x" * 300_000 + b"\n"])) as path:
        w, log = await run_watcher(path, 1.0)
    assert w.stats["oversized"] == 1 and w.stats["connects"] == 1 and not log


@run
async def test_idle_stream_with_hung_engine_is_noticed_by_ping() -> None:
    async with server(fake_engine([], ping_hangs_after=0.5)) as path:
        w, log = await run_watcher(path, 2.5)
    assert w.stats["connects"] >= 1 and any("_ping: no answer" in line for line in log)


@run
async def test_absent_socket_backs_off() -> None:
    changes: list[Change] = []
    w, log = await run_watcher("/nonexistent/docker.sock", 2.0, changes)
    assert changes == [Lost("docker")]  # once: nothing of Docker names a namespace until it lists again
    assert 3 <= w.stats["failures"] <= 10 and len(log) == 1  # backoff 0.2, 0.4, 0.8 ... not a spin




def engine_with(inspect: bytes, events: list[bytes]) -> Handler:
    """An engine listing one container (its inspect answer given), then sending `events`."""
    ident = json.loads(inspect)["Id"] if inspect.startswith(b"{") else "b" * 64
    listing = json.dumps([{"Id": ident}]).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (path := await request_path(reader)) is not None:
            body = b"OK" if path.startswith(b"/_ping") else listing if b"/containers/json" in path \
                else inspect if b"/containers/" in path else b""
            if b"/events" in path:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.3)  # after the listing's inspect
                for e in events:
                    writer.write(f"{len(e):x}\r\n".encode() + e + b"\r\n")
                await writer.drain()
                await asyncio.sleep(3600)
            await ok(writer, body)
    return handle


@run
async def test_watcher_reports_a_listed_container_then_its_removal() -> None:
    inspect = (FIX / "docker-20.10-inspect-pod.json").read_bytes()
    ident = json.loads(inspect)["Id"]
    destroy = json.dumps({"Type": "container", "Action": "destroy", "timeNano": 5,
                          "Actor": {"ID": ident, "Attributes": {"name": "ttcp-ctr-pod"}}}).encode() + b"\n"
    changes: list[Change] = []
    async with server(engine_with(inspect, [destroy])) as path:
        _, log = await run_watcher(path, 1.0, changes)
    assert changes[0] == Relisted("docker", frozenset({ident}))
    changes = changes[1:]
    assert [type(c) for c in changes] == [Seen, Gone] and not log
    seen, gone = changes
    assert isinstance(seen, Seen) and seen.container.name == "ttcp-ctr-pod" and seen.container.id == ident
    assert gone == Gone("docker", ident, removed=True)


@run
async def test_a_containers_garbage_costs_only_it_and_one_line() -> None:
    changes: list[Change] = []
    async with server(engine_with(b'{"Id": "' + b"b" * 64 + b'", "Name": 7}', [])) as path:
        w, log = await run_watcher(path, 1.0, changes)
    assert changes == [Relisted("docker", frozenset({"b" * 64}))] and w.stats["connects"] == 1
    assert w.stats["unreadable"] == 1
    assert len(log) == 1 and "unreadable" in log[0] and "bbbbbbbbbbbb" in log[0]


def engine_with_hanging_inspects(count: int) -> Handler:
    """An engine listing `count` containers whose inspects never answer (dockerd holding
    their locks); its /_ping and /events work."""
    listing = json.dumps([{"Id": f"{i:064x}"} for i in range(count)]).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (path := await request_path(reader)) is not None:
            if b"/events" in path:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(3600)
            if b"/containers/json" not in path and b"/containers/" in path:
                await asyncio.sleep(3600)
            body = listing if b"/containers/json" in path else b"OK"
            await ok(writer, body)
    return handle


@run
async def test_hanging_inspects_do_not_starve_the_stream_or_the_ping() -> None:
    log: list[str] = []
    t = Timeouts(connect=0.3, request=0.5, headers=0.5, inspect=0.8, ping_every=0.3, healthy_after=1.0)
    async with server(engine_with_hanging_inspects(10)) as path:
        w = DockerWatcher(path, [].extend, log.append, t)
        task = asyncio.create_task(w.run())
        await asyncio.sleep(3.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert w.stats["slow"] >= 8 and w.stats["connects"] == 1 and w.stats["failures"] == 0
    assert not any("_ping" in line for line in log), log
    # one line for the whole episode (10 containers, each retried), and /healthz shows it
    assert len(log) == 1 and "inspects failing" in log[0] and "no answer within 0.8 s" in log[0], log
    health = w.health()
    assert health["lookups_failing"] == 10 and health["connected"] and health["problem"] is None


def engine_listing(count: int) -> Handler:
    """An engine listing `count` containers, each inspect answering (the pod fixture, its Id
    replaced); an events stream that stays open."""
    template = json.loads((FIX / "docker-20.10-inspect-pod.json").read_bytes())
    listing = json.dumps([{"Id": f"{i:064x}"} for i in range(count)]).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (raw := await request_path(reader)) is not None:
            path = raw.decode()
            if "/events" in path:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(3600)
            if "/containers/json" in path:
                body = listing
            elif "/containers/" in path:
                body = json.dumps({**template, "Id": path.split("/")[-2], "Name": "/c" + path.split("/")[-2][-2:]}
                                  ).encode()
            else:
                body = b"OK"
            await ok(writer, body)
    return handle


@run
async def test_a_failing_emit_costs_one_line_not_the_workers() -> None:
    emitted: list[Change] = []

    def emit(changes: list[Change]) -> None:
        emitted.extend(c for c in changes if isinstance(c, Seen))
        if changes and isinstance(changes[0], Seen) and len(emitted) <= 4:  # as many failures as workers: each would have ended one
            raise AssertionError("a bug in the registry")

    log: list[str] = []
    async with server(engine_listing(8)) as path:
        w = DockerWatcher(path, emit, log.append, FAST)
        task = asyncio.create_task(w.run())
        await asyncio.sleep(1.0)
        assert not task.done()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(emitted) == 8 and w.stats["connects"] == 1
    assert len(log) == 1 and "AssertionError: a bug in the registry" in log[0], log


def test_odd_but_valid_names_round_trip() -> None:
    c = json.loads((FIX / "docker-20.10-inspect-pod.json").read_bytes())
    for name in ("ab", "0web", "web.1", "web_1-x", "ttcp-ctr-WEB", "a" * 2000):  # Docker accepts these (measured)
        c["Name"] = "/" + name
        assert parse_inspect(json.dumps(c).encode()).name == name
    c["Config"]["Labels"]["io.kubernetes.pod.name"] = "web\n0\t\x1b[31mred"  # labels are free text
    assert parse_inspect(json.dumps(c).encode()).pod == Pod("shop", "web\n0\t\x1b[31mred")  # the registry vets it
