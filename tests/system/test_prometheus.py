"""ttcp scraped by a real Prometheus (Debian's `prometheus`), checked through its query API.

One ttcp (a token, a filters file, live sampling, the kernel's BPF statistics on)
and one Prometheus scraping it every second with the bearer token and loading
deploy/prometheus's rules, shared by the module (the first scrape alone takes
~5.5 s). Real loopback connections, IPv4 and IPv6, on three filters whose texts
hold the characters a label and a regex must survive (`.`, `/`, `:`, spaces).
The checks: the target is up; the counters equal the events ttcp printed; a
median from histogram_quantile lies in the log2 bucket of the events' median;
`promtool check metrics` finds nothing in a live answer; the rules evaluate; and
every panel query of deploy/grafana's dashboard returns data for every filter.
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import dashboard
from tests.support import prometheus as prom
from tests.support.api import TOKEN, token_file
from tests.support.cli_process import TtcpProcess
from tests.support.kernel import enable_stats, require
from tests.support.paths import REPO
from tests.support.traffic import Server, connect_many
from ttcp.rtt.histogram import bucket_of, low_us

pytestmark = pytest.mark.kernel
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RULES = REPO / "deploy" / "prometheus" / "ttcp-rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "ttcp-dashboard.json"
CLIENT = "127.0.78.1"


@dataclass
class Stack:
    ttcp: TtcpProcess
    prom: prom.PromServer
    servers: dict[str, tuple[Server, str]]  # filter: (its server, the client address)
    events: list[dict[str, Any]]

    def traffic(self, n: int = 20) -> None:
        """n connections per filter; every event ttcp prints is kept; returns once
        Prometheus has scraped them all."""
        for server, client in self.servers.values():
            connect_many(server, client, n)
        self.events += [json.loads(line) for line in self.ttcp.lines_until_quiet()]
        self.prom.wait("the events scraped", lambda: self.prom.value("ttcp_events_total") == len(self.events))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if (missing := prom.installed()) is not None:
        pytest.fail(missing)  # make deps installs it: its absence is a broken set-up, never a skip
    require(enable_stats())
    work = tmp_path_factory.mktemp("prometheus")
    token = token_file(work, TOKEN.encode() + b"\n", 0o400)
    with Server("127.0.0.1") as plain, Server("127.0.79.5") as net, Server("::1", socket.AF_INET6) as v6:
        servers = {CLIENT: (plain, CLIENT), f"dst 127.0.79.0/24 port {net.port}": (net, "127.0.0.1"),
                   f"dst ::1 port {v6.port}": (v6, "::1")}
        (work / "filters").write_text("".join(f"{f}\n" for f in servers))
        with TtcpProcess("--token-file", str(token), "--filters-file", str(work / "filters"), "--sample",
                         "--bpf-stats", "--format", "json") as t:
            server = prom.PromServer(prom.scrape_config(f"127.0.0.1:{t.port}", token, rule_files=[RULES]),
                                     work / "server")
            server.start()
            try:
                server.wait_up()
                for f in servers:  # a series' first sample is no increase: let the zeros be scraped first
                    server.wait(f"{f}'s zero histograms", lambda f=f: server.value(  # type: ignore[misc]
                        "ttcp_rtt_sample_seconds_count", filter=f) == 0)
                stack = Stack(t, server, servers, [])
                stack.traffic()
                yield stack
            finally:
                assert server.stop() == 0, server.log()[-2000:]
            assert t.stop() == 0


def test_the_target_is_up(stack: Stack) -> None:
    (target,) = stack.prom.targets()
    assert target["health"] == "up" and target["lastError"] == "" and target["scrapeInterval"] == "1s"
    assert stack.prom.value('up{job="ttcp"}') == 1


def test_the_counters_equal_the_events(stack: Stack) -> None:
    p, events = stack.prom, stack.events
    assert len(events) == 3 * 20 and p.value("ttcp_events_total") == len(events)
    for f in stack.servers:
        n = sum(e["filter"] == f for e in events)
        assert n == 20
        assert p.value("ttcp_filter_matches_total", filter=f) == n
        assert p.value("ttcp_connection_rtt_seconds_count", filter=f) == n
        assert p.value('ttcp_connection_rtt_seconds_bucket{le="+Inf"}', filter=f) == n
        assert p.value("ttcp_connection_rtt_seconds_sum", filter=f) == pytest.approx(
            sum(e["rtt_us"] for e in events if e["filter"] == f) / 1e6)
    assert p.value("sum(ttcp_events_dropped_total)") == 0


def median_bucket(rtts_us: list[int]) -> tuple[float, float]:
    """The closed log2 bucket [2^k, 2^(k+1)] us, in seconds, of the event of rank ceil(n/2):
    histogram_quantile interpolates inside the bucket that holds it."""
    k = bucket_of(sorted(rtts_us)[math.ceil(len(rtts_us) / 2) - 1])
    return low_us(k) / 1e6, (1 << (k + 1)) / 1e6


def test_the_median_is_in_the_bucket_of_the_events_median(stack: Stack) -> None:
    expr = "histogram_quantile(0.5, sum by (le, filter) (rate(ttcp_connection_rtt_seconds_bucket[5m])))"
    estimates = {r["metric"]["filter"]: float(r["value"][1]) for r in stack.prom.query(expr)}
    assert set(estimates) == set(stack.servers)
    for f, estimate in estimates.items():
        low, high = median_bucket([e["rtt_us"] for e in stack.events if e["filter"] == f])
        assert low <= estimate <= high, (f, estimate, low, high)


def test_promtool_finds_no_problem_in_a_live_answer(stack: Stack) -> None:
    status, body = stack.ttcp.api("GET", "/metrics", headers=AUTH)
    assert status == 200 and b"process_cpu_seconds_total" in body and b"ttcp_bpf_program_runs_total" in body
    lint = prom.promtool("check", "metrics", stdin=body)
    assert (lint.returncode, lint.stdout, lint.stderr) == (0, "", "")
    bad = prom.promtool("check", "metrics", stdin=body + b"# TYPE ttcp_bad_ms counter\nttcp_bad_ms 1\n")
    assert bad.returncode != 0 and "ttcp_bad_ms" in bad.stderr  # the check can fail


def test_the_rules_evaluate_on_live_data(stack: Stack) -> None:
    groups = stack.prom.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {g["file"] for g in groups} == {str(RULES)} and len(rules) == 11
    stack.prom.wait("every rule evaluated", lambda: all(r["health"] == "ok" for g in stack.prom.api(
        "rules")["groups"] for r in g["rules"]))
    recorded = stack.prom.wait("the recorded quantiles", lambda: stack.prom.query(
        "filter:ttcp_connection_rtt_seconds:p50_rate5m"))
    assert {r["metric"]["filter"] for r in recorded} == set(stack.servers)
    firing = [a for a in stack.prom.api("alerts")["alerts"] if a["state"] == "firing"]
    assert firing == []


def test_every_dashboard_panel_returns_data(stack: Stack) -> None:
    stack.traffic()  # fresh increases inside the panels' windows
    time.sleep(2.5)  # and samples after them: a rate needs two
    doc = json.loads(DASHBOARD.read_text())
    values: dict[str, list[str]] = {}
    for v in dashboard.variables(doc):
        values[v.name] = stack.prom.label_values(v.label, dashboard.interpolate(v.selector, values)
                                                 if v.selector else None)
        assert values[v.name], f"variable {v.name}: no values"
    assert set(values["filter"]) == set(stack.servers)
    end = time.time()
    empty = []
    for target in dashboard.targets(doc):
        expr = dashboard.interpolate(target.expr, values)
        if target.instant:
            series = [dict(r, values=[r["value"]]) for r in stack.prom.query(expr)]
        else:
            series = stack.prom.query_range(expr, end - 60, end, 1)
        with_data = [r for r in series if any(v[1] != "NaN" for v in r["values"])]
        per_filter = "filter" in target.expr.rsplit("by (", 1)[-1] and "$filter" in target.expr
        shown = {r["metric"].get("filter") for r in with_data}
        if not with_data or (per_filter and shown != set(stack.servers)):
            empty.append(f"{target.panel} [{target.ref}]: {expr} -> {shown or 'nothing'}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert all(panel["targets"] for panel in doc["panels"])  # no panel without a query


def test_the_dashboard_check_can_fail() -> None:
    """Every value regex-escaped and joined as Grafana's Prometheus datasource does; an
    unknown variable is an error, not an empty query."""
    got = dashboard.interpolate('x{filter=~"$filter", i=~"${instance}"}[$__rate_interval]',
                                {"filter": ["dst 10.20.0.0/16 port 5432", "a|b"], "instance": ["h:1"]})
    assert got == r'x{filter=~"(dst 10\\.20\\.0\\.0\\/16 port 5432|a\\|b)", i=~"h:1"}[10s]'
    with pytest.raises(dashboard.DashboardError):
        dashboard.interpolate("rate(x[$nope])", {})


def test_the_deploy_files_are_where_the_readme_says() -> None:
    readme = (REPO / "README.md").read_text()
    for path in (RULES, RULES.with_name("ttcp-rules.test.yml"), DASHBOARD):
        assert path.relative_to(REPO).as_posix() in readme
    assert isinstance(json.loads(DASHBOARD.read_text())["panels"], list)
    assert Path(prom.PROMTOOL).exists()
