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


def record(saddr="127.0.0.2", daddr="127.0.0.1", ts=5_000_000_000, srtt=412, family=2, hook=2,
           sport=47090, dport=80, netns=4026531840, filter_side=1, filter_bits=128, filter_port=0) -> bytes:
    """A record laid out from struct event in the shipped object's BTF, field by
    field: independent of the `struct` format under test."""
    size, c_fields = shipped_struct("event")
    raw = bytearray(size)
    values = {"saddr": F.address_bytes(saddr), "daddr": F.address_bytes(daddr), "ts_ns": ts,
              "bytes_acked": 1234, "bytes_received": 5678, "srtt_us": srtt, "rttvar_us": 99,
              "total_retrans": 3, "netns": netns, "sport": sport, "dport": dport, "family": family,
              "hook": hook, "filter_side": filter_side, "filter_bits": filter_bits, "filter_port": filter_port}
    for name, value in values.items():
        where = c_fields[name].byte_range
        assert where is not None, name
        offset, width = where
        raw[offset:offset + width] = value if isinstance(value, bytes) else value.to_bytes(width, "little")
    return bytes(raw)


def test_event_size_matches_the_c_struct():
    assert events.EVENT_SIZE == shipped_struct("event")[0] == 88


def test_decode_every_field():
    ev = events.decode(record())
    assert (ev.saddr, ev.daddr, ev.sport, ev.dport) == ("127.0.0.2", "127.0.0.1", 47090, 80)
    assert (ev.rtt_us, ev.rttvar_us, ev.retrans, ev.bytes_acked, ev.bytes_received) == (412, 99, 3, 1234, 5678)
    assert (ev.netns, ev.family, ev.hook, ev.ts_ns) == (4026531840, 2, 2, 5_000_000_000)
    assert ev.filter == "127.0.0.2"


@pytest.mark.parametrize("side,bits,port,want", [
    (1, 128, 0, "10.178.0.5"),  # a plain address
    (1, 128, 1, "src 10.178.0.5 port 47090"),
    (2, 128, 0, "dst 172.217.161.206"),
    (2, 112, 1, "dst 172.217.0.0/16 port 80"),  # an IPv4 /16 is 96 + 16 bits of the 16-byte form
    (1, 104, 0, "src 10.0.0.0/8"),
    (2, 96, 0, "dst 0.0.0.0/0"),
    (2, 0, 0, "dst ::/0"),
])
def test_the_filter_an_event_names_is_rebuilt_from_the_event(side, bits, port, want):
    raw = record(saddr="10.178.0.5", daddr="172.217.161.206", filter_side=side, filter_bits=bits,
                 filter_port=port)
    assert events.decode(raw).filter == want
    assert json.loads(events.json_line(raw, 0))["filter"] == want


@pytest.mark.parametrize("side,bits", [(3, 128), (0, 128), (1, 129), (2, 255)])
def test_an_event_naming_no_filter_is_refused_in_every_format(side, bits):
    """One rule for the table, JSON and the plain decoder (histogram mode counts as JSON)."""
    raw = record(filter_side=side, filter_bits=bits)
    for read in (events.decode, lambda r: events.table_line(r, 0), lambda r: events.json_line(r, 0)):
        with pytest.raises(FormatError, match=rf"names no filter \(side {side}, prefix {bits}\)"):
            read(raw)


def test_every_side_and_prefix_names_a_filter_in_the_table_too():
    for side in (1, 2):
        for bits in range(129):
            events.table_line(record(filter_side=side, filter_bits=bits), 0)


def test_decode_refuses_short_records():
    with pytest.raises(FormatError, match="87 bytes"):
        events.decode(record()[:87])


def test_table_line_matches_the_original_ttcp_columns():
    ev = events.decode(record(saddr="10.178.0.5", daddr="172.217.161.206"))
    line = reference.format_table(ev, 0)
    assert line[19:] == " 10.178.0.5      47090  -> 172.217.161.206 80     0.412"
    assert events.HEADER == ("YYYY/MM/DD HH:MM:SS Src addr        Port   -> Dest addr       Port   RTT(ms)")


@pytest.mark.parametrize("us,text", [(0, "0.000"), (48, "0.048"), (1000, "1.000"), (123456, "123.456")])
def test_rtt_is_milliseconds_with_microsecond_precision(us, text):
    assert events.format_ms(us) == text


def test_ipv6_addresses_widen_the_column():
    ev = events.decode(record(saddr="2001:db8::1234:5678", daddr="::1", family=10))
    assert " 2001:db8::1234:5678 47090  -> ::1             80 " in reference.format_table(ev, 0)


def test_json_line_round_trips():
    ev = events.decode(record(family=10, saddr="::ffff:127.0.0.2"))
    d = json.loads(reference.format_json(ev, 1_700_000_000_000_000_000 - 5_000_000_000))
    assert d["saddr"] == "127.0.0.2" and d["family"] == "inet6" and d["rtt_us"] == 412
    assert d["rtt_ms"] == 0.412 and d["hook"] == "tp_btf" and d["netns"] == 4026531840
    assert d["filter"] == "127.0.0.2"
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
def test_fast_print_path_matches_the_event_formatters(saddr, daddr, family, srtt, hook):
    raw = record(saddr=saddr, daddr=daddr, family=family, srtt=srtt, ts=987_654_321_012, hook=hook,
                 sport=65535, dport=0, netns=2**32 - 1)
    for offset in (0, 1_700_000_000_123_456_789):
        ev = events.decode(raw)
        assert events.table_line(raw, offset) == reference.format_table(ev, offset)
        assert events.json_line(raw, offset) == reference.format_json(ev, offset)
        assert json.loads(events.json_line(raw, offset)) == reference.to_dict(ev, offset)
    for line in (events.table_line, events.json_line):
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


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_printer_runs_match_the_reference_record_by_record(fmt):
    """Whole runs (one iter_unpack each), a record of another size alone, and a
    record naming no filter: the lines equal the reference's, the bad ones (short,
    or naming no filter) counted as undecodable in either format."""
    recs = [record(saddr=s, daddr=d, family=f, srtt=rtt, ts=ts, sport=sp, dport=dp, hook=h)
            for s, d, f in (("10.178.0.5", "172.217.161.206", 2), ("2001:db8::1234:5678", "::1", 10))
            for rtt in (0, 999, 1001, 123456) for ts in (1, 987_654_321_012)
            for sp, dp in ((65535, 0), (47090, 80)) for h in (1, 2, 77)]
    bad = record(filter_side=3)
    longer = record(srtt=5) + b"tail"
    sink = _Sink()
    printer = Printer(fmt, sink)
    offset = printer._offset
    runs = [_run(recs[:10]), Run(longer, 0), Run(record()[:60], 0), _run(recs[10:] + [bad] + recs[:3])]
    json_lines = printer.records(runs, want_json=True)
    assert printer.flush()
    good = recs[:10] + [longer] + recs[10:] + recs[:3]
    formatted = reference.format_table if fmt == "table" else reference.format_json
    want = [formatted(events.decode(r), offset) for r in good]
    assert sink.text == "\n".join(want) + "\n"
    assert json_lines == [reference.format_json(events.decode(r), offset) for r in
                          recs[:10] + [longer] + recs[10:] + recs[:3]]
    assert printer.undecodable == 2  # the short record and the one naming no filter
    assert printer.printed == len(good)


@pytest.mark.parametrize("fmt,show", [("table", True), ("json", True), ("table", False)],
                         ids=["table", "json", "histogram"])
def test_a_record_naming_no_filter_is_counted_alike_in_every_mode(fmt, show):
    sink = _Sink()
    printer = Printer(fmt, sink, show=show)
    printer.records([_run([record(), record(filter_bits=200), record()])])
    assert printer.flush()
    assert (printer.printed, printer.undecodable) == (2, 1)
    assert sink.text.count("\n") == (2 if show else 0)
