"""Each API connection through the limits of ttcp.api.limits: the asyncio side.

aiohttp bounds neither the number of connections nor the time a client may take
to send a request: its keep-alive timeout closes a connection only while no
request head is complete, and a handler awaiting a body waits for ever. So every
accepted connection gets a `Gate`, an asyncio protocol in front of aiohttp's own
RequestHandler, which
- asks the connection table (`Connections`) whether to admit it, evicting or
  refusing as it answers: 503 with a JSON error and `Connection: close`;
- arms the request deadline whenever the connection enters RECEIVING: 408 and close;
- forwards everything else to aiohttp untouched.
The `track` middleware (the outermost) tells the Gate when a request's head is
parsed, when its body is complete and when its handler is done. aiohttp's own
answers to unparsable HTTP (400) become JSON errors too (`_Handler`).

Everything here is public aiohttp API: a BaseSite that serves a protocol factory,
RequestHandler built with the runner's Server as its manager, handle_error.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ttcp.api.limits import Admission, Connections, Limits, State

# asyncio's create_server(backlog=) is both the listen queue and how many connections it
# accepts per loop iteration. The queue must be deep: with 128, a burst of 3,000 connects
# overflowed it (SYNs dropped, every client retried after 1 s, fresh ones too). The batch
# must be short: a newcomer needs a few iterations before its request is parsed, and a
# flood of reconnecting half-requests makes it the oldest (the next to give way) after cap
# / batch iterations (with 128, the bench's flood evicted real clients; with 16, none);
# and connections accepted or closed in one iteration hold descriptors beyond the cap until
# the next. So the batch is set through create_server and the queue deepened afterwards.
ACCEPT_BATCH = 16
LISTEN_BACKLOG = 1024
REFUSAL_LINGER_S = 1.0  # the most a refused connection stays open, discarding what it sends
_SHOWN = 200  # characters of aiohttp's parse error quoted back to the client


def canned(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP response with a JSON error, for a connection aiohttp is not answering."""
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class _Handler(web.RequestHandler):
    """aiohttp's connection handler, linked to its Gate, with its own 400s as JSON errors."""

    __slots__ = ("gate",)
    gate: Gate

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status != 400:  # not reached: ttcp's errors middleware answers every handler failure
            return super().handle_error(request, status, exc, message)
        # An HTTP message aiohttp could not parse: the client's affair, not logged (its bytes
        # may hold a token); the message names the offending part, to that client only.
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already under way")
        text = message or "unparsable request"
        text = text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
        response = web.json_response({"error": f"malformed HTTP request: {text}"}, status=400)
        response.force_close()
        return response


class Pool:
    """The protocol factory of one API: a Gate per accepted connection."""

    def __init__(self, connections: Connections[Gate], handler: Callable[[], _Handler]) -> None:
        self.connections = connections
        self.limits: Limits = connections.limits
        self.make_handler = handler
        self.loop = asyncio.get_running_loop()
        self.refused: set[Gate] = set()
        cap, deadline = self.limits.max_connections, self.limits.request_timeout_s
        self.refuse = canned(503, "Service Unavailable", f"too many API connections (at most {cap}, all "
                             "busy); retry later")
        self.evict = canned(503, "Service Unavailable", f"the API is at its limit of {cap} connections and "
                            "this one had not sent its whole request: closed to admit a newer one; retry")
        self.late = canned(408, "Request Timeout", f"request not received within {deadline:g} s")

    def __call__(self) -> Gate:
        return Gate(self)

    def close_refused(self) -> None:
        for gate in list(self.refused):
            gate.close()


class Gate(asyncio.Protocol):
    """One connection: the table's decisions carried out, aiohttp's handler fed."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.handler: _Handler | None = None
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.in_handler = False  # a request's handler runs
        self.answered = False  # the current request's handler is done: its answer is aiohttp's

    # -- asyncio --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        admission: Admission[Gate] = self.pool.connections.admit(self)
        if admission.evict is not None:
            admission.evict.shut(self.pool.evict)
        if not admission.admitted:
            self._refuse(transport, admission.linger)
            return
        self.handler = handler = self.pool.make_handler()
        handler.gate = self
        handler.connection_made(transport)
        self._arm()

    def _refuse(self, transport: asyncio.Transport, linger: bool) -> None:
        """Answer 503 and close. Closing with the request unread would send a reset that can
        overtake the answer, so half-close and discard what comes until EOF or a second."""
        transport.write(self.pool.refuse)
        if not linger or not transport.can_write_eof():
            transport.close()
            return
        self.pool.refused.add(self)
        transport.write_eof()
        self.timer = self.pool.loop.call_later(REFUSAL_LINGER_S, self.close)

    def data_received(self, data: bytes) -> None:
        if self.handler is None:
            return  # refused: discarded
        if self.pool.connections.state(self) is State.IDLE:
            self.answered = False  # the first bytes of a new request
            self._enter(State.RECEIVING)
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        if self.handler is None:
            return False  # refused, and the client has read the 503: close
        self.handler.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.handler is None:
            if self in self.pool.refused:
                self.pool.refused.discard(self)
                self.pool.connections.refusal_gone()
            return
        self.pool.connections.gone(self)
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    # -- what the middleware reports --

    def request_started(self, body_complete: bool) -> None:
        self.in_handler, self.answered = True, False
        self._enter(State.BUSY if body_complete else State.RECEIVING)

    def body_complete(self) -> None:
        self._enter(State.BUSY if self.in_handler else State.IDLE)

    def request_done(self, body_complete: bool) -> None:
        """The handler returned; aiohttp writes its answer. A body it did not read keeps
        the connection RECEIVING, under the deadline, until aiohttp has discarded it."""
        self.in_handler, self.answered = False, True
        if body_complete:
            self._enter(State.IDLE)

    # -- the limits --

    def _enter(self, state: State) -> None:
        self.pool.connections.enter(self, state)
        if state is State.RECEIVING:
            self._arm()
        else:
            self._disarm()

    def _arm(self) -> None:
        if self.timer is None:
            self.timer = self.pool.loop.call_later(self.pool.limits.request_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self) -> None:
        self.timer = None
        if self.pool.connections.state(self) is State.RECEIVING:
            self.pool.connections.closing(self, "deadline")
            self.shut(self.pool.late)

    def shut(self, answer: bytes) -> None:
        """Close for a limit, with `answer` when a request is half in and nothing answered it."""
        self._disarm()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not self.answered and self.pool.connections.state(self) is not State.IDLE:
            transport.write(answer)
        transport.close()

    def close(self) -> None:
        self._disarm()
        if self.transport is not None:
            self.transport.close()


@web.middleware
async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The outermost middleware: tells the request's Gate (if it came through one) where the
    request stands."""
    gate = getattr(request.protocol, "gate", None)
    if not isinstance(gate, Gate):
        return await handler(request)
    body = request.content
    gate.request_started(body.is_eof())
    if not body.is_eof():
        body.on_eof(gate.body_complete)
    try:
        return await handler(request)
    finally:
        gate.request_done(body.is_eof())


class GatedSite(web.BaseSite):
    """A site whose connections go through a Pool: a listening socket, or host and port."""

    __slots__ = ("_host", "_pool", "_port", "_sock")

    def __init__(self, runner: web.BaseRunner, pool: Pool, *, sock: socket.socket | None = None,
                 host: str = "", port: int = 0) -> None:
        super().__init__(runner, backlog=ACCEPT_BATCH)
        self._pool, self._sock, self._host, self._port = pool, sock, host, port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}" if self._sock is None else f"http socket {self._sock!r}"

    async def start(self) -> None:
        await super().start()  # registers the site with the runner
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            server = await loop.create_server(self._pool, sock=self._sock, backlog=self._backlog)
        else:
            server = await loop.create_server(self._pool, self._host or None, self._port, backlog=self._backlog)
        self._server = server
        for sock in server.sockets:
            with socket.fromfd(sock.fileno(), sock.family, sock.type) as same:  # the same socket, dup'ed fd
                same.listen(LISTEN_BACKLOG)

    async def stop(self) -> None:
        await super().stop()
        self._pool.close_refused()


def pool(runner: web.BaseRunner, connections: Connections[Gate], handler_args: dict[str, Any]) -> Pool:
    """The Pool for a set-up runner: its handlers are aiohttp's, built as the runner would
    build them (with `handler_args`), with the runner's Server as their manager."""
    server = runner.server
    assert server is not None, "runner.setup() first"
    loop = asyncio.get_running_loop()
    return Pool(connections, lambda: _Handler(server, loop=loop, **handler_args))
