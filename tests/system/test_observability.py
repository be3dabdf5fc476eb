"""What an operator reads off a running ttcp: /metrics, /events, --histogram.

The real command in a subprocess, real loopback traffic; /metrics is parsed
with prometheus_client's own parser and compared with /filters, /healthz and
the events printed; /events clients are real HTTP clients, one of which
stops reading.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request

import pytest

from tests.support.cli_process import TtcpProcess
from tests.support.kernel import scaled
from tests.support.traffic import Server, connect_many

pytestmark = pytest.mark.kernel
parser = pytest.importorskip("prometheus_client.parser")


def scrape(t: TtcpProcess) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{t.port}/metrics", timeout=scaled(5)) as r:
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = r.read().decode()
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def samples(family: object, name: str) -> dict[str, float]:
    return {s.labels.get("filter", ""): s.value for s in family.samples if s.name == name}  # type: ignore[attr-defined]


def test_metrics_agree_with_filters_health_and_events() -> None:
    with TtcpProcess("--filter", "127.0.60.1", "--filter", "dst 127.0.61.0/24 port 5432",
                     "--format", "json") as t, \
            Server("127.0.0.1") as a, Server("127.0.61.5", port=5432) as db:
        connect_many(a, "127.0.60.1", 7)
        connect_many(db, "127.0.0.1", 4)
        lines = [json.loads(x) for x in t.lines_until_quiet()]
        assert len(lines) == 11
        fams = scrape(t)
        rtt = fams["ttcp_connection_rtt_seconds"]
        count = samples(rtt, "ttcp_connection_rtt_seconds_count")
        assert count == {"127.0.60.1": 7, "dst 127.0.61.0/24 port 5432": 4}
        total = samples(rtt, "ttcp_connection_rtt_seconds_sum")
        for name in count:
            want = sum(e["rtt_us"] for e in lines if e["filter"] == name) / 1e6
            assert total[name] == pytest.approx(want)
        buckets = [s for s in rtt.samples if s.name.endswith("_bucket") and s.labels["filter"] == "127.0.60.1"]
        assert [b.value for b in buckets] == sorted(b.value for b in buckets)  # cumulative
        assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == 7
        _, body = t.api("GET", "/filters")
        listing = {f["filter"]: f["matches"] for f in json.loads(body)["filters"]}
        assert samples(fams["ttcp_filter_matches"], "ttcp_filter_matches_total") == listing
        health = json.loads(t.api("GET", "/healthz")[1])
        assert fams["ttcp_events"].samples[0].value == health["events"] == 11
        dropped = {s.labels["reason"]: s.value for s in fams["ttcp_events_dropped"].samples}
        assert dropped == {"ring_full": 0, "recursion": 0} and health["dropped"] == 0
        assert fams["ttcp_filters"].samples[0].value == health["filters"] == 2
        assert fams["ttcp_filters_max"].samples[0].value == health["max_filters"]
        info = fams["ttcp_info"].samples[0].labels
        assert info["attach_mode"] == health["attach_mode"] and info["version"] == health["version"]
        assert t.stop() == 0


def test_metrics_follow_filters_changing_at_runtime() -> None:
    with TtcpProcess() as t, Server("127.0.0.1") as srv:
        for text in ("dst 127.0.62.0/24", "src 127.0.63.7 port 40000", "::1"):
            assert t.api("PUT", "/", text.encode())[0] == 204
        names = set(samples(scrape(t)["ttcp_filter_matches"], "ttcp_filter_matches_total"))
        assert names == {"dst 127.0.62.0/24", "src 127.0.63.7 port 40000", "::1"}
        assert t.api("DELETE", "/", b"::1")[0] == 204
        fams = scrape(t)
        assert "::1" not in samples(fams["ttcp_filter_matches"], "ttcp_filter_matches_total")
        assert fams["ttcp_filters"].samples[0].value == 2
        connect_many(srv, "127.0.0.1", 1)
        assert t.stop() == 0


class StreamClient:
    """GET /events over a raw socket: reads chunks as they come, or stops reading."""

    def __init__(self, port: int, buffer: int | None = None) -> None:
        self.sock = socket.socket()
        if buffer is not None:  # before connecting, so the window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        self.sock.settimeout(scaled(10))
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.raw = b""

    def lines(self, want: int) -> list[dict[str, object]]:
        deadline = time.monotonic() + scaled(10)
        while time.monotonic() < deadline:
            body = self.raw.split(b"\r\n\r\n", 1)[-1]
            found = [json.loads(x) for x in re.findall(rb"\{[^\r\n]*\}", body)]
            if len(found) >= want:
                return found
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.raw += chunk
        raise AssertionError(f"{want} lines expected on /events, got: {self.raw[-500:]!r}")

    def ended(self) -> bool:
        """True when ttcp has closed the stream (after what was still buffered)."""
        self.sock.settimeout(scaled(10))
        try:
            while chunk := self.sock.recv(1 << 20):
                self.raw += chunk
        except ConnectionResetError:  # cut: ttcp does not wait for a client that does not read
            return True
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()


def test_events_stream_to_two_clients_and_a_stalled_one_is_dropped() -> None:
    with TtcpProcess("--filter", "127.0.64.1", "--ringbuf-size", "16M", "--stream-backlog", "500") as t, \
            Server("127.0.0.1") as srv:
        a, b = StreamClient(t.port), StreamClient(t.port)
        stalled = StreamClient(t.port, buffer=4096)  # never reads
        try:
            deadline = time.monotonic() + scaled(5)
            while json.loads(t.api("GET", "/healthz")[1])["stream_clients"] < 3:
                assert time.monotonic() < deadline, "the three clients did not subscribe"
                time.sleep(0.05)
            conns = connect_many(srv, "127.0.64.1", 20)
            printed = t.lines_until_quiet()
            got_a, got_b = a.lines(20), b.lines(20)
            assert [e["sport"] for e in got_a] == [e["sport"] for e in got_b] == [c.sport for c in conns]
            assert [line.split()[2] for line in printed] == ["127.0.64.1"] * 20  # stdout: every event, a table
            # Flood until the stalled client is past its backlog: it is dropped, the others go on.
            for _ in range(40):
                connect_many(srv, "127.0.64.1", 500)
                health = json.loads(t.api("GET", "/healthz")[1])
                if health["stream_clients_dropped"]:
                    break
            assert health["stream_clients_dropped"] == 1 and health["stream_clients"] == 2
            assert stalled.ended()  # its stream was closed
            total = 20 + len(t.lines_until_quiet(quiet=1.0, limit=120))
            assert health["dropped"] == 0
        finally:
            for c in (a, b, stalled):
                c.close()
        assert t.stop() == 0
    summary = re.search(r"ttcp: (\d+) events printed, (\d+) dropped", t.stderr)
    assert summary and int(summary[1]) == total and int(summary[2]) == 0  # stdout lost nothing


def test_histogram_mode_prints_bcc_style_histograms() -> None:
    with TtcpProcess("--filter", "127.0.65.1", "--histogram", "1", "--no-api") as t, \
            Server("127.0.0.1") as srv:
        connect_many(srv, "127.0.65.1", 12)
        deadline = time.monotonic() + scaled(10)
        out: list[str] = []
        while time.monotonic() < deadline:
            out += t.lines_until_quiet(quiet=1.5, limit=5)
            titles = [re.match(r"filter 127\.0\.65\.1: RTT at close, (\d+) samples, mean \d+ us$", x) for x in out]
            if sum(int(m[1]) for m in titles if m) >= 12:
                break
        # The 12 connections, in one interval or split over two, each block bcc-style.
        assert sum(int(m[1]) for m in titles if m) == 12, out
        assert any(x.split() == ["usecs", ":", "count", "distribution"] for x in out)
        bars = [x for x in out if re.match(r"^\s*\d+ -> \d+\s+: \d+\s+\|\**\s*\|$", x)]
        assert sum(int(x.split(":")[1].split()[0]) for x in bars) == 12
        assert t.stop() == 0
    rest = t.lines_until_quiet(quiet=0.5)
    assert any("whole run" in x for x in rest) and "ttcp: 12 events read (histogram mode)" in t.stderr
