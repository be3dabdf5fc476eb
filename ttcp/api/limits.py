"""How many API connections ttcp keeps, and which one gives way (pure: no sockets, no clock).

Any client that reaches the port can open connections, token or not, so their
number is capped (`--max-connections`) and a request must arrive whole within a
deadline (`--request-timeout`, enforced by ttcp.api.connections). Each open
connection is in one of three states:

- RECEIVING: from its opening, or from the first byte of a request, until that
  request's headers and body are in. Under the deadline; evictable.
- BUSY: a whole request is in and its handler runs (or streams GET /events).
  Neither timed nor evictable.
- IDLE: between requests (aiohttp's keep-alive timeout closes it); evictable.

At the cap, a new connection evicts the RECEIVING connection that has waited
longest for the rest of its request, so a flood of half-sent requests can never
lock a fresh client out, and a client between two requests is spared while there
is such a one. Only without any does the IDLE connection that has waited longest
give way (else idle connections could hold the cap until the keep-alive timeout),
and only when every connection is BUSY is the new one refused. GET /events streams are BUSY for as long as they
last, so at most half the connections may be streams (`Limits.stream_clients`).

The wrapper tells this table what happens (`admit`, `enter`, `closing`, `gone`)
and does what it answers; every refusal is counted by reason.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, NamedTuple, TypeVar

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_REQUEST_TIMEOUT_S = 10.0
DEFAULT_KEEPALIVE_TIMEOUT_S = 75.0
DEFAULT_MAX_STREAM_CLIENTS = 64

# Why a connection was refused or closed by a limit (the `reason` label of
# ttcp_api_connections_rejected_total, beside "streams", which ttcp.api.event_stream
# counts): at the cap with every connection busy; closed to admit a newer one; its
# request not received in time.
REASONS = ("cap", "evicted", "deadline")


class State(Enum):
    RECEIVING = "receiving"
    BUSY = "busy"
    IDLE = "idle"


@dataclass(frozen=True)
class Limits:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S  # to receive a request's headers and body
    keepalive_timeout_s: float = DEFAULT_KEEPALIVE_TIMEOUT_S  # idle between requests
    max_stream_clients: int = DEFAULT_MAX_STREAM_CLIENTS

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_stream_clients < 0:
            raise ValueError(f"bad connection limits: {self}")

    @property
    def stream_clients(self) -> int:
        """GET /events clients allowed at once: never more than half the connections,
        since a stream is BUSY for as long as it lasts and cannot give way."""
        return min(self.max_stream_clients, self.max_connections // 2)


@dataclass
class Counts:
    """What /metrics and /healthz show."""

    open: int = 0  # admitted and not yet gone (closing ones still hold a descriptor)
    peak: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))


K = TypeVar("K", bound=Hashable)


class Admission(NamedTuple, Generic[K]):
    admitted: bool
    evict: K | None = None  # close this one (503 if it has a request half in) to make room
    linger: bool = False  # refused: keep it open briefly so the 503 is read before the close


class Connections(Generic[K]):
    """The open connections of one API, each with its state, the evictable ones oldest first."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.counts = Counts()
        self._state: dict[K, State] = {}
        self._evictable = {State.RECEIVING: OrderedDict[K, None](), State.IDLE: OrderedDict[K, None]()}
        self._closing: set[K] = set()  # closed by a limit, not yet gone: not counted against the cap
        self._lingering = 0  # refused connections still open

    @property
    def active(self) -> int:
        return len(self._state) - len(self._closing)

    def state(self, conn: K) -> State | None:
        """Its state (the last one, once closing); None once gone or never admitted."""
        return self._state.get(conn)

    def admit(self, conn: K) -> Admission[K]:
        """A new connection: admitted (maybe evicting the oldest evictable one), or refused.
        A refused one may linger while fewer than `max_connections` others do (a bound on
        the descriptors refusals hold); beyond that it is closed at once."""
        victim = None
        if self.active >= self.limits.max_connections:
            waiting = self._evictable[State.RECEIVING] or self._evictable[State.IDLE]
            if not waiting:
                self.counts.rejected["cap"] += 1
                linger = self._lingering < self.limits.max_connections
                self._lingering += linger
                return Admission(False, None, linger)
            victim = next(iter(waiting))
            self.closing(victim, "evicted")
        self._state[conn] = State.RECEIVING
        self._evictable[State.RECEIVING][conn] = None
        self.counts.accepted += 1
        self.counts.open = len(self._state)
        self.counts.peak = max(self.counts.peak, self.counts.open)
        return Admission(True, victim)

    def enter(self, conn: K, state: State) -> None:
        """`conn` is now in `state`; ignored once it is closing or gone. Entering an
        evictable state makes it the youngest of that state."""
        if conn not in self._state or conn in self._closing:
            return
        self._forget(conn)
        self._state[conn] = state
        if state is not State.BUSY:
            self._evictable[state][conn] = None

    def closing(self, conn: K, reason: str) -> None:
        """A limit closes `conn` (counted under `reason`); it stops counting against the cap."""
        if conn not in self._state or conn in self._closing:
            return
        self.counts.rejected[reason] += 1
        self._closing.add(conn)
        self._forget(conn)

    def gone(self, conn: K) -> None:
        """The connection is closed, whoever closed it."""
        self._state.pop(conn, None)
        self._forget(conn)
        self._closing.discard(conn)
        self.counts.open = len(self._state)

    def _forget(self, conn: K) -> None:
        for waiting in self._evictable.values():
            waiting.pop(conn, None)

    def refusal_gone(self) -> None:
        """A refused connection that lingered is closed."""
        self._lingering = max(0, self._lingering - 1)
