"""Issue 25's measurements: what the bound on /metrics buys, and what the kernel's BPF
statistics (--bpf-stats) cost.

- /metrics with 1,000 filters, the default --metrics-max-series against no bound,
  sampling off and on: the answer's bytes and series, and GET /metrics latency
  while events flow (run.metrics_under_load, the same load as section 5b).
- The BPF statistics: an empty socket filter run BPF_PROG_TEST_RUN's loop of
  `repeat` runs (the kernel times the loop itself), statistics off and on in
  alternating pairs, each pair's difference kept: the cost every BPF program on
  the machine pays per run while they are on (two clock reads and a per-CPU
  update in bpf_prog_run). "Off" is checked to be off first: another process
  holding them on would leave nothing to compare (its pid is named).
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from common import log

from ttcp import syscalls
from ttcp.errors import BpfError
from ttcp.kernel.bpf_stats import sysctl_on
from ttcp.kernel.uapi import ProgType
from ttcp.obj import asm

PACKET = bytes(64)  # what the socket filter is run on (it never reads it)


def stats_holders() -> list[str]:
    """Who keeps the statistics on: processes holding a BPF_ENABLE_STATS fd, and the sysctl."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:bpf-stats" for fd in fds):
                found.append(f"pid {pid}")
        except OSError:
            continue
    return found + (["sysctl kernel.bpf_stats_enabled"] if sysctl_on() else [])


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return q[0], q[1], q[2]


def bpf_stats_cost(rounds: int, repeat: int) -> dict[str, Any]:
    """ns per run of an empty program with the statistics off and on, `rounds` pairs."""
    fd = syscalls.prog_load(ProgType.SOCKET_FILTER, asm.RETURN_0, "GPL", name="bench_stats")
    try:
        before = syscalls.prog_info(fd).run_cnt
        syscalls.prog_test_run_ns(fd, PACKET, 10)
        if syscalls.prog_info(fd).run_cnt != before:
            return {"error": f"the statistics are on already ({', '.join(stats_holders()) or 'unknown'}): "
                             "no 'off' to compare with"}
        off: list[float] = []
        on: list[float] = []
        reported: list[float] = []
        for i in range(rounds):
            for enabled in ((False, True) if i % 2 == 0 else (True, False)):
                if not enabled:
                    off.append(syscalls.prog_test_run_ns(fd, PACKET, repeat))
                    continue
                stats = syscalls.enable_stats()
                try:
                    info0 = syscalls.prog_info(fd)
                    on.append(syscalls.prog_test_run_ns(fd, PACKET, repeat))
                    info1 = syscalls.prog_info(fd)
                finally:
                    syscalls.close(stats)
                reported.append((info1.run_time_ns - info0.run_time_ns) / max(info1.run_cnt - info0.run_cnt, 1))
    except BpfError as e:
        return {"error": str(e).splitlines()[0]}
    finally:
        syscalls.close(fd)
    deltas = [b - a for a, b in zip(off, on, strict=True)]
    res = {"rounds": rounds, "repeat": repeat, "off_ns": statistics.median(off), "on_ns": statistics.median(on),
           "delta_ns": statistics.median(deltas), "delta_iqr": _quartiles(deltas)[::2],
           "reported_ns": statistics.median(reported), "runs_off": off, "runs_on": on}
    log(f"   BPF statistics: empty program {res['off_ns']:.0f} ns/run off, {res['on_ns']:.0f} on: "
        f"+{res['delta_ns']:.0f} ns a run (paired, {rounds} rounds of {repeat:,})")
    return res


def metrics_bound(measure: Any, filters: int) -> dict[str, Any]:
    """`measure(extra_args)`: run.metrics_under_load with ttcp's extra arguments."""
    out: dict[str, Any] = {"filters": filters}
    for key, extra in (("bounded", []), ("unbounded", ["--metrics-max-series", "0"]),
                       ("bounded_sampling", ["--sample"]),
                       ("unbounded_sampling", ["--sample", "--metrics-max-series", "0"])):
        log(f"   /metrics, {key.replace('_', ', ')}")
        out[key] = measure(extra)
    return out


def report(res: dict[str, Any]) -> list[str]:
    """Markdown lines for both measurements (report.render places them)."""
    lines = []
    b = res.get("metrics_bound", {})
    rows = []
    for key, label in (("bounded", "default bound (10,000 series)"), ("unbounded", "no bound"),
                       ("bounded_sampling", "default bound, sampling on"),
                       ("unbounded_sampling", "no bound, sampling on")):
        r = b.get(key, {})
        if "bytes" not in r:
            rows.append([label, "-", "-", "-", "-", r.get("error", "not measured")])
            continue
        idle = r.get("idle", {})
        rows.append([label, f"{r['bytes'] / 1e6:.2f} MB", f"{r.get('series', 0):,}",
                     f"{idle.get('p50_ms', 0):.1f} / {idle.get('p99_ms', 0):.1f}",
                     f"{r.get('p50_ms', 0):.1f} / {r.get('p99_ms', 0):.1f}",
                     f"{r.get('events_per_s', 0):,.0f} events/s"])
    lines += [(f"GET /metrics with {b.get('filters', '?')} filters (most of them idle), one client asking "
               "back to back; latency with no traffic, then while connload's events flow:"), ""]
    lines += ["| answer | size | series | p50 / p99 ms, idle | p50 / p99 ms, events flowing | meanwhile |",
              "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    s = res.get("bpf_stats", {})
    lines += [""]
    if "delta_ns" not in s:
        lines.append(f"BPF statistics: not measured ({s.get('error', 'no result')}).")
    else:
        low, high = s["delta_iqr"]
        lines.append(
            f"BPF statistics (--bpf-stats): an empty socket filter, BPF_PROG_TEST_RUN loops of "
            f"{s['repeat']:,} runs, statistics off and on in {s['rounds']} alternating pairs: "
            f"{s['off_ns']:.0f} ns a run off, {s['on_ns']:.0f} on; **+{s['delta_ns']:.0f} ns a run** "
            f"(paired, IQR {low:.0f}-{high:.0f}), paid by every BPF program on the machine while they are "
            f"on. The statistics themselves report {s['reported_ns']:.0f} ns a run for that empty program.")
    return lines


def write_json(path: Path, res: dict[str, Any]) -> None:
    import json
    path.write_text(json.dumps(res, indent=1, default=str))
