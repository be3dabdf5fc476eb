"""Measurements through ttcp's Python API, in this process: the kernel time of
one run of ttcp's program (matching and non-matching sockets) beside the
programs it is compared with (an empty program, the least a reporting program
does, the previous release's program, the program before workload filters, and
ttcp's own with a workload filter in the table), what live sampling costs, and
how fast the ring-buffer reader decodes and formats records from a full ring.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    BEFORE_WORKLOADS,
    BENCH,
    CLIENT_BASE,
    CLIENT_COUNT,
    FILTERS,
    OTHER_CLIENT,
    OTHER_SERVER,
    PORT_LOAD,
    PORT_OTHER,
    PREVIOUS,
    ROOT,
    SERVER,
    LoadGen,
    log,
    median,
)

from ttcp import syscalls
from ttcp.elf_loader import Collection
from ttcp.errors import TtcpError
from ttcp.kernel.attach import attach
from ttcp.kernel.btf import read_vmlinux_btf
from ttcp.maps import RingBuffer
from ttcp.obj import asm
from ttcp.obj.btf import KIND_TYPEDEF
from ttcp.obj.sections import classify
from ttcp.output import Printer
from ttcp.rtt import events
from ttcp.rtt import filters as F
from ttcp.rtt.tracer import DEFAULT_RINGBUF_SIZE, PROGRAM_OF_MODE, SAMPLER_OF_MODE, Tracer
from ttcp.workloads.resolver import Resolver

EMPTY_PROGRAM = asm.RETURN_0  # r0 = 0; exit: the cheapest program the hook can run
RING = 8 << 20  # holds every event of a window: each matching run sends its event
BULK_SRC, BULK_DST, BULK_PORT = "127.0.7.40", "127.0.7.41", 24653  # sampled, both ends filtered
BULK_OTHER_SRC, BULK_OTHER_DST = "127.0.7.42", "127.0.7.43"  # sampling on, no filter


def _tracer(mode: str, ringbuf_size: int = RING, extra: tuple[str, ...] = ()) -> Tracer:
    tr = Tracer(ringbuf_size=ringbuf_size)
    try:
        tr.open_maps()
        tr.add_filters(F.parse(a) for a in (*FILTERS, *extra))
        tr.attach(mode, log=lambda _msg: None)
    except BaseException:
        tr.close()
        raise
    return tr


@dataclass
class _Prog:
    """One program under test: its fd, how to attach it, the ring it sends to."""

    name: str
    fd: int
    attach: Callable[[], Any]  # -> a Link (closed to detach)
    ring: RingBuffer | None


def _runs(fd: int) -> tuple[int, int]:
    info = syscalls.prog_info(fd)
    return info.run_time_ns, info.run_cnt


def _window(prog: _Prog, traffic: Callable[[], Any]) -> tuple[int, int, int]:
    """Run `traffic()`; the program's (ns, runs) gained and the events it sent."""
    if prog.ring is not None:
        prog.ring.read_batch()
    ns0, cnt0 = _runs(prog.fd)
    traffic()
    time.sleep(0.05)  # the last sockets are destroyed just after connload returns
    ns1, cnt1 = _runs(prog.fd)
    sent = len(prog.ring.read_batch()) if prog.ring is not None else 0
    return ns1 - ns0, cnt1 - cnt0, sent


def _empty(hook: str) -> _Prog:
    """r0 = 0; exit on `hook` (a tp_btf tracepoint): the floor of the hook and the statistics."""
    kind = classify(f"tp_btf/{hook}")
    ids = read_vmlinux_btf().ids_by_name(kind.btf_target_name or "", KIND_TYPEDEF)
    if not ids:
        raise TtcpError(f"no btf_trace_{hook} in vmlinux BTF")
    fd = syscalls.prog_load(kind.prog_type, EMPTY_PROGRAM, "GPL", name="bench_empty",
                            expected_attach_type=kind.attach_type, attach_btf_id=ids[0])
    return _Prog(f"empty tp_btf/{hook}", fd, lambda: attach(kind, fd), None)


def _from_object(loader: Collection, program: str, name: str) -> _Prog:
    prog = loader.load_program(program)
    ring = RingBuffer(loader.map_fds["events"])
    return _Prog(name, prog.fd, lambda: attach(prog.kind, prog.fd, prog.attach_btf_id), ring)


def _historic(workdir: Path, commit: str, name: str) -> tuple[Collection, dict[str, int]]:
    """ttcp's object as `commit` shipped it (git history), its maps created: the loader and their fds."""
    path = workdir / f"{name}.bpf.o"
    path.write_bytes(subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:ttcp/data/tcprtt.bpf.o"],
                                    capture_output=True, check=True).stdout)
    loader = Collection(str(path))
    loader.spec.set_max_entries("events", RING)
    return loader, loader.create_maps()


def _previous(workdir: Path) -> Collection:
    """The previous release's object (git history), its filter map holding the same addresses."""
    loader, fds = _historic(workdir, PREVIOUS, "previous")
    for a in FILTERS:  # key: the 16-byte address; value: its two counters
        syscalls.map_update(fds["filter"], F.address_bytes(a), bytes(16))
    return loader


def _before_workloads(workdir: Path) -> Collection:
    """The program before workload filters (git history, BEFORE_WORKLOADS), its table
    holding the same exact source addresses, written in that layout (keys without a
    wid; cfg: kinds, host bits)."""
    loader, fds = _historic(workdir, BEFORE_WORKLOADS, "before-workloads")
    bits = 0
    for slot, a in enumerate(FILTERS):
        addr = F.address_bytes(a)
        syscalls.map_update(fds["hosts"], struct.pack("=BxH16s", 1, 0, addr), F.VALUE.pack(slot, 1, 128))
        bits |= 1 << F.host_bit(addr)
    cfg = struct.pack("=I", 1 << 2) + bits.to_bytes(F.HOST_BITS // 8, "little") + bytes(F.HOST_BITS // 8)
    syscalls.map_update(fds[".bss"], struct.pack("=I", 0), cfg)  # kinds: KIND_SRC_HOST only
    return loader


def _floor(workdir: Path) -> Collection:
    """bench/floor.bpf.c, built with the flags of `make bpf`; its hosts hash holds the filters."""
    clang = shutil.which("clang")
    if clang is None:
        raise TtcpError("no clang to build bench/floor.bpf.c")
    path = workdir / "floor.bpf.o"
    subprocess.run([clang, "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror", "-c",
                    str(BENCH / "floor.bpf.c"), "-o", str(path)], check=True)
    loader = Collection(str(path))
    fds = loader.create_maps()
    for a in FILTERS:
        syscalls.map_update(fds["hosts"], F.host_key(F.parse(a)), bytes(8))
    return loader


@contextmanager
def _attached(prog: _Prog) -> Iterator[None]:
    link = prog.attach()
    try:
        yield
    finally:
        link.close()


def kernel_cost(gen: LoadGen, n: int, rounds: int, workdir: Path) -> dict[str, Any]:
    """ns per run for non-matching and matching sockets (stats must be enabled), for
    ttcp's program (tp_btf, tracepoint) and, on the same hook and traffic, an empty
    program, the least a reporting program does (bench/floor.bpf.c) and the previous
    release's program; each attached alone in turn, `rounds` times round, the order
    rotated from round to round.

    Non-matching: connections between two unfiltered addresses; every run in
    that window counts (other traffic on the machine is non-matching too).
    Matching: both ends filtered, two events per connection; the runs in that
    window that sent no event are charged the non-matching cost first. The ring
    holds a whole window, so no run is a drop.
    """
    progs: list[_Prog] = []
    tracers: dict[str, Tracer] = {}
    loaders: list[Collection] = []
    out: dict[str, Any] = {}
    resolver = Resolver.for_host()
    other = workload_cgroup(resolver)  # a cgroup filter's cgroup, beside the one the traffic runs in

    def add(key: str, make: Callable[[], _Prog]) -> None:
        try:
            progs.append(make())
            progs[-1].name = key
        except (TtcpError, OSError, subprocess.CalledProcessError) as e:
            out[key] = {"error": str(e).splitlines()[0]}

    def ttcp(mode: str, extra: tuple[str, ...] = (), key: str = "") -> _Prog:
        tr = Tracer(ringbuf_size=RING, resolver=resolver)
        tracers[key or mode] = tr
        tr.open_maps()
        tr.add_filters(F.parse(a) for a in (*FILTERS, *extra))
        prog = tr.collection.load_program(PROGRAM_OF_MODE[mode], stats=True)  # attached by the rounds below
        out[f"verifier_{key or mode}"] = prog.verifier_stats.splitlines()[-1:]
        return _Prog(mode, prog.fd, lambda: attach(prog.kind, prog.fd, prog.attach_btf_id), tr.ring)

    def loaded(make: Callable[[Path], Collection], program: str) -> Callable[[], _Prog]:
        def build() -> _Prog:
            loader = make(workdir)
            loaders.append(loader)
            return _from_object(loader, program, program)
        return build

    try:
        add("empty_tp_btf", lambda: _empty("tcp_destroy_sock"))
        add("floor", loaded(_floor, "floor_report"))
        add("previous", loaded(_previous, "tcprtt_tp_btf"))
        add("before_workloads", loaded(_before_workloads, "tcprtt_tp_btf"))
        for mode in ("tp_btf", "tracepoint"):
            add(mode, lambda mode=mode: ttcp(mode))
        if other is not None:
            add("workload", lambda: ttcp("tp_btf", (f"cgroup {other}",), "workload"))
        else:
            out["workload"] = {"error": "no cgroup below the bench's own to put a filter on"}
        runs: dict[str, dict[str, list[float]]] = {p.name: {"non": [], "match": [], "strays": [],
                                                            "per_conn": []} for p in progs}
        for i in range(rounds):
            for prog in progs[i % len(progs):] + progs[:i % len(progs)]:  # each first in turn: no order bias
                r = runs[prog.name]
                with _attached(prog):
                    ns, cnt, stray = _window(prog, lambda: gen.client(n, OTHER_CLIENT, CLIENT_COUNT,
                                                                      OTHER_SERVER, PORT_OTHER))
                    non = ns / cnt if cnt else 0.0
                    r["non"].append(non)
                    r["strays"].append(stray)  # events from unfiltered traffic: must stay 0
                    ns, cnt, sent = _window(prog, lambda: gen.client(n, CLIENT_BASE, CLIENT_COUNT,
                                                                     SERVER, PORT_LOAD))
                    r["per_conn"].append(ns / n)
                    if prog.ring is None:  # no events: every run of the window counts
                        r["match"].append(ns / cnt if cnt else 0.0)
                    elif sent:
                        r["match"].append((ns - (cnt - sent) * non) / sent)
        for prog in progs:
            r = runs[prog.name]
            out[prog.name] = {
                "nonmatch_ns": median(r["non"]), "match_ns": median(r["match"]),
                "nonmatch_min": min(r["non"]), "match_min": min(r["match"]) if r["match"] else None,
                "ns_per_conn": median(r["per_conn"]), "runs_nonmatch": r["non"], "runs_match": r["match"],
                "nonmatching_events": sum(r["strays"]), "conns_per_round": n, "rounds": rounds,
            }
            log(f"   kernel {prog.name}: non-matching {out[prog.name]['nonmatch_ns']:.0f} ns/run, "
                f"matching {out[prog.name]['match_ns'] or -1:.0f} ns/run")
        for mode, tr in tracers.items():
            out[mode]["drops"] = tr.drops()
    finally:
        for prog in progs:
            if prog.ring is None:
                syscalls.close(prog.fd)
        for tr in tracers.values():
            tr.close()
        for loader in loaders:
            loader.close()
        resolver.close()
    out["empty"] = out.pop("empty_tp_btf", {})
    out["cgroup"] = {"traffic": own_cgroup(), "filter": other}
    return out


def own_cgroup() -> str:
    """This process's cgroup-v2 path (the 0:: line of /proc/self/cgroup)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""


def workload_cgroup(resolver: Resolver) -> str | None:
    """A sibling of this process's cgroup (run.py put the bench in one two levels down), for
    a cgroup filter that selects none of the traffic: every non-matching socket then
    costs the walk and one lookup at that level."""
    mine = own_cgroup()
    if resolver.tree is None or mine.count("/") < 1 or mine == "/":
        return None
    sibling = mine.rsplit("/", 1)[0] + "/other"
    resolver.tree.dir_of(sibling).mkdir(exist_ok=True)
    return sibling


def _bulk(gen: LoadGen, src: str, dst: str, nbytes: int) -> float:
    """Bytes per second of one bulk transfer through one loopback connection."""
    r = subprocess.run([str(gen.exe), "bulk", src, dst, str(BULK_PORT), str(nbytes)], capture_output=True,
                       text=True, check=True)
    return float(r.stdout.split()[2])


def sampling_cost(gen: LoadGen, nbytes: int, pairs: int, workdir: Path) -> dict[str, Any]:
    """Live sampling, its program attached and detached (loaded once, the hook
    `--sample` picks here): `pairs` pairs of bulk transfers of `nbytes` through one
    connection whose two ends are filtered, sampling off and on, in turns (off-on,
    on-off, ...); slowdown = 1 - median(on/off); the sampler's ns per sampled
    segment over the on runs. A third arm in the same turns attaches an empty
    program to the same hook instead: its "slowdown" is the hook's own cost plus the
    noise floor of this measurement. Then, between unfiltered addresses, the sampler beside
    one hash lookup on the same hook and traffic (bench/floor.bpf.c floor_lookup)
    and an empty program there."""
    out: dict[str, Any] = {"bytes": nbytes, "pairs": pairs}
    tr = _tracer("auto", extra=(BULK_SRC, BULK_DST))
    floor = None
    progs: list[_Prog] = []
    try:
        out["mode"] = tr.enable_sampling(log=lambda _msg: None).mode
        tr.disable_sampling()
        loaded = tr.collection.load_program(SAMPLER_OF_MODE[out["mode"]])
        sampler = _Prog("ttcp sampler", loaded.fd,
                        lambda: attach(loaded.kind, loaded.fd, loaded.attach_btf_id), None)
        empty = _empty("tcp_probe")
        progs = [empty]  # closed below
        _bulk(gen, BULK_SRC, BULK_DST, nbytes // 4)  # warm-up
        off, on, bare, ns, cnt = [], [], [], 0, 0
        samples0 = _sampled(tr)
        arms = ("off", "on", "empty")
        for i in range(pairs):
            for arm in arms[i % 3:] + arms[:i % 3]:  # each arm first, second and third in turn
                if arm == "off":
                    off.append(_bulk(gen, BULK_SRC, BULK_DST, nbytes))
                elif arm == "empty":
                    with _attached(empty):
                        bare.append(_bulk(gen, BULK_SRC, BULK_DST, nbytes))
                else:
                    with _attached(sampler):
                        ns0, cnt0 = _runs(sampler.fd)
                        on.append(_bulk(gen, BULK_SRC, BULK_DST, nbytes))
                        ns1, cnt1 = _runs(sampler.fd)
                    ns, cnt = ns + ns1 - ns0, cnt + cnt1 - cnt0
        out.update(off_Bps=median(off), on_Bps=median(on), empty_Bps=median(bare), runs_off=off, runs_on=on,
                   runs_empty=bare,
                   slowdown_pct=100 * (1 - median(a / b for a, b in zip(on, off, strict=True))),
                   empty_slowdown_pct=100 * (1 - median(a / b for a, b in zip(bare, off, strict=True))),
                   sampled_ns=ns / cnt if cnt else None, segments_per_gb=cnt / pairs / (nbytes / 1e9),
                   samples=_sampled(tr) - samples0, sampler_runs=cnt)
        log(f"   sampling ({out['mode']}): {median(off) / 1e9:.2f} -> {median(on) / 1e9:.2f} GB/s "
            f"({out['slowdown_pct']:.1f}%), {out['sampled_ns'] or -1:.0f} ns per sampled segment")
        floor = _floor(workdir)
        progs = [sampler, _from_object(floor, "floor_lookup", "one lookup"), empty]
        nonmatch: dict[str, list[float]] = {p.name: [] for p in progs}
        for _ in range(max(2, pairs // 2)):
            for prog in progs:
                with _attached(prog):
                    ns0, cnt0 = _runs(prog.fd)
                    _bulk(gen, BULK_OTHER_SRC, BULK_OTHER_DST, nbytes // 4)
                    ns1, cnt1 = _runs(prog.fd)
                nonmatch[prog.name].append((ns1 - ns0) / max(cnt1 - cnt0, 1))
        out["nonmatch"] = {k: median(v) for k, v in nonmatch.items()}
        out["nonmatch_runs"] = nonmatch
        log("   sampling, non-matching sockets: " + ", ".join(f"{k} {v or -1:.0f} ns/run"
                                                              for k, v in out["nonmatch"].items()))
    except (TtcpError, subprocess.CalledProcessError) as e:
        out["error"] = str(e).splitlines()[0]
    finally:
        if progs:
            syscalls.close(progs[-1].fd)  # the empty program; the others belong to their loaders
        if floor is not None:
            floor.close()
        tr.close()
    return out


def _sampled(tr: Tracer) -> int:
    assert tr.table is not None
    fs = [F.parse(BULK_SRC), F.parse(BULK_DST)]
    return sum(s.sampled.count for s in tr.table.stats(fs).values())


class _Devnull:
    """A text sink that only counts (Printer writes one string per drain)."""

    def __init__(self) -> None:
        self.chars = 0

    def write(self, s: str) -> int:
        self.chars += len(s)
        return len(s)

    def flush(self) -> None:
        return None


def reader_throughput(gen: LoadGen, fill_conns: int, rounds: int = 5) -> dict[str, Any]:
    """Records per second out of a full ring (the default size): copy only (one bytes
    copy per record, RingBuffer.read_batch: the baseline), decode, table, json (the
    CLI's own path: RingBuffer.read_runs then Printer.records). The variants take
    turns, `rounds` times; each rate is records per CPU second of this thread
    (thread_time: time the scheduler gave to other work on this shared machine is
    not charged), with the wall-clock rate beside it."""
    tr = _tracer("auto", ringbuf_size=DEFAULT_RINGBUF_SIZE)
    variants = ("raw", "decode", "table", "json")
    per: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    try:
        ring = tr.ring
        assert ring is not None
        for _ in range(rounds):
            for variant in variants:
                ring.read_batch()  # empty it
                gen.client(fill_conns)  # more events than the ring holds: it ends full
                time.sleep(0.05)
                pending = ring.pending_bytes()
                assert tr.table is not None
                printer = (Printer(variant, _Devnull(), lines=events.Lines(tr.table.names))
                           if variant in ("table", "json") else None)
                c0, t0 = time.thread_time(), time.perf_counter()
                if printer:  # the agent's drain(): one read_runs per wakeup, then the Printer
                    printer.records(ring.read_runs(events.EVENT_SIZE))
                    printer.flush()
                    n = printer.printed
                else:
                    batch = ring.read_batch()
                    if variant == "decode":
                        [events.decode(r, tr.table.names) for r in batch]
                    n = len(batch)
                cpu, wall = time.thread_time() - c0, time.perf_counter() - t0
                per[variant].append({"records": n, "cpu_s": cpu, "seconds": wall,
                                     "per_s": n / cpu if cpu else 0.0, "wall_per_s": n / wall if wall else 0.0,
                                     "pending_bytes": pending})
        out: dict[str, Any] = {"rounds": rounds, "ring_bytes": ring.data_size}
        for variant, runs in per.items():
            out[variant] = {"records": median(r["records"] for r in runs),
                            "cpu_s": median(r["cpu_s"] for r in runs),
                            "seconds": median(r["seconds"] for r in runs),
                            "per_s": median(r["per_s"] for r in runs),
                            "wall_per_s": median(r["wall_per_s"] for r in runs), "runs": runs}
            log(f"   reader {variant}: {out[variant]['records']:.0f} records, "
                f"{out[variant]['per_s']:,.0f}/CPU-s ({out[variant]['wall_per_s']:,.0f}/s wall), "
                f"median of {rounds}")
        for variant in ("table", "json"):  # the ratio of each round, then their median
            out[f"{variant}_ratio"] = median(f["per_s"] / r["per_s"] for f, r in zip(per[variant], per["raw"],
                                                                                   strict=True) if r["per_s"])
    finally:
        tr.close()
    return out
