"""A filter's groups through the command: `--format histogram` prints one histogram per
group, largest first (as `bcc tcprtt -B` prints one per address); /metrics shows the
--metrics-groups busiest groups with a `group` label, and what promtool reads without a
complaint; GET /filters/{filter}/groups answers the same groups. Real loopback
connections, ttcp as a process."""

from __future__ import annotations

import json
import re

import pytest

from tests.support import prometheus as prom
from tests.support.cli_process import TtcpProcess
from tests.support.traffic import Server, connect_many

pytestmark = pytest.mark.kernel

FILTER = "dst 127.0.95.0/24 by raddr"
PATH = "/filters/dst%20127.0.95.0%2F24%20by%20raddr"
CLIENT = "127.0.92.7"


def test_format_histogram_prints_one_histogram_per_group_largest_first() -> None:
    with TtcpProcess("--no-api", "--format", "histogram", "--filter", FILTER, "--filter", "127.0.92.8") as t:
        with Server("127.0.95.1") as one, Server("127.0.95.2") as two:
            connect_many(two, CLIENT, 1)
            connect_many(one, CLIENT, 3)
            connect_many(one, "127.0.92.8", 2)  # a filter without a breakdown: its own histogram
        assert t.stop() == 0, t.stderr
        out = "\n".join(t.lines_until_quiet())
    assert out.startswith("RTT histograms, whole run")
    assert f"filter {FILTER}: 4 connections at close, 0 live samples; 2 groups" in out
    first = out.index(f"filter {FILTER}, raddr 127.0.95.1: RTT at close, 3 samples, mean")
    assert first < out.index(f"filter {FILTER}, raddr 127.0.95.2: RTT at close, 1 samples, mean")
    assert "filter 127.0.92.8: RTT at close, 2 samples" in out
    assert out.count("usecs : count") == 3
    assert "ttcp: 6 events read (histogram mode), 0 dropped" in t.stderr


def test_metrics_show_the_busiest_groups_and_the_api_all_of_them() -> None:
    if (missing := prom.installed()) is not None:
        pytest.fail(missing)
    with TtcpProcess("--format", "json", "--metrics-groups", "2", "--filter", FILTER) as t:
        with Server("127.0.95.1") as a, Server("127.0.95.2") as b, Server("127.0.95.3") as c:
            connect_many(a, CLIENT, 3)
            connect_many(b, CLIENT, 2)
            connect_many(c, CLIENT, 1)
        assert len(t.lines_until_quiet()) == 6
        status, body = t.api("GET", "/metrics")
        assert status == 200
        text = body.decode()
        groups = dict(re.findall(r'ttcp_group_connection_rtt_seconds_count\{filter="[^"]+",group="([^"]+)"\} (\d+)',
                                 text))
        assert groups == {"127.0.95.1": "3", "127.0.95.2": "2"}  # the two busiest: --metrics-groups 2
        assert f'ttcp_filter_groups{{filter="{FILTER}"}} 3' in text
        assert f'ttcp_groups_evicted_total{{filter="{FILTER}"}} 0' in text
        lint = prom.promtool("check", "metrics", stdin=body)
        assert (lint.returncode, lint.stdout, lint.stderr) == (0, "", "")
        status, body = t.api("GET", PATH + "/groups?top=10")
        assert status == 200
        answer = json.loads(body)
        assert [(g["group"], g["closed"]["count"]) for g in answer["groups"]] == [
            ("127.0.95.1", 3), ("127.0.95.2", 2), ("127.0.95.3", 1)]
        assert t.api("PUT", "/filters/dst%20127.0.95.0%2F24")[0] == 409  # the selector is held, with `by`
        assert t.stop() == 0
