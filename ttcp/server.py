"""The HTTP API (aiohttp): the filter table, histograms, metrics, events.

The server only speaks HTTP: it parses requests into filters (ttcp.rtt.filters),
calls the FilterTable protocol (ttcp.rtt.filter_table) and the agent's callbacks (ApiHooks)
(health, sampling, metrics), and renders answers. It keeps no copy of the
table; `GET /` is rendered once per table change (the table's version).

Atomicity: aiohttp runs every handler on one event loop thread and the table
calls are plain synchronous syscalls. Each handler reads and parses the whole
body first (the only awaits), then validates and writes with no `await` in
between, so no other request can interleave with a write sequence. Keep it
that way: an `await` between the checks and the writes would break the
all-or-nothing guarantee.

Errors are JSON objects {"error": "..."}; client mistakes never produce a 500.
Who may call it is decided before any handler runs, by two middlewares of
their own module, ttcp.api.guards: the Host header (against DNS rebinding)
and the bearer token, when one is set. How many connections it keeps and how
long a request may take to arrive, ttcp.api.limits decides and
ttcp.api.connections enforces; the OpenAPI document it serves is
ttcp/data/openapi.json cut to the running configuration (ttcp.api.openapi).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ttcp.api import metrics, openapi
from ttcp.api.connections import GatedSite, pool, track
from ttcp.api.event_stream import EventHub
from ttcp.api.guards import bearer_auth, check_host
from ttcp.api.limits import Connections, Limits
from ttcp.api.token import Token
from ttcp.errors import BindError, TtcpError
from ttcp.rtt import filters as F
from ttcp.rtt import groups as G
from ttcp.rtt.filter_table import FilterStats, FilterTable
from ttcp.rtt.filters import Filter, FilterError
from ttcp.rtt.filters_file import Status as FileStatus
from ttcp.rtt.groups import CgroupPath, GroupSet
from ttcp.rtt.table_rules import NotInTableError, Origin, SelectorHeldError, TableFullError

log = logging.getLogger("ttcp.server")

MAX_BODY = 64 * 1024
_JSON_TYPES = ("application/json",)
_AMPERSAND_HINT = " (curl joins several -d with '&'; send one filter per line, e.g. --data-binary @file)"
_ON = {"on", "true", "1", "yes"}
_OFF = {"off", "false", "0", "no"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FILTER_PATH = r"/filters/{filter:[\s\S]+}"
GROUPS_SUFFIX = "/groups"  # /filters/{filter}/groups, for a filter with a `by` clause
MAX_TOP = 10_000  # GET .../groups?top=N: at most


class ApiError(TtcpError):
    """A client-visible failure: HTTP status plus a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ApiHooks:
    """What the API may ask of the running agent (ttcp.agent.Agent), beyond the table."""

    health: Callable[[], dict[str, Any]]
    mono_to_wall: Callable[[int], float]
    metrics: Callable[[], metrics.Snapshot] | None = None
    sampling: Callable[[], dict[str, Any]] | None = None
    set_sampling: Callable[[bool], dict[str, Any]] | None = None  # raises TtcpError
    events: EventHub | None = None
    table_full_hint: str = ""  # how to get a larger table, in the caller's terms
    filters_file: Callable[[], FileStatus] | None = None  # --filters-file: its state
    cgroup_path: CgroupPath | None = None  # a cgroup id's path (groups by cgroup)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# ---- request bodies (pure) ---------------------------------------------------------


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8-sig")  # tolerate a BOM from editors
    except UnicodeDecodeError as e:
        raise ApiError(400, f"request body is not valid UTF-8 (byte {e.start})") from None


def _items_from_json(text: str) -> list[object]:
    """Filters of a JSON body: {"filters": [text or {side, address, port}, ...]}, or the
    original ttcp's {"addresses": ["...", ...]}."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    except RecursionError:  # "[[[[...": nesting deeper than the parser's stack, within MAX_BODY
        raise ApiError(400, "request body is not valid JSON: nested too deeply") from None
    if isinstance(doc, dict) and len(doc) == 1 and isinstance(doc.get("filters"), list):
        return list(doc["filters"])
    items = doc.get("addresses") if isinstance(doc, dict) and len(doc) == 1 else None
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise ApiError(400, 'JSON body must be {"filters": ["<filter>" or {"side", "address", "port"}, '
                            '...]} or {"addresses": ["<address>", ...]}')
    return list(items)


def _filters_of(items: Iterable[object]) -> list[Filter]:
    """Every filter, in order, deduplicated; 400 naming the first bad one."""
    found: dict[Filter, None] = {}
    for item in items:
        try:
            found[F.from_json(item)] = None
        except FilterError as e:
            hint = _AMPERSAND_HINT if isinstance(item, str) and "&" in item else ""
            raise ApiError(400, f"bad filter: {e}{hint}") from None
    return list(found)


@contextlib.contextmanager
def gc_held_off() -> Iterator[None]:
    """Python's cycle collector held off while GET /metrics builds its answer. A scrape
    of 1,000 filters makes tens of thousands of short-lived objects, all freed by their
    reference counts once the answer is made; a collection midway would find them alive,
    promote them, and set off a full collection every few scrapes (11-15 ms each with
    1,000 filters by raddr: the scrape's p99). Cycles made meanwhile (by other threads)
    wait for the next collection."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def groups_route(text: str) -> str | None:
    """The filter text whose groups a /filters/{text} path asks for: `text` ends with
    /groups and is no filter itself (a cgroup path may end in /groups: then the whole
    text is the filter); None otherwise. A filter's text never ends so (its `by`
    clause, last, has no /groups), so the groups of `X by raddr` are at `X by raddr/groups`."""
    if not text.endswith(GROUPS_SUFFIX):
        return None
    try:
        F.parse(text)
    except FilterError:
        return text[:-len(GROUPS_SUFFIX)]
    return None


def groups_query(query: Mapping[str, str]) -> tuple[int, str, str]:
    """(top, sort, histogram) of GET .../groups?top=N&sort=count|mean|p50|p99&histogram=closed|sampled;
    400 naming a bad or unknown parameter."""
    unknown = sorted(set(query) - {"top", "sort", "histogram"})
    if unknown:
        raise ApiError(400, f"unknown query parameter(s) {', '.join(map(repr, unknown))} (expected top, sort, "
                            "histogram)")
    top_text = query.get("top", "20")
    if not top_text.isascii() or not top_text.isdigit() or not 1 <= int(top_text) <= MAX_TOP:
        raise ApiError(400, f"top must be a number from 1 to {MAX_TOP}, not {F.json_repr(top_text)}")
    sort, which = query.get("sort", "count"), query.get("histogram", "closed")
    if sort not in G.SORTS:
        raise ApiError(400, f"sort must be one of {', '.join(G.SORTS)}, not {F.json_repr(sort)}")
    if which not in G.HISTOGRAMS:
        raise ApiError(400, f"histogram must be closed or sampled, not {F.json_repr(which)}")
    return int(top_text), sort, which


def parse_body(body: bytes, content_type: str) -> list[Filter]:
    text = _decode(body)
    if content_type in _JSON_TYPES:
        items = _items_from_json(text)
    else:
        items = [line.strip() for line in text.splitlines() if line.strip()]
    if not items:
        raise ApiError(400, "request body names no filter (give one per line)")
    return _filters_of(items)


# ---- the API ----------------------------------------------------------------------------


class _Api:
    """Handlers bound to one filter table and the agent's hooks."""

    def __init__(self, table: FilterTable, hooks: ApiHooks, max_body: int, token: bool) -> None:
        self.table = table
        self.hooks = hooks
        self.max_body = max_body
        self.openapi_doc = openapi.served(token=token)
        self._listing: tuple[int, bytes] | None = None

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

    async def _body_filters(self, request: web.Request) -> list[Filter]:
        """Parse every filter of the body before anything touches the table."""
        return parse_body(await self._read_body(request), request.content_type)

    def _full(self, e: TableFullError) -> ApiError:
        hint = f"; {self.hooks.table_full_hint.format(limit=e.limit)}" if self.hooks.table_full_hint else ""
        return ApiError(507, f"{e}{hint}")

    def _add(self, fs: Sequence[Filter]) -> list[Filter]:
        try:
            return self.table.add(fs)
        except TableFullError as e:
            raise self._full(e) from None
        except SelectorHeldError as e:
            raise ApiError(409, f"{e} (nothing was added)") from None
        except FilterError as e:  # a workload this host cannot resolve (WorkloadError)
            raise ApiError(400, f"bad filter: {e}") from None

    def _remove(self, fs: Sequence[Filter]) -> None:
        managed = [f for f in fs if self.table.origin(f) is Origin.FILE]
        if managed and self.hooks.filters_file is not None:
            raise ApiError(409, f"{', '.join(map(str, managed))}: managed by the filters file "
                                f"{self.hooks.filters_file().path}; remove it there (nothing was removed)")
        try:
            self.table.remove(fs)
        except NotInTableError as e:
            raise ApiError(404, str(e) + self._held_instead(e.missing)) from None

    def _held_instead(self, missing: Sequence[Filter]) -> str:
        """For filters absent, the filters held with their selector (another `by`), if any."""
        held = [(f, h) for f in missing if (h := self.table.holder(f)) is not None]
        return "".join(f" (the table holds {h}, with the same selector)" for _, h in held[:1])

    def _entry(self, f: Filter, s: FilterStats, histograms: bool = False,
               groups: GroupSet | None = None) -> dict[str, Any]:
        unix = self.hooks.mono_to_wall(s.last_match_ns) if s.last_match_ns else None
        out: dict[str, Any] = {
            "filter": str(f),
            **f.to_json(),
            "matches": s.matches,
            "last_match": None if unix is None else _iso(unix),
            "last_match_unix": unix,
            "origin": "file" if self.table.origin(f) is Origin.FILE else "api",
        }
        state = self.table.workload_state(f)
        if state is not None:
            out["workload"] = state.to_json()
        if groups is not None:
            out.update(groups=groups.live, groups_evicted=groups.evicted)
        if histograms:
            out["histograms"] = {"closed": s.closed.to_json(), "sampled": s.sampled.to_json()}
        return out

    def _path_filter(self, request: web.Request) -> Filter:
        return _filters_of([request.match_info["filter"]])[0]

    def _one(self, f: Filter) -> FilterStats:
        found = self.table.stats([f]).get(f)
        if found is None:
            raise ApiError(404, f"{f} is not in the filter table" + self._held_instead([f]))
        return found

    def _group_counts(self, fs: Sequence[Filter]) -> dict[Filter, GroupSet]:
        """How many groups each filter with a breakdown has (one read of the map)."""
        return self.table.groups([f for f in fs if f.by is not None], top=0)

    def _no_groups_route(self, request: web.Request) -> None:
        """PUT or DELETE of .../groups: the groups are read only (405, as for any route)."""
        if groups_route(request.match_info["filter"]) is not None:
            raise web.HTTPMethodNotAllowed(request.method, ["GET"])

    # -- handlers: everything after the body is read runs without an await --

    async def list_filter_texts(self, request: web.Request) -> web.Response:
        version = self.table.version
        if self._listing is None or self._listing[0] != version:
            body = json.dumps([str(f) for f in self.table.filters()], separators=(", ", ": ")).encode()
            self._listing = (version, body)
        return web.Response(body=self._listing[1], content_type="application/json")

    async def add_filters(self, request: web.Request) -> web.Response:
        self._add(await self._body_filters(request))
        return web.Response(status=204)

    async def remove_filters(self, request: web.Request) -> web.Response:
        self._remove(await self._body_filters(request))
        return web.Response(status=204)

    async def list_filters(self, request: web.Request) -> web.Response:
        fs = self.table.filters()
        stats = self.table.stats(fs)
        counts = self._group_counts(fs)
        entries = [self._entry(f, stats.get(f, FilterStats.empty()), groups=counts.get(f)) for f in fs]
        source = None if self.hooks.filters_file is None else _file_status(self.hooks.filters_file())
        return web.json_response({"filters": entries, "count": len(entries), "max_entries": self.table.max_entries,
                                  "filters_file": source})

    async def get_filter(self, request: web.Request) -> web.Response:
        grouped = groups_route(request.match_info["filter"])
        if grouped is not None:
            return self._groups(_filters_of([grouped])[0], request)
        f = self._path_filter(request)
        return web.json_response(self._entry(f, self._one(f), histograms=True,
                                             groups=self._group_counts([f]).get(f)))

    def _groups(self, f: Filter, request: web.Request) -> web.Response:
        """GET /filters/{filter}/groups: the top groups, ordered as asked."""
        top, sort, which = groups_query(request.query)
        if f.by is None:
            raise ApiError(404, f"{f} has no `by` clause, so no groups (e.g. {f.with_by(F.By(F.ByKind.RADDR))})")
        self._one(f)  # 404 when it is not held
        found = self.table.groups([f]).get(f)
        assert found is not None
        path = self.hooks.cgroup_path or G.no_paths
        by = f.by
        chosen = G.ordered(found.groups, sort, which, lambda k: k.text(by, path))[:top]
        return web.json_response({
            "filter": str(f), "by": str(by), "groups_total": found.live, "evicted": found.evicted,
            "max_groups": found.max_groups, "top": top, "sort": sort, "histogram": which,
            "estimator": G.ESTIMATOR, "restarts": G.RESTARTS,
            "groups": [G.group_json(g, by, self.hooks.mono_to_wall, path, _iso) for g in chosen]})

    async def put_filter(self, request: web.Request) -> web.Response:
        self._no_groups_route(request)
        f = self._path_filter(request)
        created = bool(self._add([f]))
        body = self._entry(f, self._one(f), groups=self._group_counts([f]).get(f))
        if not created:
            return web.json_response(body, status=200)
        # Built by hand: yarl would escape the first ":" of an IPv6 address.
        location = "/filters/" + quote(str(f), safe=":/")
        return web.json_response(body, status=201, headers={"Location": location})

    async def delete_filter(self, request: web.Request) -> web.Response:
        self._no_groups_route(request)
        self._remove([self._path_filter(request)])
        return web.Response(status=204)

    async def histograms(self, request: web.Request) -> web.Response:
        fs = self.table.filters()
        stats = self.table.stats(fs)
        return web.json_response({"filters": [
            {"filter": str(f), "closed": s.closed.to_json(), "sampled": s.sampled.to_json()}
            for f in fs if (s := stats.get(f)) is not None]})

    async def prometheus(self, request: web.Request) -> web.Response:
        if self.hooks.metrics is None:
            raise ApiError(404, "no metrics in this agent")
        with gc_held_off():
            body = metrics.body(self.hooks.metrics())
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    async def get_sampling(self, request: web.Request) -> web.Response:
        if self.hooks.sampling is None:
            raise ApiError(404, "live sampling is not available in this agent")
        return web.json_response(self.hooks.sampling())

    async def put_sampling(self, request: web.Request) -> web.Response:
        if self.hooks.set_sampling is None:
            raise ApiError(404, "live sampling is not available in this agent")
        on = parse_switch(await self._read_body(request), request.content_type)
        try:
            return web.json_response(self.hooks.set_sampling(on))
        except TtcpError as e:
            raise ApiError(503, f"cannot switch live sampling {'on' if on else 'off'}: {e}") from None

    async def stream_events(self, request: web.Request) -> web.StreamResponse:
        hub = self.hooks.events
        if hub is None:
            raise ApiError(404, "no event stream in this agent")
        client = hub.subscribe()
        if client is None:
            raise ApiError(503, f"too many GET /events clients (at most {hub.max_clients}); retry later")
        transport = request.transport
        if transport is not None:
            client.on_drop = transport.abort  # unblocks a write to a client that stopped reading
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                               "Cache-Control": "no-store"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            while True:
                await client.wakeup.wait()
                lines = client.take()
                if lines:
                    await response.write(("\n".join(lines) + "\n").encode())
                if client.overflowed or client.closing:
                    break
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            hub.unsubscribe(client)
        return response

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response(self.hooks.health())

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self.openapi_doc, content_type="application/json")

    # -- errors --

    def _http_error(self, request: web.Request, exc: web.HTTPException) -> web.Response:
        """aiohttp's own refusals (routing, body size) as JSON errors."""
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        if isinstance(exc, web.HTTPMethodNotAllowed):
            if request.path.startswith("/filters/") and groups_route(request.path.removeprefix("/filters/")):
                exc = web.HTTPMethodNotAllowed(request.method, ["GET"])  # a filter's groups: read only
                headers = {"Allow": "GET"}
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
            if request.transport is None or request.transport.is_closing():
                # The client went away (or a limit closed it) while its body was awaited:
                # nobody to answer, nothing to report. aiohttp drops this answer quietly.
                return web.Response(status=204)
            log.exception("internal error handling %s %s", request.method, request.path)
            return _error(500, "internal server error (details on ttcp's stderr)")

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self.list_filter_texts, allow_head=False)
        router.add_put("/", self.add_filters)
        router.add_delete("/", self.remove_filters)
        router.add_get("/filters", self.list_filters, allow_head=False)
        router.add_put("/filters", self.add_filters)
        router.add_delete("/filters", self.remove_filters)
        # Any characters, newlines too, so "10.0.0.0/8" (one path segment or two) and any
        # decoded text reach the parser: a 400 naming the part, never a routing 404.
        router.add_get(FILTER_PATH, self.get_filter, allow_head=False)
        router.add_put(FILTER_PATH, self.put_filter)
        router.add_delete(FILTER_PATH, self.delete_filter)
        router.add_get("/histograms", self.histograms, allow_head=False)
        router.add_get("/metrics", self.prometheus, allow_head=False)
        router.add_get("/sampling", self.get_sampling, allow_head=False)
        router.add_put("/sampling", self.put_sampling)
        router.add_get("/events", self.stream_events, allow_head=False)
        router.add_get("/healthz", self.healthz, allow_head=False)
        router.add_get("/openapi.json", self.openapi, allow_head=False)


def _file_status(s: FileStatus) -> dict[str, Any]:
    error = None if s.error is None else {"line": s.error.line, "message": s.error.message, "at": _iso(s.error.at)}
    return {"path": s.path, "version": s.version, "applied_at": None if s.applied_at is None else _iso(s.applied_at),
            "filters": s.filters, "error": error}


def parse_switch(body: bytes, content_type: str) -> bool:
    """`on`/`off` (also true/false, 1/0, yes/no), or JSON {"enabled": bool}."""
    text = _decode(body)
    word = text.strip().lower()
    if content_type in _JSON_TYPES:
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
            doc = None
        if isinstance(doc, dict) and set(doc) == {"enabled"} and isinstance(doc["enabled"], bool):
            return bool(doc["enabled"])
        raise ApiError(400, 'JSON body must be {"enabled": true} or {"enabled": false}')
    if word in _ON:
        return True
    if word in _OFF:
        return False
    shown = word if len(word) <= 32 else word[:32] + "..."
    raise ApiError(400, f"expected on or off, got {shown!r}")


# ---- application lifecycle ----------------------------------------------------------


def create_app(table: FilterTable, hooks: ApiHooks, *, max_body: int = MAX_BODY, token: Token | None = None,
               allowed_hosts: Iterable[str] = ()) -> web.Application:
    """The API application over `table`: requests must name it in Host (an IP
    address, localhost or one of `allowed_hosts`) and, given a token, carry it."""
    api = _Api(table, hooks, max_body, token=token is not None)
    middlewares = [track, api.errors, check_host(allowed_hosts)] + (
        [bearer_auth(token)] if token is not None else [])
    app = web.Application(middlewares=middlewares, client_max_size=max_body)
    api.add_routes(app.router)
    if hooks.events is not None:
        hub = hooks.events

        async def end_streams(app: web.Application) -> None:
            hub.close()

        app.on_shutdown.append(end_streams)
    return app


class _AiohttpReports(logging.Filter):
    """aiohttp's own server log. A request it could not parse is the client's
    affair (it got a 400 saying why), and its bytes may hold a token: dropped.
    Anything else is kept as one line, without the request's bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            return False
        if exc is not None:
            record.msg, record.args = f"{record.getMessage()}: {type(exc).__name__}", ()
            record.exc_info, record.exc_text = None, None
        return True


_http_log = logging.getLogger("ttcp.http")
_http_log.addFilter(_AiohttpReports())


async def start(app: web.Application, host: str, port: int, sockets: Sequence[socket.socket] = (),
                connections: Connections[Any] | None = None) -> web.AppRunner:
    """Serve on `sockets` (already listening), or listen on host:port; a bind
    failure becomes a one-line BindError. Every connection goes through
    `connections` (by default a table with the default limits).

    No access log: stdout belongs to the event stream. Handlers finish in
    microseconds, so a short shutdown timeout only cuts off slow clients
    (e.g. one still sending a refused body) instead of delaying exit by 60 s.
    """
    table = connections if connections is not None else Connections(Limits())
    handler_args: dict[str, Any] = {"access_log": None, "logger": _http_log,
                                    "keepalive_timeout": table.limits.keepalive_timeout_s}
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0, **handler_args)
    await runner.setup()
    gates = pool(runner, table, handler_args)
    try:
        sites = [GatedSite(runner, gates, sock=sock) for sock in sockets]
        for site in sites or [GatedSite(runner, gates, host=host, port=port)]:
            await site.start()
    except (OSError, UnicodeError) as e:  # UnicodeError: a host IDNA cannot encode
        await runner.cleanup()
        raise BindError.of(host, port, e) from None
    return runner


async def stop(runner: web.AppRunner) -> None:
    """Stop accepting, let in-flight requests finish (bounded), close connections."""
    await runner.cleanup()
