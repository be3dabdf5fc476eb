"""Follow a Docker engine over its unix socket: list, then the /events stream (I/O).

`DockerClient`: aiohttp over a UnixConnector (no new dependency), every call
bounded by a timeout, the API version negotiated (Docker 29 refuses old ones).
`DockerWatcher`: reports every container's state to `emit` as runtime changes
(Seen, Gone), for ever: it reconnects with backoff and lists again on every
reconnect (the events stream is lossy: dockerd drops events for a slow
subscriber, and `since` replays only 256). A failing engine costs one line on
`log` per change of reason; events keep flowing meanwhile, with ids only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Self

import aiohttp

from ttcp.workloads.docker import (
    EVENT_FILTERS,
    MAX_BODY,
    ApiVersion,
    DockerError,
    DockerEvent,
    DockerGarbage,
    LineSplitter,
    _json,
    _str,
    negotiate,
    parse_event,
    parse_inspect,
    parse_list,
    parse_version,
    since_param,
)
from ttcp.workloads.runtime import Change, Container, Gone, Lost, Relisted, Seen

DEFAULT_SOCKET = "/var/run/docker.sock"
MAX_SLOW = 1024  # containers whose failing inspects are counted; bugs logged once each



@dataclass(frozen=True)
class Timeouts:
    connect: float = 1.0  # the unix socket's connect()
    request: float = 3.0  # a whole ping/list answer
    inspect: float = 10.0  # one inspect: dockerd holds the container's lock while starting it,
    # so under load (200 parallel `docker run` here) an inspect can take seconds; a slow one
    # is retried, it does not end the session (the ping decides whether the engine is alive)
    headers: float = 3.0  # the events stream's status line and headers
    ping_every: float = 5.0  # liveness of an idle events stream (Docker sends no keepalive)
    healthy_after: float = 5.0  # a session this old ends an episode of failures (log, backoff)


class DockerClient:
    """Two aiohttp sessions on the engine's unix socket: one for the events stream, the
    ping and the listing, one for inspects. Inspects can hang for seconds (dockerd holds
    a starting container's lock); in a shared pool they would make the ping wait for a
    connection and a live engine look hung."""

    def __init__(self, socket_path: str, timeouts: Timeouts = Timeouts(), lookups: int = 4) -> None:
        self.socket_path = socket_path
        self.t = timeouts
        self.lookups = lookups  # inspects at once (DockerWatcher's workers)
        self.version: ApiVersion | None = None
        self._session: aiohttp.ClientSession | None = None
        self._lookup_session: aiohttp.ClientSession | None = None

    def _new_session(self, limit: int) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self.socket_path, limit=limit), base_url="http://docker",
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.t.connect))

    async def __aenter__(self) -> Self:
        # the stream, a ping and a relisting's list at once: 3 never wait for each other
        self._session = self._new_session(limit=3)
        self._lookup_session = self._new_session(limit=self.lookups)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in (self._session, self._lookup_session):
            if session is not None:
                await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with DockerClient(...)`"
        return self._session

    def _path(self, path: str) -> str:
        return f"/v{self.version}{path}" if self.version else path

    async def _get(self, path: str, what: str, timeout: float | None = None,
                   session: aiohttp.ClientSession | None = None) -> tuple[int, bytes, Mapping[str, str]]:
        timeout = timeout or self.t.request
        try:
            async with asyncio.timeout(timeout):
                async with (session or self.session).get(path) as r:
                    body = bytearray()
                    async for chunk in r.content.iter_any():
                        body += chunk
                        if len(body) > MAX_BODY:
                            raise DockerGarbage(f"{what}: answer larger than {MAX_BODY} bytes")
                    return r.status, bytes(body), r.headers
        except TimeoutError:
            raise DockerError(f"{what}: no answer within {timeout} s") from None
        except aiohttp.ClientResponseError as e:  # not HTTP at all (garbage on the socket)
            raise DockerGarbage(f"{what}: {e.message[:120]}") from None
        except (aiohttp.ClientError, OSError) as e:
            raise DockerError(f"{what}: {e.__class__.__name__}: {str(e)[:160]}") from None

    async def negotiate(self) -> ApiVersion:
        """GET /_ping's Api-Version header (unversioned, cheap); /version if it has none."""
        status, _, headers = await self._get("/_ping", "_ping")
        if status != 200:
            raise DockerError(f"_ping: HTTP {status}")
        server_min = None
        if "Api-Version" in headers:
            server = parse_version(headers["Api-Version"])
        else:
            status, body, _ = await self._get("/version", "version")
            v = _json(body, "version")
            if status != 200 or not isinstance(v, dict):
                raise DockerGarbage(f"version: HTTP {status}")
            server = parse_version(_str(v, "ApiVersion", "version"))
            if isinstance(v.get("MinAPIVersion"), str):
                server_min = parse_version(v["MinAPIVersion"])
        self.version = negotiate(server, server_min)
        return self.version

    async def ping(self) -> None:
        status, _, _ = await self._get("/_ping", "_ping")
        if status != 200:
            raise DockerError(f"_ping: HTTP {status}")

    async def list_ids(self) -> list[str]:
        status, body, _ = await self._get(self._path("/containers/json?all=true"), "containers/json")
        if status != 200:
            raise DockerError(f"containers/json: HTTP {status}")
        return parse_list(body)

    async def inspect(self, ident: str) -> Container | None:
        """None when the container is gone (404): it was removed after the event."""
        path = self._path(f"/containers/{urllib.parse.quote(ident, safe='')}/json")
        assert self._lookup_session is not None, "use `async with DockerClient(...)`"
        status, body, _ = await self._get(path, "containers/{id}/json", self.t.inspect, self._lookup_session)
        if status == 404:
            return None
        if status != 200:
            raise DockerError(f"containers/{{id}}/json: HTTP {status}")
        return parse_inspect(body)

    @contextlib.asynccontextmanager
    async def events(self, since: int | None = None) -> AsyncIterator[AsyncIterator[DockerEvent | None]]:
        """Open GET /events (headers within Timeouts.headers); yields an iterator of events,
        None standing for an event too large to read."""
        q = {"filters": json.dumps(EVENT_FILTERS)}
        if since is not None:
            q["since"] = since_param(since)
        path = self._path("/events?" + urllib.parse.urlencode(q))
        try:
            async with asyncio.timeout(self.t.headers):
                resp = await self.session.get(path)
        except TimeoutError:
            raise DockerError(f"events: no headers within {self.t.headers} s") from None
        except aiohttp.ClientResponseError as e:
            raise DockerGarbage(f"events: {e.message[:120]}") from None
        except (aiohttp.ClientError, OSError) as e:
            raise DockerError(f"events: {e.__class__.__name__}: {str(e)[:160]}") from None
        try:
            if resp.status != 200:
                raise DockerError(f"events: HTTP {resp.status}")

            async def lines() -> AsyncIterator[DockerEvent | None]:
                split = LineSplitter()
                try:
                    async for chunk in resp.content.iter_any():
                        skipped = split.skipped
                        for line in split.feed(chunk):
                            ev = parse_event(line)
                            if ev is not None:
                                yield ev
                        if split.skipped != skipped:
                            yield None  # an oversized event: the caller resyncs
                except (aiohttp.ClientError, OSError) as e:
                    raise DockerError(f"events: stream broken: {e.__class__.__name__}") from None
                raise DockerError("events: the engine closed the stream")

            yield lines()
        finally:
            resp.release()
            resp.close()


# ---- I/O: follow an engine forever -------------------------------------------------------------------

Emit = Callable[[list[Change]], None]
Log = Callable[[str], None]


@dataclass
class Backoff:
    first: float = 0.2
    cap: float = 30.0
    current: float = 0.0

    def next(self) -> float:
        self.current = self.first if self.current == 0 else min(self.cap, self.current * 2)
        return self.current * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.current = 0.0


class DockerWatcher:
    """Keeps `emit` told of every container's current state (Seen) and removals (Gone).

    Each (re)connect opens /events first, then lists: nothing that happens during the
    listing is missed. The stream is read without waiting on anything else, because
    dockerd drops an event for a subscriber that has not taken it within 100 ms once
    its 1024-event buffer is full (moby pubsub); ids are coalesced into `_dirty`
    (bounded by the number of containers) and `workers` tasks inspect them, one
    inspect per id at a time so an old answer never overtakes a new one. An idle
    stream is indistinguishable from a hung engine, so a /_ping every `ping_every`
    s decides liveness. Failures cost one line on `log` per change of reason.
    """

    def __init__(self, socket_path: str, emit: Emit, log: Log,
                 timeouts: Timeouts = Timeouts(), workers: int = 4) -> None:
        self.socket_path, self.emit, self.log = socket_path, emit, log
        self.t = timeouts
        self.workers = workers
        self.known: set[str] = set()
        self.last_event: tuple[int, str, str] | None = None  # (timeNano, id, action) for `since`
        self.backoff = Backoff()
        self.connected = asyncio.Event()
        self.idle = asyncio.Event()  # nothing dirty, nothing in flight (tests wait on it)
        self._last_problem = ""
        self._dirty: dict[str, bool] = {}  # id -> removed; insertion order = arrival order
        self._inflight: set[str] = set()
        self._wake = asyncio.Event()
        self._unreadable: set[str] = set()  # ids whose inspect is garbage: logged once, skipped
        self._relisting = False
        self._slow: set[str] = set()  # ids whose last inspect timed out or failed (retried)
        self._slow_reason = ""  # the reason logged for this episode of failing inspects
        self._bugs: set[str] = set()  # unexpected exceptions logged (once each)
        self._in_sight = True  # since the last listing (nothing known before the first)
        self.stats = {"connects": 0, "failures": 0, "events": 0, "inspects": 0, "slow": 0,
                      "oversized": 0, "unreadable": 0}

    async def run(self) -> None:
        while True:
            try:
                await self._session()
            except DockerError as e:
                self._failed(str(e))
            except Exception as e:  # noqa: BLE001 -- a bug (here or in `emit`): one line, then a new session
                self._failed(f"unexpected {e.__class__.__name__}: {str(e)[:160]}")
            await asyncio.sleep(self.backoff.next())

    def _failed(self, reason: str) -> None:
        self.stats["failures"] += 1
        if self._in_sight:
            self._in_sight = False
            self._emit([Lost("docker")])  # out of sight: no names by namespace until relisted
        self.connected.clear()
        if reason != self._last_problem:
            self.log(f"docker {self.socket_path}: {reason}; names from Docker paused, retrying")
            self._last_problem = reason

    def health(self) -> dict[str, object]:
        """What GET /healthz shows: followed or not, why not, and lookups failing now."""
        return {"connected": self.connected.is_set(), "problem": self._last_problem or None,
                "lookups_failing": len(self._slow), "lookups_problem": self._slow_reason or None}

    def _mark(self, ident: str, removed: bool = False) -> None:
        self._dirty[ident] = removed or self._dirty.get(ident, False)
        self.idle.clear()
        self._wake.set()

    async def _session(self) -> None:
        async with DockerClient(self.socket_path, self.t, lookups=self.workers) as client:
            version = await client.negotiate()
            since = self.last_event[0] if self.last_event else None
            async with client.events(since) as stream:
                self.stats["connects"] += 1
                await self._relist(client)
                self.connected.set()
                # An engine that accepts and then fails at once (garbage after a good start)
                # stays one episode: no "reconnected" line, the backoff keeps growing.
                healthy = asyncio.get_running_loop().call_later(
                    self.t.healthy_after, self._healthy, f"reconnected (API {version})")
                watch = [asyncio.create_task(self._read(client, stream)),
                         asyncio.create_task(self._pinger(client))]
                workers = [asyncio.create_task(self._worker(client)) for _ in range(self.workers)]
                try:  # a worker ends only by a bug: that ends the session too, not in silence
                    done, _ = await asyncio.wait(watch + workers, return_when=asyncio.FIRST_COMPLETED)
                    for t in done:
                        t.result()  # the DockerError that ends the session
                    raise DockerError("events: stream ended")
                finally:
                    healthy.cancel()
                    for t in watch + workers:
                        t.cancel()
                    await asyncio.gather(*watch, *workers, return_exceptions=True)
                    self._inflight.clear()

    def _healthy(self, text: str) -> None:
        if self._last_problem:
            self.log(f"docker {self.socket_path}: {text}")
        self._last_problem = ""
        self.backoff.reset()

    async def _relist(self, client: DockerClient) -> None:
        """Every listed id to inspect, every known id not listed gone."""
        self._relisting = True
        try:
            ids = set(await client.list_ids())
        finally:
            self._relisting = False
        self._emit([Relisted("docker", frozenset(ids))])  # in sight again; what is not listed is gone
        self._in_sight = True
        for gone in self.known - ids:
            self._mark(gone, removed=True)
        for ident in ids:
            self._mark(ident)
        if not self._dirty and not self._inflight:
            self.idle.set()

    async def _read(self, client: DockerClient, stream: AsyncIterator[DockerEvent | None]) -> None:
        async for ev in stream:
            if ev is None:
                self.stats["oversized"] += 1
                if not self._relisting:
                    await self._relist(client)
                continue
            key = (ev.time_nano, ev.id, ev.action)
            if self.last_event is not None and (ev.time_nano < self.last_event[0] or key == self.last_event):
                continue  # replayed by an inclusive `since`
            self.last_event = key
            self.stats["events"] += 1
            self._mark(ev.id, removed=ev.action == "destroy")

    def _take(self) -> tuple[str, bool] | None:
        for ident, removed in self._dirty.items():
            if ident not in self._inflight:
                del self._dirty[ident]
                self._inflight.add(ident)
                return ident, removed
        return None

    async def _worker(self, client: DockerClient) -> None:
        while True:
            job = self._take()
            if job is None:
                if not self._dirty and not self._inflight:
                    self.idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            ident, removed = job
            try:
                c = None if removed else await self._inspect(client, ident)
                if c is not _SLOW:
                    self._answered(ident)
                if c is None:
                    if ident in self.known:
                        self.known.discard(ident)
                        self._emit([Gone("docker", ident, removed=True)])
                elif isinstance(c, Container):
                    self.known.add(c.id)
                    self._emit([Seen(c)])
            finally:
                self._inflight.discard(ident)
                self._wake.set()

    async def _inspect(self, client: DockerClient, ident: str) -> Container | object | None:
        """One container; its own garbage (a huge label, a malformed field) costs only it,
        and a slow answer is asked again a second later."""
        self.stats["inspects"] += 1
        try:
            return await client.inspect(ident)
        except DockerGarbage as e:
            self.stats["unreadable"] += 1
            if ident not in self._unreadable and len(self._unreadable) < 1024:
                self._unreadable.add(ident)
                self.log(f"docker {self.socket_path}: container {ident[:12]} unreadable ({e}); it has no name")
            return None
        except DockerError as e:
            self.stats["slow"] += 1
            self._slow_inspect(ident, str(e))
            asyncio.get_running_loop().call_later(1.0, self._mark, ident)
            return _SLOW

    def _slow_inspect(self, ident: str, reason: str) -> None:
        """One line per episode of failing inspects (and per change of its reason)."""
        if len(self._slow) < MAX_SLOW:
            self._slow.add(ident)
        if reason != self._slow_reason:
            self._slow_reason = reason
            self.log(f"docker {self.socket_path}: inspects failing ({reason}); "
                     "those containers keep their last state, retried every 1 s")

    def _answered(self, ident: str) -> None:
        self._slow.discard(ident)
        if not self._slow and self._slow_reason:
            self._slow_reason = ""  # the episode is over: the next failure is a new one

    def _emit(self, changes: list[Change]) -> None:
        """`emit`, whose bugs cost one line each and not the worker."""
        try:
            self.emit(changes)
        except Exception as e:  # noqa: BLE001 -- a bug must not end the worker
            text = f"{e.__class__.__name__}: {str(e)[:160]}"
            if text not in self._bugs and len(self._bugs) < MAX_SLOW:
                self._bugs.add(text)
                self.log(f"docker {self.socket_path}: following a change failed: {text}")

    async def _pinger(self, client: DockerClient) -> None:
        while True:
            await asyncio.sleep(self.t.ping_every)
            await client.ping()


_SLOW = object()  # an inspect that timed out: retried, the container keeps its last state
