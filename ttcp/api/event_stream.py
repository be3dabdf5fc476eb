"""GET /events: the JSON event lines, fanned out to HTTP clients.

The reader publishes each drained batch once; every client has its own
bounded backlog. A client that falls behind (its backlog full: it stopped
reading, or reads slower than events come) is disconnected and counted:
publishing never waits for a client, so no client slows the reader, stdout
or the other clients, and stdout keeps every event whatever the clients do.
A stream holds its connection for as long as it lasts, so the number of clients
is limited too (ttcp.api.limits.Limits.stream_clients); one more is refused.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

DEFAULT_BACKLOG = 20_000  # lines a client may be behind before it is dropped
UNLIMITED = 1 << 62


class Client:
    """One subscriber: lines waiting for it, and whether it has fallen too far behind."""

    def __init__(self, backlog: int) -> None:
        self.backlog = backlog
        self.lines: deque[str] = deque()
        self.overflowed = False  # fell behind: to be disconnected
        self.closing = False  # ttcp is stopping
        self.wakeup = asyncio.Event()
        self.on_drop: Callable[[], None] | None = None  # cuts the connection (the handler may be
        # stuck writing to a client that stopped reading)

    def offer(self, lines: list[str]) -> bool:
        """Queue a batch; False (and marked overflowed) when it does not fit."""
        if self.overflowed or len(self.lines) + len(lines) > self.backlog:
            self.overflowed = True
            self.wakeup.set()
            return False
        self.lines.extend(lines)
        self.wakeup.set()
        return True

    def take(self) -> list[str]:
        out = list(self.lines)
        self.lines.clear()
        self.wakeup.clear()
        return out


class EventHub:
    def __init__(self, backlog: int = DEFAULT_BACKLOG, max_clients: int = UNLIMITED) -> None:
        self.backlog = backlog
        self.max_clients = max_clients
        self.clients: set[Client] = set()
        self.dropped_clients = 0
        self.served_clients = 0
        self.refused_clients = 0  # over max_clients

    @property
    def wanted(self) -> bool:
        """Whether anyone listens: the reader formats JSON for the hub only then."""
        return bool(self.clients)

    def subscribe(self) -> Client | None:
        """A new client, or None (counted) when `max_clients` are already served."""
        if len(self.clients) >= self.max_clients:
            self.refused_clients += 1
            return None
        client = Client(self.backlog)
        self.clients.add(client)
        self.served_clients += 1
        return client

    def unsubscribe(self, client: Client) -> None:
        self.clients.discard(client)

    def publish(self, lines: list[str]) -> None:
        """Give a batch to every client; the ones that cannot take it are dropped."""
        for client in list(self.clients):
            if not client.offer(lines):
                self.clients.discard(client)
                self.dropped_clients += 1
                if client.on_drop is not None:
                    client.on_drop()

    def close(self) -> None:
        """Wake every client so its handler ends (at shutdown)."""
        for client in self.clients:
            client.closing = True
            client.wakeup.set()
