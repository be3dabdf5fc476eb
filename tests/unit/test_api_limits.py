"""The connection table's decisions (ttcp.api.limits), on plain keys: who is admitted,
who gives way, who is refused, and what is counted. The asyncio side that carries them
out is tests/unit/test_api_connections.py's."""

from __future__ import annotations

import ast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.paths import REPO
from ttcp import cli
from ttcp.api import metrics
from ttcp.api.limits import REASONS, Admission, Connections, Limits, State


def table(cap: int = 3) -> Connections[str]:
    return Connections(Limits(max_connections=cap))


def test_under_the_cap_every_connection_is_admitted_receiving() -> None:
    t = table()
    assert [t.admit(c) for c in "abc"] == [Admission(True)] * 3
    assert [t.state(c) for c in "abc"] == [State.RECEIVING] * 3
    assert (t.counts.open, t.counts.peak, t.counts.accepted) == (3, 3, 3)


def test_at_the_cap_the_longest_waiting_half_request_gives_way() -> None:
    t = table()
    for c in "abc":
        t.admit(c)
    t.enter("a", State.BUSY)  # a's request is whole: its handler runs
    t.enter("b", State.IDLE)  # b was answered and waits for its next request
    t.enter("c", State.RECEIVING)  # c sent more of its request: still waiting for the rest
    assert t.admit("d") == Admission(True, "c")
    assert t.counts.rejected["evicted"] == 1
    assert t.active == 3 and t.counts.open == 4  # c holds its descriptor until it is gone
    t.gone("c")
    assert t.admit("e") == Admission(True, "d")  # half-requests first, the newer ones too,
    assert t.admit("f") == Admission(True, "e")  # while the client between requests is spared
    t.enter("f", State.BUSY)
    assert t.admit("g") == Admission(True, "b")  # with none left, the idle one; never the busy
    assert t.state("a") is t.state("f") is State.BUSY and t.state("g") is State.RECEIVING


def test_when_every_connection_is_busy_a_newcomer_is_refused() -> None:
    t = table(cap=2)
    for c in "ab":
        t.admit(c)
        t.enter(c, State.BUSY)
    assert t.admit("x") == Admission(False, None, linger=True)
    assert t.admit("y") == Admission(False, None, linger=True)
    assert t.admit("z") == Admission(False, None, linger=False)  # as many lingering as the cap, no more
    t.refusal_gone()
    assert t.admit("w").linger
    assert t.counts.rejected["cap"] == 4 and t.state("x") is None
    t.enter("a", State.IDLE)  # a's answer is out: evictable again
    assert t.admit("v") == Admission(True, "a")


def test_a_closing_connection_does_not_count_and_is_not_closed_twice() -> None:
    t = table(cap=1)
    t.admit("a")
    t.closing("a", "deadline")
    t.closing("a", "deadline")
    t.enter("a", State.RECEIVING)  # a late report about it changes nothing
    assert t.counts.rejected == {"cap": 0, "evicted": 0, "deadline": 1}
    assert t.admit("b") == Admission(True)  # a is on its way out: b needs no eviction
    t.gone("a")
    t.gone("a")
    assert t.counts.open == 1 and t.active == 1


def test_reports_about_unknown_connections_are_ignored() -> None:
    t = table()
    t.enter("ghost", State.IDLE)
    t.closing("ghost", "evicted")
    t.gone("ghost")
    assert t.counts.open == 0 and t.counts.rejected["evicted"] == 0 and t.state("ghost") is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["admit"] * 3 + ["receiving", "busy", "idle", "close", "gone"]),
                          st.integers(0, 5)), min_size=20, max_size=100), st.integers(1, 4))
def test_the_cap_holds_and_only_evictable_connections_give_way(steps: list[tuple[str, int]], cap: int) -> None:
    """Whatever happens, no more than `cap` connections are active, an eviction only ever
    takes a RECEIVING one, or an IDLE one when there is none, and the counts add up."""
    t = table(cap)
    admitted, refused, closed = 0, 0, set()
    for op, key in steps:
        if op == "admit" and t.state(key) is None:
            open_states = {c: t.state(c) for c in range(6) if t.state(c) is not None and c not in closed}
            a = t.admit(key)
            admitted += a.admitted
            refused += not a.admitted
            if a.evict is not None:
                assert open_states[a.evict] in (State.RECEIVING, State.IDLE)
                if State.RECEIVING in open_states.values():
                    assert open_states[a.evict] is State.RECEIVING
                closed.add(a.evict)
            if not a.admitted:
                assert set(open_states.values()) == {State.BUSY}
        elif op in ("receiving", "busy", "idle"):
            t.enter(key, State(op))
        elif op == "close" and t.state(key) is not None:
            t.closing(key, "deadline")
            closed.add(key)
        elif op == "gone":
            t.gone(key)
            closed.discard(key)
        assert t.active <= cap
    assert t.counts.accepted == admitted and t.counts.rejected["cap"] == refused
    assert t.counts.peak >= t.counts.open


def test_streams_never_take_more_than_half_the_connections() -> None:
    assert Limits().stream_clients == 64
    assert Limits(max_connections=100, max_stream_clients=64).stream_clients == 50
    assert Limits(max_connections=1).stream_clients == 0
    with pytest.raises(ValueError):
        Limits(max_connections=0)


def test_reasons_are_the_counted_ones() -> None:
    assert set(table().counts.rejected) == set(REASONS)


def test_the_table_is_pure() -> None:
    """No sockets, no loop, no clock: the decisions are tested on plain keys."""
    tree = ast.parse((REPO / "ttcp" / "api" / "limits.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"asyncio", "aiohttp", "socket", "time", "selectors"}, imported


# ---- the options, and what /metrics shows --------------------------------------------------------


def test_the_options_set_the_limits() -> None:
    parser = cli.build_parser()
    assert cli._limits(parser.parse_args([])) == Limits()
    args = parser.parse_args(["--max-connections", "8", "--request-timeout", "2.5", "--keepalive-timeout", "30",
                              "--max-stream-clients", "3"])
    assert cli._limits(args) == Limits(8, 2.5, 30.0, 3)
    help_text = parser.format_help()
    for option in ("--max-connections", "--request-timeout", "--keepalive-timeout", "--max-stream-clients"):
        assert option in help_text
    for bad in (["--max-connections", "0"], ["--request-timeout", "0"], ["--max-stream-clients", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_metrics_show_the_connections_and_every_refusal_by_reason() -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    rejected = {"cap": 1, "evicted": 2, "deadline": 3, "streams": 4}
    text = metrics.render(metrics.Snapshot([], events_total=0, dropped={}, filters_max=64,
                                           attach_mode="tp_btf", version="0", sampling=False,
                                           api_connections=5, api_connections_max=256, api_rejected=rejected))
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert families["ttcp_api_connections"].samples[0].value == 5
    assert families["ttcp_api_connections_max"].samples[0].value == 256
    by_reason = {s.labels["reason"]: s.value for s in families["ttcp_api_connections_rejected"].samples}
    assert by_reason == rejected and families["ttcp_api_connections_rejected"].type == "counter"
