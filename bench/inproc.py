"""Measurements through ttcp's Python API, in this process: the kernel time of
one run of ttcp's program (matching and non-matching sockets) and how fast the
ring-buffer reader decodes and formats records from a full ring.
"""

from __future__ import annotations

import time
from typing import Any

from common import (
    CLIENT_BASE,
    CLIENT_COUNT,
    FILTERS,
    OTHER_CLIENT,
    OTHER_SERVER,
    PORT_LOAD,
    PORT_OTHER,
    SERVER,
    LoadGen,
    log,
    median,
)

from ttcp import asm, events, syscalls
from ttcp import filters as F
from ttcp.attach import attach
from ttcp.btf import KIND_TYPEDEF
from ttcp.elf_loader import read_vmlinux_btf
from ttcp.errors import TtcpError
from ttcp.output import Printer
from ttcp.sections import classify
from ttcp.tracer import Tracer

EMPTY_PROGRAM = asm.RETURN_0  # r0 = 0; exit: the cheapest program the hook can run


def _tracer(mode: str) -> Tracer:
    tr = Tracer()
    try:
        tr.open_maps()
        tr.add_filters(F.parse(a) for a in FILTERS)
        tr.attach(mode, log=lambda _msg: None)
    except BaseException:
        tr.close()
        raise
    return tr


def _window(tr: Tracer, traffic: Any) -> tuple[int, int, int, float]:
    """Run `traffic()`; the program's (ns, runs) gained and the events it sent."""
    fd = tr.prog_fd()
    assert tr.ring is not None
    tr.ring.consume(lambda _r: None)
    a = syscalls.prog_info(fd)
    rate = traffic()
    time.sleep(0.05)  # the last sockets are destroyed just after connload returns
    b = syscalls.prog_info(fd)
    sent = tr.ring.consume(lambda _r: None)
    return b.run_time_ns - a.run_time_ns, b.run_cnt - a.run_cnt, sent, rate


def empty_program_floor(gen: LoadGen, n: int, rounds: int) -> dict[str, Any]:
    """ns per run of an empty tp_btf/tcp_destroy_sock program on the same traffic.

    This is what the hook, the statistics and this machine cost before any
    of ttcp's work: the floor under the numbers of ttcp's program.
    """
    kind = classify("tp_btf/tcp_destroy_sock")
    ids = read_vmlinux_btf().ids_by_name(kind.btf_target_name or "", KIND_TYPEDEF)
    if not ids:
        return {"error": "no btf_trace_tcp_destroy_sock in vmlinux BTF"}
    fd = syscalls.prog_load(kind.prog_type, EMPTY_PROGRAM, "GPL", name="bench_empty",
                            expected_attach_type=kind.attach_type, attach_btf_id=ids[0])
    try:
        with attach(kind, fd):
            per_run = []
            for _ in range(rounds):
                a = syscalls.prog_info(fd)
                gen.client(n, OTHER_CLIENT, CLIENT_COUNT, OTHER_SERVER, PORT_OTHER)
                time.sleep(0.05)
                b = syscalls.prog_info(fd)
                if b.run_cnt > a.run_cnt:
                    per_run.append((b.run_time_ns - a.run_time_ns) / (b.run_cnt - a.run_cnt))
    finally:
        syscalls.close(fd)
    out = {"ns": median(per_run), "min": min(per_run) if per_run else None, "runs": per_run}
    log(f"   kernel floor (empty tp_btf program): {out['ns'] or -1:.0f} ns/run")
    return out


def kernel_cost(gen: LoadGen, n: int, rounds: int, modes: tuple[str, ...] = ("tp_btf", "tracepoint")
                ) -> dict[str, Any]:
    """ns per run for non-matching and matching sockets (stats must be enabled).

    Non-matching: connections between two unfiltered addresses; every run in
    that window counts (other traffic on the machine is non-matching too).
    Matching: both ends filtered, two events per connection; the runs in that
    window that sent no event are charged the non-matching cost first.
    """
    out: dict[str, Any] = {}
    try:
        out["empty_tp_btf"] = empty_program_floor(gen, n, rounds)
    except TtcpError as e:
        out["empty_tp_btf"] = {"error": str(e).splitlines()[0]}
    for mode in modes:
        try:
            tr = _tracer(mode)
        except TtcpError as e:
            out[mode] = {"error": str(e).splitlines()[0]}
            continue
        try:
            non, mat, per_conn, rates = [], [], [], []
            strays = 0
            drops0 = tr.drops()
            for _ in range(rounds):
                ns, runs, stray, _ = _window(tr, lambda: gen.client(n, OTHER_CLIENT, CLIENT_COUNT,
                                                                     OTHER_SERVER, PORT_OTHER))
                strays += stray  # events from unfiltered traffic: must stay 0
                non_ns = ns / runs if runs else 0.0
                non.append(non_ns)
                ns, runs, sent, r = _window(tr, lambda: gen.client(n, CLIENT_BASE, CLIENT_COUNT,
                                                                    SERVER, PORT_LOAD))
                rates.append(r[0])
                if sent:
                    mat.append((ns - (runs - sent) * non_ns) / sent)
                per_conn.append(ns / n)
            out[mode] = {
                "nonmatch_ns": median(non), "match_ns": median(mat), "ns_per_conn": median(per_conn),
                "nonmatch_min": min(non), "match_min": min(mat) if mat else None,
                "runs_nonmatch": non, "runs_match": mat, "drops": tr.drops() - drops0,
                "nonmatching_events": strays,
                "conns_per_round": n, "rounds": rounds, "rate": median(rates),
            }
            log(f"   kernel {mode}: non-matching {out[mode]['nonmatch_ns']:.0f} ns/run, "
                f"matching {out[mode]['match_ns'] or -1:.0f} ns/run")
        finally:
            tr.close()
    return out


class _Devnull:
    """A text sink that only counts (Printer writes one string per drain)."""

    def __init__(self) -> None:
        self.chars = 0

    def write(self, s: str) -> int:
        self.chars += len(s)
        return len(s)

    def flush(self) -> None:
        return None


def reader_throughput(gen: LoadGen, fill_conns: int) -> dict[str, Any]:
    """Records per second out of a full ring (the default size): raw copy, decode, table, json."""
    tr = _tracer("auto")
    out: dict[str, Any] = {}
    try:
        ring = tr.ring
        assert ring is not None
        for variant in ("raw", "decode", "table", "json"):
            ring.read_batch()  # empty it
            gen.client(fill_conns)  # more events than the ring holds: it ends full
            time.sleep(0.05)
            pending = ring.pending_bytes()
            printer = Printer(variant, _Devnull()) if variant in ("table", "json") else None
            # The CLI's own path: one read_batch per wakeup, then Printer.records.
            t0 = time.perf_counter()
            batch = ring.read_batch()
            if printer:
                printer.records(batch)
                printer.flush()
            elif variant == "decode":
                [events.decode(r) for r in batch]
            n = len(batch)
            dt = time.perf_counter() - t0
            out[variant] = {"records": n, "seconds": dt, "per_s": n / dt if dt else None,
                            "pending_bytes": pending}
            log(f"   reader {variant}: {n} records in {dt * 1e3:.0f} ms = {n / dt:,.0f}/s")
        out["ring_bytes"] = ring.data_size
    finally:
        tr.close()
    return out
