"""The API under a flood of half-sent requests, while events flow (issue 26).

The real command with a small connection cap and a short request deadline. More
half-requests than the cap are opened (headers cut short, a body cut short, nothing
at all), then: a fresh client's GET /healthz answers within 100 ms, the half-requests
are all closed (evicted at once with 503, or at the deadline with 408), ttcp holds
no more descriptors than before, and throughout, every connection generated is an
event printed on stdout and streamed to a GET /events client, with none dropped and
the kernel's counter agreeing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.support.cli_process import TtcpProcess
from tests.support.kernel import scaled
from tests.support.traffic import Server, connect_once

pytestmark = pytest.mark.kernel
parser = pytest.importorskip("prometheus_client.parser")

SRC, DST = "127.0.26.10", "127.0.26.11"
CAP, DEADLINE_S, HALF_REQUESTS = 64, 2.0, 400
KINDS = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Ag",
         b"PUT / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n127.0",
         b"")


@contextlib.contextmanager
def descriptors(n: int) -> Iterator[None]:
    """This process may open `n` more files (`ulimit -n`, raised for the flood)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 1024)), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Traffic(threading.Thread):
    """Connections from SRC, one after another, until stopped: each one event."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.made = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        with Server(DST) as srv:
            while not self.stopped.is_set():
                connect_once(srv, SRC)
                self.made += 1


class Stream(threading.Thread):
    """A GET /events client, connected before the flood: counts the events from SRC."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=scaled(10))
        self.sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.seen = 0
        self.ended = False

    def run(self) -> None:
        pattern, tail = re.compile(rb'"saddr":"127\.0\.26\.10"'), b""
        with contextlib.suppress(OSError):
            while chunk := self.sock.recv(1 << 16):
                data = tail + chunk
                cut = data.rfind(b"\n") + 1
                self.seen += len(pattern.findall(data[:cut]))
                tail = data[cut:]
        self.ended = True


def fds(t: TtcpProcess) -> int:
    return len(os.listdir(f"/proc/{t.proc.pid}/fd"))


def healthz_ms(port: int) -> float:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=scaled(5)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    return (time.perf_counter() - t0) * 1000


def test_half_requests_over_the_cap_neither_lock_out_clients_nor_leak_nor_cost_events() -> None:
    with descriptors(HALF_REQUESTS), \
            TtcpProcess("--filter", SRC, "--format", "json", "--max-connections", str(CAP),
                        "--request-timeout", str(DEADLINE_S)) as t:
        stream = Stream(t.port)
        stream.start()
        deadline = time.monotonic() + scaled(5)
        while json.loads(t.api("GET", "/healthz")[1])["stream_clients"] < 1:
            assert time.monotonic() < deadline, "the stream client did not subscribe"
        time.sleep(0.2)  # the probe's own connection is gone
        before = fds(t)
        traffic = Traffic()
        traffic.start()
        time.sleep(0.2)

        sel = selectors.DefaultSelector()
        half = []
        opened = time.monotonic()
        for i in range(HALF_REQUESTS):
            s = socket.create_connection(("127.0.0.1", t.port))
            s.sendall(KINDS[i % 3])
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            half.append(s)
        replies = {s: b"" for s in half}
        closed_at: dict[socket.socket, float] = {}

        def read_until(closed: int, seconds: float) -> None:
            end = time.monotonic() + seconds
            while len(closed_at) < closed and time.monotonic() < end:
                for key, _ in sel.select(timeout=0.1):
                    s = key.fileobj
                    assert isinstance(s, socket.socket)
                    try:
                        chunk = s.recv(65536)
                    except ConnectionResetError:
                        chunk = b""
                    replies[s] += chunk
                    if not chunk:
                        closed_at[s] = time.monotonic() - opened
                        sel.unregister(s)

        # Once ttcp has taken them all in (all but the newest CAP were closed at once, each
        # giving way to a newer one), the cap is full of half-requests: a fresh client gets in.
        read_until(HALF_REQUESTS - CAP, scaled(5))
        took = [healthz_ms(t.port) for _ in range(5)]
        assert max(took) < 100, took
        # The rest are closed at the deadline.
        read_until(HALF_REQUESTS, DEADLINE_S + scaled(3))
        assert len(closed_at) == len(half), f"{len(half) - len(closed_at)} half-requests still open"
        assert max(closed_at.values()) < DEADLINE_S + scaled(2)
        answers = Counter(reply.split(b" ", 2)[1] for reply in replies.values())
        assert set(answers) == {b"503", b"408"} and answers[b"408"] < CAP, answers
        for s in half:
            s.close()

        deadline = time.monotonic() + scaled(5)
        while fds(t) != before:
            assert time.monotonic() < deadline, f"ttcp holds {fds(t)} descriptors, {before} before the flood"
            time.sleep(0.05)

        time.sleep(0.3)
        traffic.stopped.set()
        traffic.join()
        printed = t.lines_until_quiet(quiet=1.0, limit=60)
        mine = [line for line in printed if f'"saddr":"{SRC}"' in line]
        health = json.loads(t.api("GET", "/healthz")[1])
        matches = json.loads(t.api("GET", f"/filters/{SRC}")[1])["matches"]
        assert len(mine) == traffic.made == matches and health["dropped"] == 0, (
            len(mine), traffic.made, matches, health)
        deadline = time.monotonic() + scaled(5)
        while stream.seen < traffic.made:
            assert time.monotonic() < deadline and not stream.ended, (stream.seen, traffic.made)
            time.sleep(0.05)
        assert stream.seen == traffic.made
        rejected = health["api_connections_rejected"]
        assert rejected["evicted"] + rejected["deadline"] == HALF_REQUESTS and rejected["cap"] == 0
        assert rejected["evicted"] >= HALF_REQUESTS - CAP and answers == {b"503": rejected["evicted"],
                                                                          b"408": rejected["deadline"]}
        families = {f.name: f for f in parser.text_string_to_metric_families(t.api("GET", "/metrics")[1].decode())}
        assert {s.labels["reason"]: s.value for s in families["ttcp_api_connections_rejected"].samples} == rejected
        assert families["ttcp_api_connections_max"].samples[0].value == health["api_connections_max"] == CAP
        print(f"/healthz ms {[round(x, 1) for x in took]}; answers {dict(answers)}; last closed at "
              f"{max(closed_at.values()):.2f} s; fds {before}; events {traffic.made}; rejected {rejected}")
        stream.sock.close()
        assert t.stop() == 0
    assert "internal error" not in t.stderr and "Traceback" not in t.stderr, t.stderr
