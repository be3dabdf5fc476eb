"""Event decoding and formatting, and filter-address parsing, on bytes."""

from __future__ import annotations

import json
import struct

import pytest

from tests.support import reference_events as reference
from tests.support.btf_layout import shipped_struct
from ttcp.errors import FormatError
from ttcp.maps import Run
from ttcp.output import Printer
from ttcp.rtt import events
from ttcp.rtt import filters as F
from ttcp.rtt.events import FilterNames, Lines

GEN = 7  # the generation of the filter the test records name


def names(*texts: str) -> FilterNames:
    """Filter names as a table keeps them: generation GEN, GEN + 1, ... in order."""
    n = FilterNames()
    for i, text in enumerate(texts or ("127.0.0.2",)):
        n.add(GEN + i, text)
    return n


PATHS = {1: "/", 120: "/ttcp-docker-9226/c051ac02", 7777: "/system.slice/app.service"}


def record(saddr="127.0.0.2", daddr="127.0.0.1", ts=5_000_000_000, srtt=412, family=2, hook=2,
           sport=47090, dport=80, netns=4026531840, gen=GEN, cgroup_id=120) -> bytes:
    """A record laid out from struct event in the shipped object's BTF, field by
    field: independent of the `struct` format under test."""
    size, c_fields = shipped_struct("event")
    raw = bytearray(size)
    values = {"saddr": F.address_bytes(saddr), "daddr": F.address_bytes(daddr), "ts_ns": ts,
              "bytes_acked": 1234, "bytes_received": 5678, "srtt_us": srtt, "rttvar_us": 99,
              "total_retrans": 3, "netns": netns, "sport": sport, "dport": dport, "family": family,
              "hook": hook, "filter_gen": gen, "cgroup_id": cgroup_id}
    for name, value in values.items():
        where = c_fields[name].byte_range
        assert where is not None, name
        offset, width = where
        raw[offset:offset + width] = value if isinstance(value, bytes) else value.to_bytes(width, "little")
    return bytes(raw)


def lines(*texts: str) -> Lines:
    return Lines(names(*texts), PATHS.get)


def decode(raw: bytes, *texts: str) -> events.Event:
    return events.decode(raw, names(*texts), PATHS.get)


def test_event_size_matches_the_c_struct():
    assert events.EVENT_SIZE == shipped_struct("event")[0] == 96


def test_decode_every_field():
    ev = decode(record())
    assert (ev.saddr, ev.daddr, ev.sport, ev.dport) == ("127.0.0.2", "127.0.0.1", 47090, 80)
    assert (ev.rtt_us, ev.rttvar_us, ev.retrans, ev.bytes_acked, ev.bytes_received) == (412, 99, 3, 1234, 5678)
    assert (ev.netns, ev.family, ev.hook, ev.ts_ns) == (4026531840, 2, 2, 5_000_000_000)
    assert (ev.filter, ev.filter_gen, ev.cgroup_id, ev.cgroup) == ("127.0.0.2", GEN, 120, "/ttcp-docker-9226/c051ac02")
    assert decode(record(cgroup_id=0)).cgroup is None  # no v2 cgroup: id 0, no path
    assert decode(record(cgroup_id=999)).cgroup is None  # a cgroup removed since: no path


def test_the_filter_an_event_names_is_its_generations():
    texts = ("10.178.0.5", "cgroup /system.slice/app.service dst 10.20.0.0/16 port 5432", 'cgroup /a"b%c')
    for i, text in enumerate(texts):
        raw = record(gen=GEN + i)
        assert decode(raw, *texts).filter == text
        assert json.loads(lines(*texts).json_line(raw, 0))["filter"] == text  # escaped as JSON asks


def test_a_removed_filter_is_named_while_remembered_then_null():
    n = names("10.0.0.1")
    n.remove(GEN)
    assert events.decode(record(), n).filter == "10.0.0.1"
    for i in range(events.REMEMBERED_NAMES):
        n.add(GEN + 1 + i, f"dst 10.0.{i >> 8}.{i & 255}")
        n.remove(GEN + 1 + i)
    assert n.get(GEN) == ""  # issued and forgotten: still ours, named null
    assert json.loads(Lines(n).json_line(record(), 0))["filter"] is None
    assert Lines(n).table_line(record(), 0)


@pytest.mark.parametrize("gen", [0, GEN + 100])
def test_an_event_naming_no_filter_is_refused_in_every_format(gen):
    """One rule for the table, JSON and the plain decoder (histogram mode counts as JSON):
    a generation never issued is not an event of ours."""
    raw = record(gen=gen)
    for read in (lambda r: decode(r), lambda r: lines().table_line(r, 0), lambda r: lines().json_line(r, 0),
                 lambda r: lines().wide_line(r, 0)):
        with pytest.raises(FormatError, match=rf"names no filter \(generation {gen}\)"):
            read(raw)


def test_decode_refuses_short_records():
    with pytest.raises(FormatError, match="95 bytes"):
        decode(record()[:95])


def test_table_line_matches_the_original_ttcp_columns():
    ev = decode(record(saddr="10.178.0.5", daddr="172.217.161.206"))
    line = reference.format_table(ev, 0)
    assert line[19:] == " 10.178.0.5      47090  -> 172.217.161.206 80     0.412"
    assert events.HEADER == ("YYYY/MM/DD HH:MM:SS Src addr        Port   -> Dest addr       Port   RTT(ms)")


def test_the_wide_table_adds_the_workload_column():
    raw = record(saddr="10.178.0.5", daddr="172.217.161.206", cgroup_id=7777)
    line = lines().wide_line(raw, 0)
    assert line[19:] == " 10.178.0.5      47090  -> 172.217.161.206 80     0.412   /system.slice/app.service"
    assert line.index("/system") == events.WIDE_HEADER.index("Workload")
    assert lines().wide_line(record(cgroup_id=0), 0).endswith(" -")


@pytest.mark.parametrize("us,text", [(0, "0.000"), (48, "0.048"), (1000, "1.000"), (123456, "123.456")])
def test_rtt_is_milliseconds_with_microsecond_precision(us, text):
    assert events.format_ms(us) == text


def test_ipv6_addresses_widen_the_column():
    ev = decode(record(saddr="2001:db8::1234:5678", daddr="::1", family=10))
    assert " 2001:db8::1234:5678 47090  -> ::1             80 " in reference.format_table(ev, 0)


def test_json_line_round_trips():
    ev = decode(record(family=10, saddr="::ffff:127.0.0.2"))
    d = json.loads(reference.format_json(ev, 1_700_000_000_000_000_000 - 5_000_000_000))
    assert d["saddr"] == "127.0.0.2" and d["family"] == "inet6" and d["rtt_us"] == 412
    assert d["rtt_ms"] == 0.412 and d["hook"] == "tp_btf" and d["netns"] == 4026531840
    assert d["filter"] == "127.0.0.2" and d["cgroup_id"] == 120 and d["cgroup"] == "/ttcp-docker-9226/c051ac02"
    assert d["time"] == "2023-11-14T22:13:20.000000Z"


@pytest.mark.parametrize("text,canon", [
    ("10.0.0.1", "10.0.0.1"), (" 10.0.0.1\n", "10.0.0.1"), ("::ffff:10.0.0.1", "10.0.0.1"),
    ("2001:DB8::1", "2001:db8::1"), ("::1", "::1"),
])
def test_canonical_addresses(text, canon):
    assert F.address_text(F.address_bytes(text)) == canon


@pytest.mark.parametrize("text,why", [
    ("10.0.0.0/8", "a network"), ("fe80::1%eth0", "zone"), ("10.0.0.256", "not an IPv4"),
    ("", "not an IPv4"), ("x" * 500, "not an IPv4"),
])
def test_bad_addresses_are_named(text, why):
    with pytest.raises(F.FilterError, match=why):
        F.address_bytes(text)


def test_ipv4_addresses_are_v4_mapped():
    assert F.address_bytes("1.2.3.4") == bytes(10) + b"\xff\xff\x01\x02\x03\x04"
    assert F.address_text(F.address_bytes("1.2.3.4")) == "1.2.3.4"


@pytest.mark.parametrize("saddr,daddr,family", [("10.178.0.5", "172.217.161.206", 2),
                                                ("2001:db8::1234:5678", "::1", 10)])
@pytest.mark.parametrize("srtt", [0, 1, 48, 999, 1000, 1001, 123456, 4_000_000_000])
@pytest.mark.parametrize("hook", [1, 2, 3, 77])
@pytest.mark.parametrize("cgroup_id", [0, 1, 7777, 2**64 - 1])
def test_fast_print_path_matches_the_event_formatters(saddr, daddr, family, srtt, hook, cgroup_id):
    raw = record(saddr=saddr, daddr=daddr, family=family, srtt=srtt, ts=987_654_321_012, hook=hook,
                 sport=65535, dport=0, netns=2**32 - 1, cgroup_id=cgroup_id)
    fmt = lines('cgroup /a"%b dst ::/0')
    for offset in (0, 1_700_000_000_123_456_789):
        ev = decode(raw, 'cgroup /a"%b dst ::/0')
        assert fmt.table_line(raw, offset) == reference.format_table(ev, offset)
        assert fmt.wide_line(raw, offset) == reference.format_table(ev, offset, wide=True)
        assert fmt.json_line(raw, offset) == reference.format_json(ev, offset)
        assert json.loads(fmt.json_line(raw, offset)) == reference.to_dict(ev, offset)
    for line in (fmt.table_line, fmt.json_line, fmt.wide_line):
        with pytest.raises(FormatError):
            line(raw[:40], 0)


class _Sink:
    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass


def _run(records: list[bytes]) -> Run:
    """Records as RingBuffer.read_runs copies a stretch: each behind its 8-byte header."""
    return Run(b"".join(struct.pack("<II", len(r), 0) + r for r in records), len(records))


@pytest.mark.parametrize("fmt,wide", [("table", False), ("table", True), ("json", False)])
def test_printer_runs_match_the_reference_record_by_record(fmt, wide):
    """Whole runs (one iter_unpack each), a record of another size alone, and a
    record naming no filter: the lines equal the reference's, the bad ones (short,
    or naming no filter) counted as undecodable in either format."""
    recs = [record(saddr=s, daddr=d, family=f, srtt=rtt, ts=ts, sport=sp, dport=dp, hook=h, cgroup_id=cg)
            for s, d, f in (("10.178.0.5", "172.217.161.206", 2), ("2001:db8::1234:5678", "::1", 10))
            for rtt in (0, 999, 1001, 123456) for ts in (1, 987_654_321_012)
            for sp, dp in ((65535, 0), (47090, 80)) for h in (1, 2, 77) for cg in (0, 7777)]
    bad = record(gen=0)
    longer = record(srtt=5) + b"tail"
    sink = _Sink()
    printer = Printer(fmt, sink, lines=lines(), wide=wide)
    offset = printer._offset
    runs = [_run(recs[:10]), Run(longer, 0), Run(record()[:60], 0), _run(recs[10:] + [bad] + recs[:3])]
    json_lines = printer.records(runs, want_json=True)
    assert printer.flush()
    good = recs[:10] + [longer] + recs[10:] + recs[:3]

    def formatted(ev: events.Event, at: int) -> str:
        return reference.format_table(ev, at, wide) if fmt == "table" else reference.format_json(ev, at)

    assert sink.text == "\n".join(formatted(decode(r), offset) for r in good) + "\n"
    assert json_lines == [reference.format_json(decode(r), offset) for r in good]
    assert printer.undecodable == 2  # the short record and the one naming no filter
    assert printer.printed == len(good)
    assert printer.header == (events.WIDE_HEADER if wide else events.HEADER)


@pytest.mark.parametrize("fmt,show", [("table", True), ("json", True), ("table", False)],
                         ids=["table", "json", "histogram"])
def test_a_record_naming_no_filter_is_counted_alike_in_every_mode(fmt, show):
    sink = _Sink()
    printer = Printer(fmt, sink, show=show, lines=lines())
    printer.records([_run([record(), record(gen=GEN + 5), record()])])
    assert printer.flush()
    assert printer.printed == 2 and printer.undecodable == 1
