"""Issue 24's measurements: what a filter's breakdown (`by`) costs.

- The kernel, at connection end (bench/inproc.kernel_cost's method: the kernel's BPF
  statistics, each program attached alone in turn, the same connload traffic): ns per
  run for matching sockets, the bench's 9 host filters as they are and the same
  filters `by raddr`, `by raddr/24`, `by rport` and `by cgroup`, one tracer each, in
  the same rounds; per round the ratio with a breakdown ÷ without, and its median.
  Non-matching sockets on the same programs, and on main's program (the merge base's
  object, the same filters written in its maps): a breakdown must leave them alone.
- The live sampler: ns per sampled segment of a bulk transfer, the same filter with
  and without `by raddr`, attached in turns.
- GET /metrics with 1,000 filters, each `by raddr` and holding 8 groups (written into
  the pinned groups map before the scrapes: the kernel keeps what it is given), while
  connload's events flow, beside the same 1,000 filters without a breakdown: latency
  (one client back to back), bytes and series under the default bound.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import common as C
from common import FILTERS, LoadGen, log, median
from inproc import BULK_DST, BULK_SRC, _attached, _bulk, _Prog, _runs, _window

from ttcp import syscalls
from ttcp.elf_loader import Collection
from ttcp.errors import TtcpError
from ttcp.kernel.attach import attach
from ttcp.maps import Array, PerCpuArray, RingBuffer
from ttcp.rtt import filters as F
from ttcp.rtt import groups as G
from ttcp.rtt.filter_table import STATS_HEAD, STATS_SIZE
from ttcp.rtt.histogram import HIST
from ttcp.rtt.table_rules import TableRules
from ttcp.rtt.tracer import PROGRAM_OF_MODE, SAMPLER_OF_MODE, Tracer

RING = 8 << 20
BREAKDOWNS = ("raddr", "raddr/24", "rport", "cgroup")
GROUPS_PER_FILTER = 8  # in the /metrics measurement: more than --metrics-groups' 5 shown


def _tracer_prog(tracers: list[Tracer], mode: str, by: str | None) -> _Prog:
    tr = Tracer(ringbuf_size=RING)
    tracers.append(tr)
    tr.open_maps()
    tr.add_filters(F.parse(a if by is None else f"{a} by {by}") for a in FILTERS)
    prog = tr.collection.load_program(PROGRAM_OF_MODE[mode])
    return _Prog(by or "plain", prog.fd, lambda: attach(prog.kind, prog.fd, prog.attach_btf_id), tr.ring)


def _main_object(workdir: Path) -> Path:
    """main's object at the merge base: the program before groups."""
    base = subprocess.run(["git", "-C", str(C.ROOT), "merge-base", "HEAD", "main"], capture_output=True, text=True,
                          check=True).stdout.strip()
    path = workdir / "main.bpf.o"
    path.write_bytes(subprocess.run(["git", "-C", str(C.ROOT), "show", f"{base}:ttcp/data/tcprtt.bpf.o"],
                                    capture_output=True, check=True).stdout)
    return path


def _main_prog(loaders: list[Collection], mode: str, workdir: Path) -> _Prog:
    """main's program with FILTERS in its maps, as its table would write them (same
    keys, values, stamped stats slots and cfg: the same rules)."""
    loader = Collection(str(_main_object(workdir)))
    loaders.append(loader)
    loader.spec.set_max_entries("events", RING)
    fds = loader.create_maps()
    rules = TableRules(1024, 1024)
    planned = rules.plan_add([F.parse(a) for a in FILTERS])
    stats = PerCpuArray(fds["stats"], STATS_SIZE, 1024, "stats", owns_fd=False)
    for f, slot in planned:
        rules.added(f, slot)
        stats.put_all(slot.index, STATS_HEAD.pack(slot.gen, 0) + bytes(STATS_SIZE - STATS_HEAD.size))
        syscalls.map_update(fds["hosts"], F.host_key(f), F.value_of(f, slot.index, slot.gen))
    bss = loader.spec.maps[".bss"]
    Array(fds[".bss"], bss.value_size, 1, ".bss", owns_fd=False).put(
        0, rules.config().pack().ljust(bss.value_size, b"\0"))
    prog = loader.load_program(PROGRAM_OF_MODE[mode])
    return _Prog("main", prog.fd, lambda: attach(prog.kind, prog.fd, prog.attach_btf_id),
                 RingBuffer(fds["events"]))


def kernel_cost(gen: LoadGen, n: int, rounds: int, workdir: Path, mode: str = "tp_btf") -> dict[str, Any]:
    """ns per run, matching and not, with and without each breakdown (module docstring)."""
    tracers: list[Tracer] = []
    loaders: list[Collection] = []
    out: dict[str, Any] = {"mode": mode, "conns_per_round": n, "rounds": rounds}
    try:
        progs = [_tracer_prog(tracers, mode, None)] + [_tracer_prog(tracers, mode, by) for by in BREAKDOWNS]
        try:
            progs.append(_main_prog(loaders, mode, workdir))
        except (TtcpError, OSError, subprocess.CalledProcessError) as e:
            out["main_error"] = str(e).splitlines()[0]
        runs: dict[str, dict[str, list[float]]] = {p.name: {"non": [], "match": []} for p in progs}
        for i in range(rounds):
            for prog in progs[i % len(progs):] + progs[:i % len(progs)]:  # each first in turn
                r = runs[prog.name]
                with _attached(prog):
                    ns, cnt, _ = _window(prog, lambda: gen.client(n, C.OTHER_CLIENT, C.CLIENT_COUNT, C.OTHER_SERVER,
                                                                  C.PORT_OTHER))
                    non = ns / cnt if cnt else 0.0
                    r["non"].append(non)
                    ns, cnt, sent = _window(prog, lambda: gen.client(n, C.CLIENT_BASE, C.CLIENT_COUNT, C.SERVER,
                                                                     C.PORT_LOAD))
                    if sent:
                        r["match"].append((ns - (cnt - sent) * non) / sent)
        plain = runs["plain"]["match"]
        for name, r in runs.items():
            res: dict[str, Any] = {"match_ns": median(r["match"]), "nonmatch_ns": median(r["non"]),
                                   "runs_match": r["match"], "runs_nonmatch": r["non"]}
            if name not in ("plain", "main") and len(r["match"]) == len(plain):
                res["ratio"] = median(a / b for a, b in zip(r["match"], plain, strict=True))  # same round
            out[name] = res
            log(f"   kernel {mode} {name}: matching {res['match_ns'] or -1:.0f} ns/run"
                + (f" (x{res['ratio']:.3f} of plain)" if "ratio" in res else "")
                + f", non-matching {res['nonmatch_ns'] or -1:.0f} ns/run")
        for tr, by in zip(tracers[1:], BREAKDOWNS, strict=True):
            assert tr.table is not None
            f = F.parse(f"{FILTERS[0]} by {by}")
            found = tr.table.groups([f])[f]
            out[by]["groups_of_the_server_filter"] = found.live  # the clients' ends: 8 addresses, ...
        out["drops"] = {by or "plain": tr.drops() for tr, by in zip(tracers, (None, *BREAKDOWNS), strict=True)}
    finally:
        for tr in tracers:
            tr.close()
        for loader in loaders:
            loader.close()
    return out


def sampling_cost(gen: LoadGen, nbytes: int, pairs: int) -> dict[str, Any]:
    """ns per sampled segment of a bulk transfer between two filtered addresses,
    without a breakdown and `by raddr` (two tracers, their samplers in turns)."""
    out: dict[str, Any] = {"bytes": nbytes, "pairs": pairs}
    tracers: list[Tracer] = []
    try:
        progs = []
        for by in (None, "raddr"):
            tr = Tracer(ringbuf_size=RING)
            tracers.append(tr)
            tr.open_maps()
            tr.add_filters(F.parse(a if by is None else f"{a} by {by}") for a in (BULK_SRC, BULK_DST))
            mode = tr.enable_sampling(log=lambda _msg: None).mode
            tr.disable_sampling()
            loaded = tr.collection.load_program(SAMPLER_OF_MODE[mode])
            progs.append(_Prog(by or "plain", loaded.fd,
                               lambda loaded=loaded: attach(loaded.kind, loaded.fd, loaded.attach_btf_id), None))
            out["mode"] = mode
        per: dict[str, list[float]] = {p.name: [] for p in progs}
        for i in range(pairs):
            for prog in progs[i % 2:] + progs[:i % 2]:
                with _attached(prog):
                    ns0, cnt0 = _runs(prog.fd)
                    _bulk(gen, BULK_SRC, BULK_DST, nbytes)
                    ns1, cnt1 = _runs(prog.fd)
                per[prog.name].append((ns1 - ns0) / max(cnt1 - cnt0, 1))
        out.update({name: median(v) for name, v in per.items()}, runs=per,
                   ratio=median(a / b for a, b in zip(per["raddr"], per["plain"], strict=True)))
        log(f"   sampler ({out['mode']}): {out['plain'] or -1:.0f} ns per sampled segment, by raddr "
            f"{out['raddr'] or -1:.0f} (x{out['ratio'] or -1:.3f})")
    except (TtcpError, subprocess.CalledProcessError) as e:
        out["error"] = str(e).splitlines()[0]
    finally:
        for tr in tracers:
            tr.close()
    return out


def by_filters(n: int) -> list[str]:
    """n host filters (FILTERS first, 127.1.0.0/16 carries no traffic), each `by raddr`."""
    plain = FILTERS + [f"127.1.{i // 256}.{i % 256}" for i in range(n - len(FILTERS))]
    return [f"{a} by raddr" for a in plain]


def fill_groups(pin_dir: Path, texts: list[str], per_filter: int) -> int:
    """Write `per_filter` groups of each filter of `texts` into the groups map pinned in
    `pin_dir` (its slot and generation from the pinned hosts map); returns how many."""
    hosts_fd, groups_fd = syscalls.obj_get(pin_dir / "hosts"), syscalls.obj_get(pin_dir / "groups")
    try:
        value_size = syscalls.map_info(hosts_fd).value_size
        now = time.monotonic_ns()
        written = 0
        for i, text in enumerate(texts):
            f = F.parse(text)
            raw = syscalls.map_lookup(hosts_fd, F.host_key(f), value_size)
            if raw is None:
                continue
            slot, gen = F.VALUE.unpack(raw)[:2]
            for g in range(per_filter):
                count = 1 + (i + g) % 50
                buckets = [0] * 26
                buckets[6 + g % 8] = count
                closed = HIST.pack(count, count * (1 << (6 + g % 8)), *buckets)
                key = G.GroupKey(F.ByKind.RADDR, F.address_bytes(f"10.{g}.{i // 256}.{i % 256}")).pack(slot, gen)
                syscalls.map_update(groups_fd, key, G.GROUP_HEAD.pack(now, now) + closed + bytes(HIST.size))
                written += 1
        return written
    finally:
        syscalls.close(hosts_fd)
        syscalls.close(groups_fd)


@contextmanager
def pin_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ttcp-bench-groups-", dir="/sys/fs/bpf"))
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


def metrics(measure: Callable[[list[str], list[str], Callable[[], None] | None], dict[str, Any]],
            filters: int) -> dict[str, Any]:
    """`measure(filters, extra_args, prepare)`: run.metrics_under_load with these filters."""
    out: dict[str, Any] = {"filters": filters, "groups_per_filter": GROUPS_PER_FILTER}
    plain = [t.removesuffix(" by raddr") for t in by_filters(filters)]
    log("   /metrics, 1,000 filters without a breakdown")
    out["plain"] = measure(plain, [], None)
    with pin_dir() as pins:
        texts = by_filters(filters)
        log(f"   /metrics, 1,000 filters by raddr, {GROUPS_PER_FILTER} groups each")
        out["by_raddr"] = measure(texts, ["--pin", str(pins)],
                                  lambda: out.__setitem__("groups_written", fill_groups(pins, texts,
                                                                                         GROUPS_PER_FILTER)))
    return out


def report(res: dict[str, Any]) -> list[str]:
    """The stage's figures, as markdown lines."""
    lines: list[str] = []
    k = res.get("groups_kernel", {})
    if "plain" in k:
        lines += [(f"Connection end ({k['mode']}), ns per run, medians of {k['rounds']} rounds of "
                  f"{k['conns_per_round']:,} connections (both ends filtered):"), "",
                  "| program | matching | ÷ plain (same round) | non-matching |", "|---|---|---|---|"]
        for name in ("main", "plain", *BREAKDOWNS):
            r = k.get(name)
            if r is None:
                continue
            ratio = f"{r['ratio']:.3f}" if r.get("ratio") else "-"
            label = {"main": "main (before groups)", "plain": "9 host filters"}.get(name, f"the same, by {name}")
            lines.append(f"| {label} | {r['match_ns'] or 0:.0f} | {ratio} | {r['nonmatch_ns'] or 0:.0f} |")
    s = res.get("groups_sampling", {})
    if "ratio" in s and s["ratio"] is not None:
        lines += ["", (f"Live sampler ({s['mode']}): {s['plain']:.0f} ns per sampled segment, by raddr "
                  f"{s['raddr']:.0f} (x{s['ratio']:.3f}, {s['pairs']} pairs of {s['bytes'] / 1e9:.1f} GB).")]
    m = res.get("groups_metrics", {})
    rows = []
    for key, label in (("plain", "1,000 filters"), ("by_raddr", (f"1,000 filters by raddr, "
                                                                f"{m.get('groups_per_filter')} groups each"))):
        r = m.get(key, {})
        if "bytes" not in r:
            rows.append(f"| {label} | - | - | - | {r.get('error', 'not measured')} |")
            continue
        rows.append(f"| {label} | {r['bytes'] / 1e6:.2f} MB | {r['series']:,} | {r.get('p50_ms', 0):.1f} / "
                    f"{r.get('p99_ms', 0):.1f} | {r.get('events_per_s', 0):,.0f} events/s |")
    if rows:
        lines += ["", "GET /metrics, default bound, one client back to back while connload's events flow:", "",
                  "| filters | size | series | p50 / p99 ms | meanwhile |", "|---|---|---|---|---|", *rows]
    return lines
