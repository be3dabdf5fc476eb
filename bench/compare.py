"""ttcp side by side with the tracers users would pick instead, in one run.

For each tool: start-up (process start to the first output line, and to the
first event for a connection made after launch; median of `reps` starts),
then interleaved load pairs: the connection generator alone, then with the
tool freshly attached (slowdown = 1 - median(with/alone) of the pairs), the
tool's CPU time per connection and per event, the kernel time of its BPF
programs, and its peak RSS.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from common import (
    LoadGen,
    Tool,
    ToolRun,
    cpu_seconds,
    log,
    median,
    peak_rss_kb,
    prog_stats,
    stats_delta,
    status,
)

TIMINGS = re.compile(r"^ttcp: timings (.*)$", re.MULTILINE)


def ttcp_timings(stderr: str) -> dict[str, float]:
    """The `ttcp: timings k=v ...` line (TTCP_TIMINGS=1) as a dict."""
    m = TIMINGS.search(stderr)
    if not m:
        return {}
    out = {}
    for part in m.group(1).split():
        key, _, val = part.partition("=")
        try:
            out[key] = float(val)
        except ValueError:
            continue
    return out


def error_tail(text: str, n: int = 3) -> list[str]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    hits = [ln for ln in lines if re.search(r"rror|[Ff]ail|Unable|denied|No such", ln)]
    return (hits or lines)[-n:]


def settled(run: ToolRun, timeout: float = 30.0) -> bool:
    """ttcp has finished starting: its API answers (it prints its timings line then, with
    TTCP_TIMINGS=1), so the CPU of importing aiohttp after the header is not charged to
    the load that follows. Other tools are settled once they report."""
    if run.tool.name != "ttcp":
        return True
    deadline = time.monotonic() + timeout
    while "ttcp: timings" not in run.stderr_text():
        if time.monotonic() > deadline or not run.alive():
            return False
        run.poll(0.01)
    return True


def start_once(tool: Tool, workdir: Path, tag: str, pycache: Path) -> dict[str, Any]:
    run = ToolRun(tool, workdir, tag, pipe=True, pycache=pycache)
    ok = run.wait_ready(timeout=60.0) and settled(run)
    rss = peak_rss_kb(run.pid)
    run.stop()
    res: dict[str, Any] = {"ok": ok, "header_s": run.header_t, "event_s": run.event_t,
                           "stop_s": run.stop_s, "rss_kb": rss, "rc": run.p.returncode}
    if tool.name == "ttcp":
        t = ttcp_timings(run.stderr_text())
        if "t_main" in t:  # precise exec -> main(): both clocks are CLOCK_MONOTONIC
            t["exec_precise"] = t["t_main"] - run.t0
        res["timings"] = t
    if not ok:
        res["error"] = error_tail(run.stderr_text())
    return res


def load_pair(tool: Tool, gen: LoadGen, workdir: Path, tag: str, n: int, pycache: Path) -> dict[str, Any]:
    """One interleaved pair: the generator alone, then with the tool attached."""
    base_rate, base_fail, _ = gen.client(n)
    time.sleep(0.3)  # stragglers of the untraced run close before the tool starts
    run = ToolRun(tool, workdir, tag, pipe=False, pycache=pycache)
    if not run.wait_ready(timeout=60.0) or not settled(run):
        run.stop()
        return {"error": error_tail(run.stderr_text())}
    run.poll()
    run.server_side = run.client_side = 0  # count only the load below
    k0 = prog_stats(run.pid)
    w0 = status(run.pid).get("voluntary_ctxt_switches")
    c0 = cpu_seconds(run.pid)
    rate, fails, secs = gen.client(n)
    run.drain(2 * n)
    c1 = cpu_seconds(run.pid)
    w1 = status(run.pid).get("voluntary_ctxt_switches")
    k1 = prog_stats(run.pid)
    rss = peak_rss_kb(run.pid)
    run.stop()
    kns, kcnt = stats_delta(k0, k1)
    return {
        "base_rate": base_rate, "rate": rate, "failures": base_fail + fails, "seconds": secs,
        "events": run.events(), "server_side": run.server_side, "client_side": run.client_side,
        "cpu_s": (c1 - c0) if c0 is not None and c1 is not None else None,
        "kernel_ns": kns, "kernel_runs": kcnt, "progs": len(k1), "rss_kb": rss,
        "sleeps": (w1 - w0) if w0 is not None and w1 is not None else None,
        "stderr_tail": run.stderr_text().strip().splitlines()[-2:],
    }


def measure_tool(tool: Tool, gen: LoadGen, workdir: Path, pycache: Path, reps: int, pairs: int,
                 n: int) -> dict[str, Any]:
    res: dict[str, Any] = {"name": tool.name, "argv": tool.argv, "note": tool.note}
    if not tool.available():
        res["status"] = f"not installed ({tool.exe})"
        return res
    log(f"== {tool.name}")
    warm = start_once(tool, workdir, "warmup", pycache)  # fills caches; not counted
    if not warm["ok"]:
        res["status"] = "fails here: " + " | ".join(warm.get("error", []))
        log(f"   {res['status']}")
        return res
    res["status"] = "runs"
    starts = [start_once(tool, workdir, f"start{i}", pycache) for i in range(reps)]
    res["starts"] = starts
    res["header_med"] = median(s["header_s"] for s in starts)
    res["event_med"] = median(s["event_s"] for s in starts)
    res["stop_med"] = median(s["stop_s"] for s in starts)
    res["rss_idle_kb"] = max((s["rss_kb"] or 0) for s in starts + [warm]) or None
    log(f"   start: header {res['header_med']:.3f}s, first event {res['event_med']:.3f}s")
    runs = [load_pair(tool, gen, workdir, f"load{i}", n, pycache) for i in range(pairs)]
    good = [r for r in runs if "error" not in r]
    res["pairs"] = runs
    if good:
        ratios = [r["rate"] / r["base_rate"] for r in good]
        cpu = [r["cpu_s"] for r in good if r["cpu_s"] is not None]
        events = sum(r["events"] for r in good)
        conns = n * len(good)
        kns = sum(r["kernel_ns"] for r in good)
        kruns = sum(r["kernel_runs"] for r in good)
        sleeps = [r["sleeps"] for r in good if r["sleeps"] is not None]
        res.update(
            n=n, conns=conns, base_med=median(r["base_rate"] for r in good),
            with_med=median(r["rate"] for r in good), slowdown_pct=100 * (1 - median(ratios)),
            events=events, expected_events=2 * conns, failures=sum(r["failures"] for r in good),
            cpu_us_per_conn=1e6 * sum(cpu) / conns if cpu else None,
            cpu_us_per_event=1e6 * sum(cpu) / events if cpu and events else None,
            kernel_ns_per_conn=kns / conns, kernel_ns_per_run=kns / kruns if kruns else None,
            kernel_runs_per_conn=kruns / conns,
            events_per_wakeup=events / sum(sleeps) if sleeps and sum(sleeps) else None,
            rss_load_kb=max((r["rss_kb"] or 0) for r in good) or None,
        )
        log(f"   load: {res['base_med']:.0f} -> {res['with_med']:.0f} conn/s "
            f"({res['slowdown_pct']:.1f}%), cpu {res['cpu_us_per_conn'] or -1:.1f} us/conn, "
            f"events {events}/{2 * conns}, kernel {res['kernel_ns_per_conn']:.0f} ns/conn")
    return res


def run(tools: list[Tool], gen: LoadGen, workdir: Path, pycache: Path, reps: int, pairs: int,
        n: int) -> list[dict[str, Any]]:
    return [measure_tool(t, gen, workdir, pycache, reps, pairs, n) for t in tools]
