"""A container runtime that is absent, hangs or answers garbage costs one line on stderr,
and never blocks or drops events: they go out with ids only (issue 23). The real
ttcp command, the real kernel, fake Docker engines on unix sockets (threads of
this test, removed with it)."""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.cli_process import TtcpProcess
from tests.support.traffic import Server, connect_many

pytestmark = pytest.mark.kernel

Behaviour = Callable[[socket.socket], None]


def hang(conn: socket.socket) -> None:
    conn.recv(65536)
    time.sleep(30)  # never answers; the test ends first


def garbage(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"\x00\xffSSH-2.0-OpenSSH\r\n\r\n" * 20)


def broken_json(conn: socket.socket) -> None:
    conn.recv(65536)
    body = b'{"Api'
    conn.sendall(b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@contextmanager
def fake_engine(behaviour: Behaviour) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="ttcp-fake-docker-") as d:
        path = str(Path(d) / "docker.sock")
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen(64)
        srv.settimeout(0.2)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                threading.Thread(target=lambda c=conn: _once(behaviour, c), daemon=True).start()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield path
        finally:
            stop.set()
            thread.join(2)
            srv.close()


def _once(behaviour: Behaviour, conn: socket.socket) -> None:
    with conn:
        try:
            behaviour(conn)
        except OSError:
            pass


@pytest.mark.parametrize("behaviour,why", [(hang, "no answer within"), (garbage, "_ping"),
                                            (broken_json, "not JSON"), (None, "_ping")],
                         ids=["hangs", "garbage", "broken-json", "absent"])
def test_a_bad_runtime_costs_one_line_and_events_flow_with_ids_only(behaviour: Behaviour | None, why: str) -> None:
    ctx = fake_engine(behaviour) if behaviour is not None else _absent()
    with ctx as sock, TtcpProcess("--format", "json", "--docker-socket", sock, "--filter", "src 127.0.61.2",
                                  "--filter", "container web") as t, Server("127.0.61.1") as srv:
        sent = []
        t0 = time.monotonic()
        for _ in range(4):  # over a few seconds: through timeouts and retries
            sent += connect_many(srv, "127.0.61.2", 5)
            time.sleep(0.6)
        got = [json.loads(line) for line in t.lines_until_quiet()]
        assert sorted(e["sport"] for e in got) == sorted(c.sport for c in sent)
        assert time.monotonic() - t0 < 10  # nothing waited on the runtime
        assert not [e for e in got if {"container", "container_id", "pod", "pod_namespace"} & set(e)]
        status, body = t.api("GET", "/filters")
        assert status == 200
        entry = next(e for e in json.loads(body)["filters"] if e["filter"] == "container web")
        assert entry["workload"]["state"] == "pending"
        assert t.stop() == 0
    docker_lines = [line for line in t.stderr.splitlines() if "docker" in line]
    assert len(docker_lines) == 1 and why in docker_lines[0], t.stderr
    assert "Traceback" not in t.stderr


@contextmanager
def _absent() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="ttcp-fake-docker-") as d:
        yield str(Path(d) / "docker.sock")
