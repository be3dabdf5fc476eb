"""HTTP API over the kernel filter map (aiohttp).

The server keeps no copy of the filter list: every GET reads the kernel map and
every PUT/DELETE writes it, so what the API shows is what the BPF program
filters on.

Atomicity: aiohttp runs every handler on one event loop thread and the map
calls are plain synchronous syscalls. Each handler reads and parses the whole
body first (the only awaits), then validates, checks capacity and writes with
no `await` in between, so no other request can interleave with a write
sequence. Keep it that way: an `await` between the checks and the writes
would break the all-or-nothing guarantee.

Errors are JSON objects {"error": "..."}; client mistakes never produce a 500.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from ttcp import addresses
from ttcp.errors import TtcpError
from ttcp.maps import HashMap, KeyExistsError, MapFullError

log = logging.getLogger("ttcp.server")

MAX_BODY = 64 * 1024
_NEW_VALUE = (0, 0)  # struct filter_stats {matches, last_match_ns} of a fresh entry
_JSON_TYPES = ("application/json",)
_V4_MAPPED = bytes(10) + b"\xff\xff"
_AMPERSAND_HINT = " (curl joins several -d with '&'; send one address per line, e.g. --data-binary @file)"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A client-visible failure: HTTP status plus a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _table_full(limit: int, used: int | None = None, adding: int | None = None) -> ApiError:
    detail = f" ({used} in use, this request adds {adding})" if used is not None else ""
    return ApiError(
        507,
        f"the filter table holds {limit} entries{detail}; "
        f"restart ttcp with --max-filters M to raise it (M > {limit})",
    )


# ---- request bodies ------------------------------------------------------------------


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8-sig")  # tolerate a BOM from editors
    except UnicodeDecodeError as e:
        raise ApiError(400, f"request body is not valid UTF-8 (byte {e.start})") from None


def _texts_from_json(text: str) -> list[str]:
    """Addresses of a JSON body {"addresses": ["...", ...]}."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    except RecursionError:  # "[[[[...": nesting deeper than the parser's stack, within MAX_BODY
        raise ApiError(400, "request body is not valid JSON: nested too deeply") from None
    items = doc.get("addresses") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise ApiError(400, 'JSON body must be {"addresses": ["<address>", ...]}')
    return items


def _texts_from_lines(text: str) -> list[str]:
    """One address per line; surrounding whitespace and blank lines ignored."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def _keys_of(texts: Iterable[str]) -> list[bytes]:
    """Map keys of every address, in order, deduplicated; 400 on the first bad one."""
    keys: dict[bytes, None] = {}
    for text in texts:
        try:
            keys[addresses.key_of(text)] = None
        except addresses.AddressError as e:
            hint = _AMPERSAND_HINT if "&" in text else ""
            raise ApiError(400, f"bad address: {e}{hint}") from None
    return list(keys)


def _path_key(request: web.Request) -> bytes:
    return _keys_of([request.match_info["addr"]])[0]


# ---- map operations (synchronous: no await inside) ----------------------------------


def _add(filters: HashMap[bytes, Any], keys: list[bytes]) -> list[bytes]:
    """Insert the absent keys, all or none; returns those this call inserted.

    Present keys keep their counters. Capacity is checked before the first
    write; should the kernel still refuse midway (another writer), the keys
    inserted here are removed again before the error propagates.
    """
    new = [k for k in keys if filters.get(k) is None]
    if not new:
        return []
    if len(new) > 1:  # one key needs no census: the kernel's E2BIG says "full" exactly
        used = len(filters)
        if used + len(new) > filters.max_entries:
            raise _table_full(filters.max_entries, used, len(new))
    inserted: list[bytes] = []
    try:
        for key in new:
            try:
                filters.put(key, _NEW_VALUE, only_new=True)
            except KeyExistsError:
                continue
            inserted.append(key)
    except Exception as e:
        for key in inserted:
            filters.delete(key)
        if isinstance(e, MapFullError):
            raise _table_full(filters.max_entries) from None
        raise
    return inserted


def _remove(filters: HashMap[bytes, Any], keys: list[bytes]) -> None:
    """Delete every key, or none when one is absent (404 naming them)."""
    absent = [addresses.from_key(k) for k in keys if filters.get(k) is None]
    if absent:
        raise ApiError(404, "not in the filter table: " + ", ".join(absent))
    for key in keys:
        filters.delete(key)


def _order(key: bytes) -> tuple[int, bytes]:
    """IPv4 (v4-mapped keys) first, then IPv6, each numerically."""
    return (0 if key.startswith(_V4_MAPPED) else 1, key)


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# ---- the API ----------------------------------------------------------------------------


class _Api:
    """Handlers bound to one filter map and the agent's callbacks."""

    def __init__(
        self,
        filters: HashMap[bytes, Any],
        health: Callable[[], dict],
        mono_to_wall: Callable[[int], float],
        max_body: int,
    ) -> None:
        self.filters = filters
        self.health = health
        self.mono_to_wall = mono_to_wall
        self.max_body = max_body
        self.openapi_doc = _load_openapi()

    # -- helpers --

    async def _read_body(self, request: web.Request) -> bytes:
        """The raw body, refused (413) past the limit whether declared or streamed."""
        declared = request.content_length
        if declared is not None and declared > self.max_body:
            raise ApiError(413, f"request body of {declared} bytes exceeds the {self.max_body}-byte limit")
        body = await request.read()  # client_max_size stops chunked bodies early, too
        if len(body) > self.max_body:
            raise ApiError(413, self._too_large())
        return body

    def _too_large(self) -> str:
        return f"request body exceeds the {self.max_body}-byte limit"

    async def _body_keys(self, request: web.Request) -> list[bytes]:
        """Parse every address of the body before anything touches the map."""
        text = _decode(await self._read_body(request))
        if request.content_type in _JSON_TYPES:
            texts = _texts_from_json(text)
        else:
            texts = _texts_from_lines(text)
        if not texts:
            raise ApiError(400, "request body names no address (give one per line)")
        return _keys_of(texts)

    def _entry(self, key: bytes, value: tuple[int, int]) -> dict[str, Any]:
        matches, last_ns = value
        unix = self.mono_to_wall(last_ns) if last_ns else None
        return {
            "address": addresses.from_key(key),
            "matches": matches,
            "last_match": None if unix is None else _iso(unix),
            "last_match_unix": unix,
        }

    # -- handlers: everything after the body is read runs without an await --

    async def list_addresses(self, request: web.Request) -> web.Response:
        keys = sorted((key for key, _ in self.filters.items()), key=_order)  # one batched read
        return web.json_response([addresses.from_key(k) for k in keys])

    async def add_addresses(self, request: web.Request) -> web.Response:
        keys = await self._body_keys(request)
        _add(self.filters, keys)
        return web.Response(status=204)

    async def remove_addresses(self, request: web.Request) -> web.Response:
        keys = await self._body_keys(request)
        _remove(self.filters, keys)
        return web.Response(status=204)

    async def list_filters(self, request: web.Request) -> web.Response:
        items = sorted(self.filters.items(), key=lambda kv: _order(kv[0]))
        entries = [self._entry(k, v) for k, v in items]
        return web.json_response(
            {"filters": entries, "count": len(entries), "max_entries": self.filters.max_entries}
        )

    async def get_filter(self, request: web.Request) -> web.Response:
        key = _path_key(request)
        value = self.filters.get(key)
        if value is None:
            raise ApiError(404, f"{addresses.from_key(key)} is not in the filter table")
        return web.json_response(self._entry(key, value))

    async def put_filter(self, request: web.Request) -> web.Response:
        key = _path_key(request)
        created = bool(_add(self.filters, [key]))
        body = self._entry(key, self.filters.get(key) or _NEW_VALUE)
        if not created:
            return web.json_response(body, status=200)
        # Built by hand: yarl would escape the first ":" of an IPv6 address.
        return web.json_response(body, status=201, headers={"Location": f"/filters/{body['address']}"})

    async def delete_filter(self, request: web.Request) -> web.Response:
        _remove(self.filters, [_path_key(request)])
        return web.Response(status=204)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response(self.health())

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self.openapi_doc, content_type="application/json")

    # -- errors --

    def _http_error(self, request: web.Request, exc: web.HTTPException) -> web.Response:
        """aiohttp's own refusals (routing, body size) as JSON errors."""
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            message = f"method {request.method} not allowed on {request.path}; allowed: {allowed}"
        elif isinstance(exc, web.HTTPNotFound):
            message = f"no such resource: {request.path}"
        elif isinstance(exc, web.HTTPRequestEntityTooLarge):
            message = self._too_large()
        else:
            message = exc.reason
        return _error(exc.status, message, headers)

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Turn every failure into a JSON error; log the unexpected ones and carry on."""
        try:
            return await handler(request)
        except ApiError as e:
            return _error(e.status, e.message)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return self._http_error(request, e)
        except Exception:
            log.exception("internal error handling %s %s", request.method, request.path)
            return _error(500, "internal server error (details on ttcp's stderr)")

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self.list_addresses, allow_head=False)
        router.add_put("/", self.add_addresses)
        router.add_delete("/", self.remove_addresses)
        router.add_get("/filters", self.list_filters, allow_head=False)
        router.add_put("/filters", self.add_addresses)
        router.add_delete("/filters", self.remove_addresses)
        # `.+` so "10.0.0.0/8" reaches the parser and gets a 400 saying why.
        router.add_get("/filters/{addr:.+}", self.get_filter, allow_head=False)
        router.add_put("/filters/{addr:.+}", self.put_filter)
        router.add_delete("/filters/{addr:.+}", self.delete_filter)
        router.add_get("/healthz", self.healthz, allow_head=False)
        router.add_get("/openapi.json", self.openapi, allow_head=False)


# ---- application lifecycle ----------------------------------------------------------


def _load_openapi() -> bytes:
    return (Path(__file__).with_name("data") / "openapi.json").read_bytes()


def create_app(
    filters: HashMap[bytes, Any],
    *,
    health: Callable[[], dict],
    mono_to_wall: Callable[[int], float],
    max_body: int = MAX_BODY,
) -> web.Application:
    """The API application over `filters` (16-byte address keys, (matches, last_ns) values)."""
    api = _Api(filters, health, mono_to_wall, max_body)
    app = web.Application(middlewares=[api.errors], client_max_size=max_body)
    api.add_routes(app.router)
    return app


_BIND_HINTS = {
    errno.EADDRINUSE: "another process is listening there; choose another --port or stop it",
    errno.EADDRNOTAVAIL: "no local interface has that address; check --host",
    errno.EACCES: "ports below 1024 need root or CAP_NET_BIND_SERVICE; choose another --port",
}


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Listen on host:port; a bind failure becomes a one-line TtcpError.

    No access log: stdout belongs to the event stream. Handlers finish in
    microseconds, so a short shutdown timeout only cuts off slow clients
    (e.g. one still sending a refused body) instead of delaying exit by 60 s.
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except (OSError, UnicodeError) as e:  # UnicodeError: a --host IDNA cannot encode
        await runner.cleanup()
        reason = getattr(e, "strerror", None) or str(e)
        hint = _BIND_HINTS.get(getattr(e, "errno", None) or 0)
        message = f"cannot serve the API on {_endpoint(host, port)}: {reason}"
        raise TtcpError(f"{message} ({hint})" if hint else message) from None
    return runner


async def stop(runner: web.AppRunner) -> None:
    """Stop accepting, let in-flight requests finish (bounded), close connections."""
    await runner.cleanup()
