"""`make bench`: ttcp side by side with the tools users would pick instead.

Runs every measurement in one go (root; about 6 minutes on 2 vCPUs), prints
the tables and rewrites the generated part of BENCHMARKS.md (between the
`results` markers; the text around them is kept). Raw numbers and every
tool's output stay in the work directory (printed at the end).

    .venv/bin/python bench/run.py [--quick] [--only 'libbpf,bpftrace'] [--no-write] [--stage api-flood]

Environment: BENCH_NO_INSTALL=1 skips installing the compared tools with
apt-get (bpfcc-tools, python3-bpfcc, bpftrace, libbpf-tools and, for bcc on a
kernel without headers, linux-headers-amd64); BENCH_OUT=DIR keeps the work
files there instead of a fresh /tmp/ttcp-bench.XXXXXX.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

import compare
import fleet
import groups
import inproc
import report
from common import (
    BENCH,
    CLIENT_BASE,
    CLIENT_COUNT,
    FILTERS,
    OTHER_SERVER,
    PORT_API,
    PORT_LOAD,
    PORT_OTHER,
    PORT_PROBE,
    ROOT,
    SERVER,
    LoadGen,
    Tool,
    ToolRun,
    bench_cgroup,
    bpf_map_rss_kb,
    child_env,
    cpu_seconds,
    handle_sigint,
    log,
    median,
    peak_rss_kb,
    status,
    stop_process,
    tools,
    ttcp_argv,
)

from ttcp import syscalls

STAGES = ("bpf_stats", "phases", "tools", "kernel", "sampling", "reader", "noloss", "api", "metrics",
          "metrics_bound", "api_flood", "groups")
PACKAGES = ["bpfcc-tools", "python3-bpfcc", "bpftrace", "libbpf-tools", "linux-headers-amd64"]
API_CLIENT = "127.0.7.10"  # source of the API clients (not a filter)
FLOOD_CLIENT = "127.0.7.11"  # source of the half-sent requests (not a filter)
SUMMARY = re.compile(r"ttcp: (\d+) events printed, (\d+) dropped")
DROP_REASONS = re.compile(r"dropped \((\d+) with the ring buffer full, (\d+) skipped by the kernel")


def ensure_packages() -> None:
    """apt-get install the compared tools that are missing (each alone if needed)."""
    if os.environ.get("BENCH_NO_INSTALL"):
        return
    missing = [p for p in PACKAGES if not _installed(p)]
    if not missing:
        return
    log(f"bench: installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    def apt(*argv: str) -> bool:
        return subprocess.run(["apt-get", *argv], stdout=subprocess.DEVNULL, env=env,
                              check=False).returncode == 0

    apt("update", "-qq")
    base = ["install", "-y", "-qq", "--no-install-recommends"]
    if not apt(*base, *missing):
        for p in missing:
            if not apt(*base, p):
                log(f"bench: {p} is not installable here; its tool is reported as missing")


def _installed(pkg: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", pkg], capture_output=True,
                       text=True, check=False)
    return "ok installed" in r.stdout


def _version(pkg: str) -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True,
                       check=False)
    return r.stdout.strip() or "-"


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    distro = "?"
    with contextlib.suppress(OSError), open("/etc/os-release") as f:
        for line in f:
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip().strip('"')
    versions = {}
    for dist in ("aiohttp", "pyelftools"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "-"
    for pkg in ("libbpf-tools", "bpftrace", "bpfcc-tools"):
        versions[pkg] = _version(pkg)
    return {"cpu": cpu, "cpus": os.cpu_count(), "mem_gb": round(mem_kb / 2**20, 1),
            "kernel": os.uname().release, "distro": distro, "python": platform.python_version(),
            "versions": versions, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "loadavg_start": os.getloadavg()}


def _ttcp_tool(all_tools: list[Tool]) -> Tool:
    return next(t for t in all_tools if t.name == "ttcp")


def _wait_header(run: ToolRun, timeout: float = 30.0) -> bool:
    while time.monotonic() - run.t0 < timeout:
        run.poll(0.01)
        if run.header_t is not None:
            return True
        if not run.alive():
            return False
    return False


def phases(pycache: Path, reps: int) -> dict[str, Any]:
    """Loader phases through the API, each rep in a fresh interpreter."""
    runs = []
    for _ in range(reps + 1):  # the first fills the byte-code cache
        r = subprocess.run([sys.executable, str(BENCH / "phases.py")], capture_output=True, text=True,
                           env=child_env(pycache=pycache), check=False)
        try:
            runs.append(json.loads(r.stdout))
        except ValueError:
            log(f"   phases failed: {r.stderr.strip().splitlines()[-1:]}")
    runs = runs[1:]
    keys = [k for k in (runs[0] if runs else {}) if isinstance(runs[0][k], float)]
    return {"median": {k: median(r.get(k) for r in runs) for k in keys}, "runs": runs}


def import_profile(pycache: Path, reps: int = 3) -> dict[str, Any]:
    """Import time of everything the CLI loads (ttcp.cli, then ttcp.server = aiohttp),
    summed by top-level package from `python -X importtime`; the fastest of `reps`."""
    best: dict[str, float] | None = None
    for _ in range(reps + 1):  # the first run fills the byte-code cache
        r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import ttcp.cli, ttcp.server"],
                           capture_output=True, text=True, env=child_env(pycache=pycache), check=False)
        by_pkg: dict[str, float] = {}
        for line in r.stderr.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
            if m:
                top = m.group(2).split(".")[0].lstrip("_") or m.group(2)
                by_pkg[top] = by_pkg.get(top, 0.0) + int(m.group(1)) / 1e6
        if by_pkg and (best is None or sum(by_pkg.values()) < sum(best.values())):
            best = by_pkg
    best = best or {}
    top = sorted(best.items(), key=lambda kv: -kv[1])
    return {"total_s": sum(best.values()), "by_package_s": dict(top)}


def no_loss(tool: Tool, gen: LoadGen, workdir: Path, pycache: Path, n: int) -> dict[str, Any]:
    """n connections at full speed with ttcp's defaults: every event printed or counted."""
    run = ToolRun(tool, workdir, "noloss", pipe=False, pycache=pycache)
    # Started (its API answers: CPU from here is the load's), asked without a request,
    # which would end a socket on a filtered address and add an event.
    if not _wait_header(run) or not compare.settled(run):
        run.stop()
        return {"error": run.stderr_text().strip().splitlines()[-3:]}
    rss_idle = peak_rss_kb(run.pid)
    c0 = cpu_seconds(run.pid)
    retrans0 = handshake_retransmits()
    rate, fails, secs = gen.client(n)
    run.drain(2 * n, quiet=3.0)
    c1 = cpu_seconds(run.pid)
    retrans = handshake_retransmits() - retrans0
    st = status(run.pid)
    ring_kb = bpf_map_rss_kb(run.pid)
    run.stop()
    rss = st.get("VmHWM")
    m = SUMMARY.search(run.stderr_text())
    printed, dropped = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    why = DROP_REASONS.search(run.stderr_text())  # only when dropped > 0
    res = {"n": n, "rate": rate, "seconds": secs, "failures": fails, "expected": 2 * n,
           "printed": printed, "dropped": dropped, "lines": run.events(),
           "ring_full": int(why.group(1)) if why else 0, "kernel_skipped": int(why.group(2)) if why else 0,
           "cpu_s": (c1 - c0) if c0 is not None and c1 is not None else None,
           "rss_idle_kb": rss_idle, "rss_kb": rss, "rss_anon_kb": st.get("RssAnon"),
           "rss_file_kb": st.get("RssFile"), "rss_bpf_maps_kb": ring_kb, "handshake_retransmits": retrans}
    # Every event printed or counted, stdout holding exactly the printed lines; short of
    # 2n by at most the handshakes retransmitted meanwhile (those sockets have no RTT).
    res["exact"] = (printed is not None and run.events() == printed
                    and 2 * n - retrans <= printed + dropped <= 2 * n)
    if res["cpu_s"] and printed:
        res["cpu_us_per_event"] = 1e6 * res["cpu_s"] / printed
    log(f"   no-loss: {n} conns at {rate:.0f}/s: printed {printed} dropped {dropped} "
        f"(lines {run.events()}, expected {2 * n}), cpu {res.get('cpu_us_per_event', -1):.1f} us/event")
    return res


def handshake_retransmits() -> int:
    """TcpExtTCPSynRetrans, machine-wide: SYNs and SYN-ACKs sent again. A socket whose
    handshake was retransmitted has no RTT sample (Karn), and ttcp reports only
    connections with one."""
    with open("/proc/net/netstat") as f:
        rows = [line.split() for line in f if line.startswith("TcpExt:")]
    return int(dict(zip(rows[0], rows[1], strict=True)).get("TCPSynRetrans", 0)) if len(rows) >= 2 else 0


def _api_loads(pid: int, port: int, clients: int, seconds: float, pycache: Path, label: str,
               modes: tuple[str, ...] = ("get", "putdel"), path: str = "/") -> dict[str, Any]:
    """GET, then PUT+DELETE, load on one server process (bench/api_load.py)."""
    out: dict[str, Any] = {}
    for mode in modes:
        c0 = cpu_seconds(pid)
        r = subprocess.run([sys.executable, str(BENCH / "api_load.py"), "--host", SERVER, "--port",
                            str(port), "--src", API_CLIENT, "--clients", str(clients),
                            "--seconds", str(seconds), "--mode", mode, "--path", path],
                           capture_output=True, text=True, env=child_env(pycache=pycache), check=False)
        c1 = cpu_seconds(pid)
        try:
            out[mode] = json.loads(r.stdout)
        except ValueError:
            out[mode] = {"error": r.stderr.strip().splitlines()[-3:]}
            continue
        if c0 is not None and c1 is not None:
            out[mode]["server_cpu_s"] = c1 - c0
        log(f"   {label} {mode} {path}: {out[mode]['req_per_s']:.0f} req/s, p50 {out[mode]['p50_ms']:.1f} ms, "
            f"p99 {out[mode]['p99_ms']:.1f} ms, non-2xx {out[mode]['non_2xx']}")
    return out


def many_filters(n: int) -> list[str]:
    """FILTERS and more host addresses, n in all (127.1.0.0/16 carries no traffic)."""
    return FILTERS + [f"127.1.{i // 256}.{i % 256}" for i in range(n - len(FILTERS))]


def _ttcp_with(tool: Tool, addrs: list[str]) -> Tool:
    extra = [a for addr in addrs if addr not in FILTERS for a in ("--filter", addr)]
    return Tool(tool.name, tool.argv + extra, tool.parse, tool.env, tool.stop_signal, tool.note, tool.python)


def _listing(workdir: Path, addrs: list[str]) -> Path:
    """The JSON list ttcp's GET / answers for these host filters (same order)."""
    from ttcp.rtt import filters as F
    path = workdir / f"listing{len(addrs)}.json"
    path.write_text(json.dumps([str(f) for f in sorted((F.parse(a) for a in addrs), key=F.order_key)]))
    return path


def api(tool: Tool, workdir: Path, pycache: Path, clients: int, seconds: float, big: int,
        rounds: int) -> dict[str, Any]:
    """ttcp's API under load, with its 9 filters, then with `big` filters, each beside a
    bare aiohttp app with the same routes answering GET / with the same bytes (the
    ceiling aiohttp allows on this machine): both servers up at once, their loads
    taking turns `rounds` times; each load's median round is reported."""
    out: dict[str, Any] = {"clients": clients, "seconds": seconds, "rounds": rounds}
    for suffix, addrs in (("", FILTERS), ("_full", many_filters(big))):
        modes = ("get", "putdel") if addrs is FILTERS else ("get",)  # the full table has no room for PUTs
        run = ToolRun(_ttcp_with(tool, addrs), workdir, f"ttcp{suffix}", pipe=False, pycache=pycache)
        base = subprocess.Popen([sys.executable, str(BENCH / "api_baseline.py"), SERVER, str(PORT_API + 1),
                                 str(_listing(workdir, addrs))],
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                env=child_env(pycache=pycache))
        try:
            if not _wait_header(run) or not _api_ready(PORT_API):
                out["ttcp" + suffix] = {"error": run.stderr_text().strip().splitlines()[-3:]}
                continue
            if base.stdout is None or base.stdout.readline().strip() != "listening":
                out["baseline" + suffix] = {"error": "bare aiohttp did not start"}
                continue
            runs: dict[str, dict[str, list[dict[str, Any]]]] = {"ttcp": {}, "baseline": {}}
            for mode in modes:
                for _ in range(rounds):
                    for key, pid, port, label in (("ttcp", run.pid, PORT_API, f"ttcp{suffix}"),
                                                  ("baseline", base.pid, PORT_API + 1, "bare aiohttp")):
                        got = _api_loads(pid, port, clients, seconds, pycache, label, modes=(mode,))
                        if "req_per_s" in got[mode]:
                            runs[key].setdefault(mode, []).append(got[mode])
            for key, pid in (("ttcp", run.pid), ("baseline", base.pid)):
                res: dict[str, Any] = {"filters": len(addrs), "rss_kb": peak_rss_kb(pid)}
                for mode, rs in runs[key].items():
                    ordered = sorted(rs, key=lambda r: r["req_per_s"])
                    res[mode] = dict(ordered[len(ordered) // 2], rounds_req_per_s=[r["req_per_s"] for r in rs],
                                     rounds_p99_ms=[r["p99_ms"] for r in rs])
                out[key + suffix] = res
        finally:
            run.stop()
            stop_process(base, signal.SIGTERM, grace=5.0)
    return out


def metrics_under_load(tool: Tool, gen: LoadGen, workdir: Path, pycache: Path, filters: int, clients: int,
                       seconds: float, extra: tuple[str, ...] = (), texts: list[str] | None = None,
                       prepare: Any = None) -> dict[str, Any]:
    """GET /metrics with `filters` filters, back to back from `clients` clients: first
    with no traffic, then while connload makes connections between filtered
    addresses at full speed. `extra`: more arguments for ttcp; `texts`: the filters
    (default: FILTERS and host addresses); `prepare()`: called once ttcp answers."""
    if texts is None:
        base = _ttcp_with(tool, many_filters(filters))
    else:
        base = Tool(tool.name, ttcp_argv(filters=texts), tool.parse, tool.env, tool.stop_signal, tool.note,
                    tool.python)
    base = Tool(base.name, base.argv + list(extra), base.parse, base.env, base.stop_signal, base.note, base.python)
    tag = "metrics" + "".join(x for x in extra if not x.startswith("/")).replace("-", "_") + ("_t" if texts else "")
    run = ToolRun(base, workdir, tag, pipe=False, pycache=pycache)
    out: dict[str, Any] = {"filters": filters, "clients": clients, "args": list(extra)}
    if not _wait_header(run) or not _api_ready(PORT_API):
        run.stop()
        return {"error": run.stderr_text().strip().splitlines()[-3:]}
    try:
        if prepare is not None:
            prepare()
        answer = _get(PORT_API, "/metrics")
        out["bytes"] = len(answer)
        out["series"] = sum(1 for line in answer.splitlines() if line and not line.startswith(b"#"))
        out["idle"] = _api_loads(run.pid, PORT_API, clients, seconds, pycache, "metrics, no traffic",
                                 modes=("get",), path="/metrics")["get"]
        load = subprocess.Popen([str(gen.exe), "client", CLIENT_BASE, str(CLIENT_COUNT), SERVER,
                                 str(PORT_LOAD), "100000000"], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            e0, t0 = _events(run), time.monotonic()
            out.update(_api_loads(run.pid, PORT_API, clients, seconds, pycache, "metrics, events flowing",
                                  modes=("get",), path="/metrics")["get"])
            out["events_per_s"] = (_events(run) - e0) / (time.monotonic() - t0)
        finally:
            stop_process(load, signal.SIGTERM, grace=3.0)
    finally:
        run.stop()
    log(f"   /metrics under load: {out.get('events_per_s', 0):.0f} events/s meanwhile")
    return out


def api_flood(tool: Tool, workdir: Path, pycache: Path, clients: int, seconds: float,
              flood: int) -> dict[str, Any]:
    """GET / from `clients` keep-alive clients, alone, then while `flood` half-sent
    requests are kept open (bench/api_flood.py: each one ttcp closes is opened again):
    what the limits (the default cap, 256, and deadline, 10 s) leave to real clients."""
    run = ToolRun(tool, workdir, "flood", pipe=False, pycache=pycache)
    out: dict[str, Any] = {"clients": clients, "flood": flood}
    if not _wait_header(run) or not _api_ready(PORT_API):
        run.stop()
        return {"error": run.stderr_text().strip().splitlines()[-3:]}
    try:
        def fds() -> int:
            return len(os.listdir(f"/proc/{run.pid}/fd"))

        out["fds_before"] = fds()
        out["alone"] = _api_loads(run.pid, PORT_API, clients, seconds, pycache, "GET /, alone", modes=("get",))["get"]
        flooder = subprocess.Popen([sys.executable, str(BENCH / "api_flood.py"), "--host", SERVER, "--port",
                                    str(PORT_API), "--src", FLOOD_CLIENT, "--connections", str(flood),
                                    "--seconds", str(seconds + 3.0)], stdout=subprocess.PIPE, text=True,
                                   env=child_env(pycache=pycache))
        try:
            time.sleep(1.5)  # all opened, the cap full of them
            out["fds_flooded"] = fds()
            out["flooded"] = _api_loads(run.pid, PORT_API, clients, seconds, pycache,
                                        f"GET /, {flood} half-requests kept open", modes=("get",))["get"]
            stdout, _ = flooder.communicate(timeout=seconds + 30)
            out["flooder"] = json.loads(stdout)
        finally:
            stop_process(flooder, signal.SIGTERM, grace=3.0)
        health = json.loads(_get(PORT_API, "/healthz"))
        out["rejected"] = health.get("api_connections_rejected")
        time.sleep(1.0)
        out["fds_after"] = fds()
    finally:
        run.stop()
    return out


def _events(run: ToolRun) -> int:
    run.poll()
    return run.events()


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://{SERVER}:{port}{path}", timeout=10) as r:
        return bytes(r.read())


def _api_ready(port: int, timeout: float = 30.0) -> bool:
    """The header says the API takes connections; wait until it answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _get(port, "/healthz")
            return True
        except OSError:
            time.sleep(0.02)
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description="ttcp benchmarks (see BENCHMARKS.md)")
    ap.add_argument("--quick", action="store_true", help="fewer and smaller runs (a smoke test)")
    ap.add_argument("--only", default="", help="comma list: compare ttcp only with tools whose name "
                                               "contains one of these")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite BENCHMARKS.md")
    ap.add_argument("--kernel-rounds", type=int, default=0,
                    help="rounds of the kernel-cost stage (default: 5, 1 with --quick)")
    ap.add_argument("--stages", default=",".join(STAGES),
                    help=f"comma list of the stages to run (default: all: {','.join(STAGES)}); BENCHMARKS.md "
                         "is rewritten only when all ran")
    args = ap.parse_args()
    if os.geteuid() != 0:
        log("bench: run as root (make bench)")
        return 1
    handle_sigint()
    q = args.quick
    p = {"reps": 2 if q else 5, "pairs": 2 if q else 5, "n": 5000 if q else 20000,
         "kcost_n": 5000 if q else 20000, "kcost_rounds": args.kernel_rounds or (1 if q else 5),
         "fill": 26000, "reader_rounds": 3 if q else 7, "noloss_n": 20000 if q else 200000,
         "api_clients": 50, "api_seconds": 2.0 if q else 3.0, "api_rounds": 1 if q else 3, "api_filters": 1000,
         "metrics_clients": 1, "metrics_seconds": 2.0 if q else 5.0,
         "phase_reps": 2 if q else 5, "bulk_bytes": 500_000_000 if q else 2_000_000_000,
         "bulk_pairs": 3 if q else 9, "stats_rounds": 5 if q else 15, "stats_repeat": 2_000_000,
         "flood_clients": 10, "flood": 2000}
    ensure_packages()
    workdir = Path(os.environ.get("BENCH_OUT") or tempfile.mkdtemp(prefix="ttcp-bench."))
    workdir.mkdir(parents=True, exist_ok=True)
    pycache = workdir / "pycache"
    results: dict[str, Any] = {"machine": machine(), "params": p}
    log(f"bench: work files in {workdir}")
    t_start = time.monotonic()
    stages = [x for x in args.stages.split(",") if x]
    unknown = set(stages) - set(STAGES)
    if unknown:
        log(f"bench: unknown stages {', '.join(sorted(unknown))} (choose from {', '.join(STAGES)})")
        return 2
    if "bpf_stats" in stages:
        log("== BPF statistics' cost (before the run turns them on)")
        results["bpf_stats"] = fleet.bpf_stats_cost(p["stats_rounds"], p["stats_repeat"])
    stats_fd = syscalls.enable_stats()  # run_time_ns/run_cnt count while this fd is open
    with contextlib.ExitStack() as stack:
        results["cgroup"] = stack.enter_context(bench_cgroup())
        gen = LoadGen(workdir)
        stack.callback(gen.close)
        stack.callback(syscalls.close, stats_fd)
        gen.serve(SERVER, PORT_LOAD)
        gen.serve(SERVER, PORT_PROBE)
        gen.serve(OTHER_SERVER, PORT_OTHER)
        gen.client(2000)  # warm-up, not counted
        all_tools = tools(workdir, args.only)
        ttcp = _ttcp_tool(all_tools)
        if "phases" in stages:
            log("== start-up phases (Python API, fresh processes)")
            results["phases"] = phases(pycache, p["phase_reps"])
            results["imports"] = import_profile(pycache)
        if "tools" in stages:
            results["tools"] = compare.run(all_tools, gen, workdir, pycache, p["reps"], p["pairs"], p["n"])
        if "kernel" in stages:
            log("== kernel cost per run")
            results["kernel"] = inproc.kernel_cost(gen, p["kcost_n"], p["kcost_rounds"], workdir)
        if "sampling" in stages:
            log("== live sampling")
            results["sampling"] = inproc.sampling_cost(gen, p["bulk_bytes"], p["bulk_pairs"], workdir)
        if "reader" in stages:
            log("== reader alone")
            results["reader"] = inproc.reader_throughput(gen, p["fill"], p["reader_rounds"])
        if "noloss" in stages:
            log("== no loss")
            results["noloss"] = no_loss(ttcp, gen, workdir, pycache, p["noloss_n"])
        if "api" in stages:
            log("== API")
            results["api"] = api(ttcp, workdir, pycache, p["api_clients"], p["api_seconds"], p["api_filters"],
                                 p["api_rounds"])
        if "metrics" in stages:
            log("== /metrics while events flow")
            results["metrics"] = metrics_under_load(ttcp, gen, workdir, pycache, p["api_filters"],
                                                    p["metrics_clients"], p["metrics_seconds"])
        if "metrics_bound" in stages:
            results["metrics_bound"] = _metrics_bound(ttcp, gen, workdir, pycache, p)
        if "api_flood" in stages:
            log("== the API under a half-request flood")
            results["api_flood"] = api_flood(ttcp, workdir, pycache, p["flood_clients"], p["api_seconds"],
                                             p["flood"])
        if "groups" in stages:
            _groups(results, gen, ttcp, workdir, pycache, p)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["elapsed_s"] = time.monotonic() - t_start
    (workdir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    text = report.render(results)
    print(text)
    if not args.no_write and not q and stages == list(STAGES):
        report.write(ROOT / "BENCHMARKS.md", text)
        log("bench: BENCHMARKS.md updated")
    log(f"bench: done in {results['elapsed_s']:.0f} s; raw results in {workdir / 'results.json'}")
    return 0


def _metrics_bound(ttcp: Tool, gen: LoadGen, workdir: Path, pycache: Path, p: dict[str, Any]) -> dict[str, Any]:
    log("== /metrics bounded and not")
    return fleet.metrics_bound(lambda extra: metrics_under_load(
        ttcp, gen, workdir, pycache, p["api_filters"], p["metrics_clients"], p["metrics_seconds"], tuple(extra)),
        p["api_filters"])


def _groups(results: dict[str, Any], gen: LoadGen, ttcp: Tool, workdir: Path, pycache: Path,
            p: dict[str, Any]) -> None:
    """Issue 24's measurements (bench/groups.py); the BPF statistics must be on."""
    log("== a breakdown's kernel cost")
    results["groups_kernel"] = groups.kernel_cost(gen, p["kcost_n"], p["kcost_rounds"], workdir)
    log("== a breakdown in the live sampler")
    results["groups_sampling"] = groups.sampling_cost(gen, p["bulk_bytes"] // 2, p["bulk_pairs"])
    log("== /metrics with 1,000 filters by raddr")
    results["groups_metrics"] = groups.metrics(
        lambda texts, extra, prepare: metrics_under_load(ttcp, gen, workdir, pycache, p["api_filters"],
                                                         p["metrics_clients"], p["metrics_seconds"], tuple(extra),
                                                         texts, prepare), p["api_filters"])


if __name__ == "__main__":
    sys.exit(main())
