"""The API's test client and what its tests share: a real server on an ephemeral
127.0.0.1 port, requests checked against ttcp/data/openapi.json, fixed hooks."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp

from ttcp import server
from ttcp.rtt import filters as F
from ttcp.rtt.filter_table import FilterStats, FilterTable
from ttcp.rtt.histogram import Histogram

OPENAPI = json.loads(resources.files("ttcp").joinpath("data", "openapi.json").read_text())
EPOCH = 1_700_000_000.0  # fake boot time: mono ns 0 is this Unix time


def mono_to_wall(ns: int) -> float:
    return EPOCH + ns / 1e9


def health() -> dict[str, Any]:
    return {"status": "ok", "attach_mode": "tp_btf", "events": 3, "dropped": 1}


def f(text: str) -> F.Filter:
    return F.parse(text)


def texts(table: FilterTable) -> set[str]:
    return {str(x) for x in table.filters()}


def counters(matches: int, last_ns: int) -> FilterStats:
    closed = Histogram(matches, 0, (0,) * len(Histogram.empty().buckets))
    return FilterStats(last_ns, closed, Histogram.empty())


def documented(path: str, method: str) -> dict[str, Any] | None:
    """The OpenAPI operation serving `path`, or None if the document has none."""
    if path.startswith("/filters/") and path != "/filters/":
        text = unquote(path.removeprefix("/filters/").split("?", 1)[0])
        path = "/filters/{filter}/groups" if server.groups_route(text) is not None else "/filters/{filter}"
    op: dict[str, Any] | None = OPENAPI["paths"].get(path, {}).get(method.lower())
    return op


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
            is_json = r.content_type == "application/json"
            reply = Reply(r.status, r.headers, json.loads(raw) if raw and is_json else raw.decode() or None)
        assert reply.status == expect, (method, path, reply.status, reply.body)
        if expect >= 400 and method != "HEAD":
            assert r.content_type == "application/json"
            assert isinstance(reply.body, dict) and isinstance(reply.body["error"], str)
            assert set(reply.body) == {"error"}
        op = documented(path, method)
        if op is None:
            assert expect in (401, 404, 405, 421)  # documented globally (components.responses)
        else:
            assert str(expect) in op["responses"], f"{method} {path} -> {expect} is not in openapi.json"
        return reply


def hooks(**kw: Any) -> server.ApiHooks:
    kw.setdefault("health", health)
    return server.ApiHooks(mono_to_wall=mono_to_wall,
                        table_full_hint="restart ttcp with --max-filters M to raise it (M > {limit})", **kw)


@contextlib.asynccontextmanager
async def serving(table: FilterTable, **kw: Any) -> AsyncIterator[Client]:
    app = server.create_app(table, hooks(**kw))
    runner = await server.start(app, "127.0.0.1", 0)
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            yield Client(session, port)
    finally:
        await server.stop(runner)


def run(table: FilterTable, scenario: Callable[[Client], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        async with serving(table, **kw) as client:
            await scenario(client)

    asyncio.run(main())




# ---- API tokens ------------------------------------------------------------------------------

TOKEN = "t0k3n-for-the-tests-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def token_file(tmp_path: Path, content: bytes, mode: int = 0o600, name: str = "token") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    path.chmod(mode)
    return path
