"""The `ttcp` command: options, start-up and shut-down around ttcp.agent.

Start-up order: the API's sockets listen first (a port in use fails before
anything is loaded), then the filters are loaded and the program attached,
then the header is printed — so a header on stdout means the program runs
and the API takes connections — then the HTTP server, imported meanwhile by
a thread, starts answering them (ttcp.agent). Events go to stdout, diagnostics to stderr (one line
each, prefixed "ttcp: "). `run` can be called more than once in a process:
the signal handlers and logging it installs are put back when it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TextIO, TypeVar

from ttcp.agent import DEFAULT_METRICS_GROUPS, Agent, Options, listen
from ttcp.api.event_stream import DEFAULT_BACKLOG
from ttcp.api.host_names import HostNameError, is_loopback, normalize_name
from ttcp.api.limits import Limits
from ttcp.api.series_bound import DEFAULT_MAX_SERIES
from ttcp.api.token import TOKEN_FILE_ENV, Token, read_token_file
from ttcp.errors import BindError, TtcpError
from ttcp.kernel import rlimit
from ttcp.kernel.bpf_stats import BpfStats
from ttcp.kernel.btf import VMLINUX_BTF
from ttcp.output import HistogramPrinter, Printer, to_devnull
from ttcp.rtt import filters
from ttcp.rtt.events import Lines
from ttcp.rtt.filter_table import KernelFilterTable
from ttcp.rtt.filters_sync import FiltersFile
from ttcp.rtt.groups import DEFAULT_MAX_GROUPS
from ttcp.rtt.pinning import IncompatiblePinError, PinLockedError, PinnedTableTooBigError
from ttcp.rtt.table_rules import CorruptTableError, Origin
from ttcp.rtt.tracer import DEFAULT_MAX_FILTERS, DEFAULT_RINGBUF_SIZE, MODES, Tracer
from ttcp.workloads.containerd import DEFAULT_TASK_DIR
from ttcp.workloads.group_names import namer
from ttcp.workloads.resolver import Resolver

DOCKER_SOCKET = "/var/run/docker.sock"
CONTAINERD_STATE = DEFAULT_TASK_DIR

EPILOG = """\
filters ([WORKLOAD] [[src|dst] ADDRESS[/PREFIX] [port N]] [by KEY]; a connection is
reported when any matches):
  10.178.0.5                    local (source) address 10.178.0.5: a plain
                                address, as the original ttcp took them
  dst 10.20.0.0/16 port 5432    connections to the database network's port 5432
  src 172.17.0.0/16             connections from a container subnet
  dst 2001:db8::/32             IPv6 works the same; IPv4 filters also match
                                dual-stack sockets (::ffff:a.b.c.d)
  src is the socket's local side (the "Src addr" column), dst the remote one;
  `port N` applies to the same side. Host bits under a prefix are an error.
workloads (WORKLOAD := cgroup PATH | netns PATH | netns INODE | container NAME|ID
           | pod NAMESPACE/NAME):
  cgroup /system.slice/app.service dst 10.20.0.0/16 port 5432
                                that service's connections to the database
                                (its cgroup and those below; PATH as the 0:: line
                                of /proc/PID/cgroup shows it; followed when the
                                cgroup is created again; pending until it exists)
  netns /run/netns/web          everything in that network namespace (a file:
                                /run/netns/NAME, /proc/PID/ns/net; or its inode,
                                the JSON netns field)
  container web                 that Docker or containerd container, by name or
                                id (12+ hex digits); followed across restarts and
                                a new container of that name; pending until one runs
  pod shop/web-0 dst 10.20.0.0/16 port 5432
                                that Kubernetes pod's connections to the database
                                (names from the runtime: --docker-socket,
                                --containerd-state; no Kubernetes API)
  Workload filters first (the deepest cgroup, then netns), then the others.
breakdowns (by KEY := raddr[/N] | laddr[/N] | rport | lport | cgroup | netns |
                     container | pod):
  dst 10.20.0.0/16 port 5432 by raddr
                                which database replica is slow: one RTT histogram
                                per remote address, kept by the kernel
      ttcp --sample --format histogram --filter 'dst 10.20.0.0/16 port 5432 by raddr'
      curl 'http://localhost:8090/filters/dst%2010.20.0.0%2F16%20port%205432%20by%20raddr/groups?sort=p99&histogram=sampled'
  dst 10.20.0.0/16 port 5432 by container
                                which client container sees the database slow:
                                a group per container (NAME, or NS/POD/NAME in a
                                pod; by pod: NS/POD); a socket of no container
                                the runtimes name is a group per cgroup and netns
                                ("cgroup PATH netns INODE")
  by raddr/24 groups remote IPv4 peers by /24 network (IPv6 ones by /24 too: use
  /64 for those; an IPv4 address keeps at most 32 bits). The kernel holds
  --max-groups groups of all filters together before its LRU evicts the least
  recently used (counted as evicted; one seen again starts from zero). The clause is part
  of the filter: a selector has one filter (adding it with another `by` is 409).
  With --sample, connections that never close (a pool's) count too.

output (stdout), one line per TCP connection that ended, that a filter selects:
  YYYY/MM/DD HH:MM:SS Src addr        Port   -> Dest addr       Port   RTT(ms)
  RTT is the kernel's smoothed RTT (srtt) with microsecond precision. With
  --format json each line is an object with every field (rtt_us, rttvar_us,
  retrans, bytes_acked, bytes_received, netns, hook, filter, ...). A loopback
  connection has two local sockets: a filter on its address reports both.
  JSON also has cgroup_id and cgroup (the socket's cgroup-v2 id and path) and,
  where known, container, container_id, pod and pod_namespace; -w adds a
  Workload column (pod, else container, else the cgroup path) to the table.
  --format histogram prints at exit (and with --histogram N every N seconds) a
  log2 RTT histogram per filter, one per group for a filter with `by` (bcc
  style), instead of the lines.

API (see README / GET /openapi.json): the original ttcp's three curl lines,
with plain addresses, work as they did, and any filter does too:
  curl -L http://localhost:8090 -XGET
  curl -L http://localhost:8090 -XPUT -d 192.168.0.1
  curl -L http://localhost:8090 -XDELETE -d 192.168.0.1
  curl -L http://localhost:8090 -XPUT -d 'dst 10.20.0.0/16 port 5432'
  curl http://localhost:8090/metrics          Prometheus (histograms per filter)
  curl 'http://localhost:8090/filters/FILTER/groups?top=10&sort=p99'   a breakdown's groups
  curl http://localhost:8090/events           the JSON event lines, streamed
  curl -XPUT -d on http://localhost:8090/sampling   live RTT sampling on/off

attach modes: fentry (exact RTT at close(); needs ftrace), tp_btf
(tcp_destroy_sock), tracepoint (sock/inet_sock_set_state via perf events).
auto tries them in that order and says on stderr which one it uses. Live
sampling (--sample) hooks fentry/tcp_rcv_established, tp_btf/tcp_probe or
tracepoint tcp/tcp_probe, in that order, and only fills histograms.

FLEET (a DaemonSet: deploy/kubernetes/ and README's "Running on a fleet"):
  --pin /sys/fs/bpf/ttcp        the filter table outlives ttcp: the next ttcp on
                                the directory (after SIGTERM or SIGKILL) has the
                                same filters and counters; connections that end
                                while no ttcp runs are not seen. A different
                                --max-filters migrates it; pinned maps of another
                                shape are an error (--pin-reset, or rm -r DIR).
                                In a container: -v /sys/fs/bpf:/sys/fs/bpf.
  --token-file /etc/ttcp/token  API calls need 'Authorization: Bearer TOKEN'
                                (401 otherwise), except GET /healthz; or set
                                TTCP_TOKEN_FILE=PATH. A file keeps the token out
                                of argv and the environment.
      curl -H "Authorization: Bearer $(cat /etc/ttcp/token)" http://127.0.0.1:8090/metrics
  Host header: requests must name the API by IP address or localhost (any
  port), or by an --allowed-host name; others get 421 (DNS rebinding guard).
  Without a token, --host other than loopback draws a warning at start.
  --filters-file /etc/ttcp/filters/filters
                                filters from a file (a mounted ConfigMap), one
                                per line, '#' comments; read again whenever it
                                changes. Its filters are its own: DELETE of one
                                answers 409. A version with a bad line is not
                                applied (the last good one stays; GET /filters
                                and ttcp_filters_file_errors_total say why).
  --metrics-max-series N        bound /metrics (default 10000; 0: none): the least
                                recently used filters' histograms are left out.
  --metrics-groups K            the K busiest groups of each filter with `by` in
                                /metrics (default 5), with a `group` label.
  --bpf-stats                   the kernel time of ttcp's BPF programs in /metrics
                                (turns the kernel's BPF statistics on for the whole
                                machine while ttcp runs; needs CAP_SYS_ADMIN).

needs: root (or CAP_BPF + CAP_PERFMON), a kernel with BTF
(/sys/kernel/btf/vmlinux). On SIGINT/SIGTERM ttcp drains the ring buffer,
prints a summary on stderr and exits 0.
"""
TABLE_FULL_HINT = "restart ttcp with --max-filters M to raise it (M > {limit})"
T = TypeVar("T")
BIND_HINTS = {
    errno.EADDRINUSE: "another process is listening there; choose another --port or stop it",
    errno.EADDRNOTAVAIL: "no local interface has that address; check --host",
    errno.EACCES: "ports below 1024 need root or CAP_NET_BIND_SERVICE; choose another --port",
}


def _size(text: str) -> int:
    """Sizes like 4194304, 4096K or 4M."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b")
    try:
        if t and t[-1] in units:
            return int(t[:-1]) * units[t[-1]]
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 4194304, 4096K, 4M)") from None


def _checked(parse: Callable[[str], T], error: type[Exception]) -> Callable[[str], T]:
    """An argparse type from a parser: the parser's error message is the usage error."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except error as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return convert


_filter = _checked(filters.parse, filters.FilterError)
_host_name = _checked(normalize_name, HostNameError)


def _seconds(text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        s = 0.0
    if not 0.01 <= s <= 86400:
        raise argparse.ArgumentTypeError(f"expected seconds from 0.01 to 86400, got {text!r}")
    return s


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r} (0-65535)")
    return port


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number (0 or more), got {text!r}")
    return n


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return n


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="ttcp",
        description="Report the round-trip time of TCP connections as they close, for the "
                    "local addresses you choose; change the list at runtime over HTTP.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address the filter API listens on (default: %(default)s; "
                        "the container image uses 0.0.0.0)")
    p.add_argument("--port", type=_port, default=8090,
                   help="port of the filter API (default: %(default)s)")
    p.add_argument("--filter", dest="filters", metavar="FILTER", type=_filter, action="append",
                   default=[], help="report connections FILTER selects: '[src|dst] ADDRESS[/PREFIX] "
                                    "[port N]' (a bare ADDRESS is the local address); repeatable; "
                                    "loaded before the program attaches")
    p.add_argument("--max-filters", type=_positive, default=DEFAULT_MAX_FILTERS, metavar="N",
                   help="size of the filter table (default: %(default)s)")
    p.add_argument("--max-groups", type=_positive, default=DEFAULT_MAX_GROUPS, metavar="N",
                   help="groups of all filters with a `by` clause together the kernel holds before it evicts "
                        "the least recently used (default: %(default)s; its map has N + 128 x possible CPUs "
                        "entries, for the LRU's per-CPU batches: 4.7 MiB of kernel memory at the default on 2 "
                        "CPUs, 8.9 MiB on 64)")
    p.add_argument("--attach", choices=("auto",) + MODES, default="auto",
                   help="kernel hook: auto tries fentry, tp_btf, tracepoint in order "
                        "(default: %(default)s)")
    p.add_argument("--format", choices=("table", "json", "histogram"), default="table",
                   help="table: the header and aligned columns; json: one JSON object per line; histogram: "
                        "RTT histograms per filter (per group with `by`) at exit, or every --histogram "
                        "SECONDS, instead of the lines (default: %(default)s)")
    p.add_argument("-w", "--wide", action="store_true",
                   help="the table gets a Workload column: the pod, container or cgroup path of each "
                        "connection's socket")
    p.add_argument("--docker-socket", metavar="PATH", default=None,
                   help="the Docker engine whose containers are named (container NAME, names on events; "
                        f"default: {DOCKER_SOCKET} when it exists)")
    p.add_argument("--containerd-state", metavar="DIR", default=None,
                   help="containerd's task directory (the runc v2 shim's state: one directory per "
                        f"task), followed for containers and pods; containerd's state directory above it "
                        f"is taken too (default: {CONTAINERD_STATE} when it exists)")
    p.add_argument("--no-runtimes", action="store_true",
                   help="follow no container runtime (container and pod filters then stay pending)")
    p.add_argument("--ringbuf-size", type=_size, default=DEFAULT_RINGBUF_SIZE, metavar="BYTES",
                   help=f"kernel ring buffer for events, a power of two (default: {DEFAULT_RINGBUF_SIZE >> 20}M)")
    p.add_argument("--btf", type=Path, default=VMLINUX_BTF, metavar="PATH",
                   help="kernel BTF to relocate against (default: %(default)s; e.g. a BTFHub "
                        "file for a kernel without built-in BTF)")
    p.add_argument("--no-api", action="store_true",
                   help="do not start the HTTP API (filters come only from --filter)")
    p.add_argument("--sample", action="store_true",
                   help="live RTT sampling from the start: every RTT measurement of an established "
                        "connection a filter selects feeds the filter's sample histogram (switch it "
                        "at runtime with PUT /sampling)")
    p.add_argument("--histogram", type=_seconds, metavar="SECONDS",
                   help="print RTT histograms per filter every SECONDS and at exit, instead of "
                        "the event lines")
    p.add_argument("--ms", action="store_true", help="histograms in milliseconds (default: microseconds)")
    p.add_argument("--stream-backlog", type=_positive, default=DEFAULT_BACKLOG, metavar="LINES",
                   help="event lines a GET /events client may fall behind before it is disconnected "
                        "(default: %(default)s; about 350 bytes each)")
    limits = p.add_argument_group("API limits (any client that reaches the port can open connections)")
    limits.add_argument("--max-connections", type=_positive, default=Limits.max_connections, metavar="N",
                        help="API connections at once (default: %(default)s; give ttcp a `ulimit -n` of 2N + "
                             "64); at the limit a new one displaces the connection that has waited longest "
                             "for the rest of its request (503), else the longest idle, or is refused (503)")
    limits.add_argument("--request-timeout", type=_seconds, default=Limits.request_timeout_s,
                        metavar="SECONDS", help="time for a request's headers and body to arrive, from its "
                                                "first byte (default: %(default)g; then 408 and close)")
    limits.add_argument("--keepalive-timeout", type=_seconds, default=Limits.keepalive_timeout_s,
                        metavar="SECONDS", help="an idle connection is closed after SECONDS without a "
                                                "request (default: %(default)g)")
    limits.add_argument("--max-stream-clients", type=_positive, default=Limits.max_stream_clients, metavar="N",
                        help="GET /events clients at once, at most half of --max-connections "
                             "(default: %(default)s; one more gets 503)")
    fleet = p.add_argument_group("fleet agent (see FLEET below)")
    fleet.add_argument("--pin", type=Path, metavar="DIR",
                       help="keep the filter table (filters, counters, histograms) pinned in DIR, a "
                            "directory in a BPF file system (e.g. /sys/fs/bpf/ttcp): a restarted ttcp, "
                            "even after SIGKILL, carries on with it; one ttcp per DIR")
    fleet.add_argument("--pin-reset", action="store_true",
                       help="with --pin: drop the pinned filter table first and start empty (the way "
                            "out when the pinned maps do not fit this ttcp)")
    fleet.add_argument("--token-file", metavar="PATH",
                       help=f"require 'Authorization: Bearer TOKEN' on every API call but GET /healthz, "
                            f"TOKEN being the content of PATH (default: the file ${TOKEN_FILE_ENV} names)")
    fleet.add_argument("--allowed-host", dest="allowed_hosts", metavar="NAME", type=_host_name,
                       action="append", default=[],
                       help="also answer requests whose Host header is NAME (IP addresses and localhost "
                            "always work; other names get 421, against DNS rebinding); repeatable")
    fleet.add_argument("--filters-file", type=Path, metavar="PATH",
                       help="filters from PATH, one per line ('#' comments), applied before the program "
                            "attaches and again whenever the file changes (a mounted ConfigMap works); the "
                            "API cannot delete them; a version with a bad line is not applied")
    fleet.add_argument("--metrics-max-series", type=_count, default=DEFAULT_MAX_SERIES, metavar="N",
                       help="at most about N series in GET /metrics: past it, the histograms of the least "
                            "recently used filters are left out (default: %(default)s; 0: no bound)")
    fleet.add_argument("--metrics-groups", type=_count, default=DEFAULT_METRICS_GROUPS, metavar="K",
                       help="the K busiest groups of each filter with a `by` clause in GET /metrics, with a "
                            "`group` label, counted by --metrics-max-series (default: %(default)s)")
    fleet.add_argument("--bpf-stats", action="store_true",
                       help="turn the kernel's BPF statistics on while ttcp runs, for the run time of its "
                            "programs in /metrics (costs every BPF program on the machine tens of ns a run; "
                            "needs CAP_SYS_ADMIN)")
    return p


class Timings:
    """Start-up phases on stderr once the API answers, when TTCP_TIMINGS=1 (used by
    `make bench`).

    `ttcp: timings exec=S setup=S listen=S object=S maps=S attach=S aiohttp@=S api@=S
    ready=S t_main=MONO`: exec is the process's age when main() began (interpreter
    and imports; clock-tick resolution); each phase is the seconds since the
    previous one; NAME@ a moment in seconds since main(); ready the seconds from
    main() to the header; t_main the CLOCK_MONOTONIC stamp of main().
    """

    def __init__(self, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = os.environ.get("TTCP_TIMINGS", "") not in ("", "0")
        self.enabled = enabled
        self.t_main = self._last = time.monotonic()
        self.exec_s = _process_age_s() if enabled else None
        self.parts: list[tuple[str, float]] = []
        self.ready_s: float | None = None

    def phase(self, name: str) -> None:
        """Close the phase that ends now."""
        now = time.monotonic()
        self.parts.append((name, now - self._last))
        self._last = now

    def mark(self, name: str) -> None:
        """A moment, in seconds since main() (e.g. aiohttp imported, in its thread)."""
        self.parts.append((name + "@", time.monotonic() - self.t_main))

    def ready(self) -> None:
        """The header is out."""
        self.ready_s = time.monotonic() - self.t_main

    def report(self) -> None:
        if not self.enabled:
            return
        fields = [] if self.exec_s is None else [f"exec={self.exec_s:.3f}"]
        fields += [f"{name}={secs:.4f}" for name, secs in self.parts]
        if self.ready_s is not None:
            fields.append(f"ready={self.ready_s:.4f}")
        fields.append(f"t_main={self.t_main:.6f}")
        print("ttcp: timings " + " ".join(fields), file=sys.stderr, flush=True)


def _process_age_s() -> float | None:
    """Seconds since this process started (clock-tick resolution); None if unknown."""
    try:
        with open("/proc/self/stat", "rb") as f:
            start_ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _preload_server(timings: Timings) -> threading.Thread:
    """Import aiohttp (most of ttcp's start-up) in a thread, from the moment the
    program is attached: the header does not wait for it, events are read
    meanwhile, and the server starts on the listening sockets once it is done."""
    # Importing aiohttp builds its HTTPS *client* context, loading the system CA
    # store (~0.1 s). ttcp only serves plain HTTP and never opens an outgoing
    # TLS connection, so unless the user chose a CA file, give it an empty one.
    os.environ.setdefault("SSL_CERT_FILE", os.devnull)

    def work() -> None:
        # An ImportError here is raised again, properly, when the server starts.
        with contextlib.suppress(ImportError):
            from ttcp import server  # noqa: F401
        timings.mark("aiohttp")
    t = threading.Thread(target=work, name="preload-aiohttp", daemon=True)
    t.start()
    return t


def _summary(printer: Printer, dropped: tuple[int, int], histogram: bool) -> str:
    """`N events printed, M dropped`, and when M > 0 why: the ring buffer was full
    (the reader fell behind; --ringbuf-size) or the kernel skipped runs."""
    verb = "read (histogram mode)" if histogram else "printed"
    full, skipped = dropped
    why = (f" ({full} with the ring buffer full, {skipped} skipped by the kernel: a BPF program "
           "was already running on that CPU)") if full + skipped else ""
    return (f"{printer.printed} events {verb}, {full + skipped} dropped{why}"
            + (f", {printer.undecodable} undecodable" if printer.undecodable else "")
            + (f", {printer.unwritten} not written (stdout closed)" if printer.reader_gone else ""))


class _Signals:
    """SIGINT/SIGTERM across start-up: before the event loop runs they unwind
    like Ctrl-C (releasing what was created); from attach until the loop's own
    handlers are in place they only ask for a stop (raising inside asyncio's
    set-up would leave it half made). Put back as they were on exit."""

    def __init__(self) -> None:
        self.stop_requested = threading.Event()
        self._saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def unwind(self) -> None:
        signal.signal(signal.SIGTERM, _interrupt)

    def remember(self) -> None:
        def handler(signum: int, frame: object) -> None:
            self.stop_requested.set()
        for sig in self._saved:
            signal.signal(sig, handler)

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class _StderrLog(logging.Handler):
    """The library's log records as ttcp's one-line stderr diagnostics."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"ttcp: {record.getMessage()}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, out: TextIO = sys.stdout, timings: Timings | None = None) -> int:
    timings = timings or Timings()
    signals = _Signals()
    logger = logging.getLogger("ttcp")
    handler, saved_level, saved_propagate = _StderrLog(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        signals.unwind()
        return _run(args, out, timings, signals)
    finally:
        signals.restore()
        logger.removeHandler(handler)
        logger.setLevel(saved_level)
        logger.propagate = saved_propagate


def _token(args: argparse.Namespace) -> Token | None:
    """The API token from --token-file, else from the file $TTCP_TOKEN_FILE names."""
    path = args.token_file or os.environ.get(TOKEN_FILE_ENV)
    if args.no_api or not path:
        return None
    return read_token_file(path)


def _open_table(tracer: Tracer, args: argparse.Namespace) -> KernelFilterTable:
    """Open (or take over the pinned) filter table; pin problems get the way out in ttcp's options."""
    try:
        return tracer.open_maps()
    except PinLockedError as e:
        raise TtcpError(f"{e}; stop it first, or give this ttcp another --pin directory") from None
    except PinnedTableTooBigError as e:
        raise TtcpError(f"{e}: start with --max-filters {e.count} or more (or remove filters first, "
                        "at the old size)") from None
    except (IncompatiblePinError, CorruptTableError) as e:
        if args.pin is None:
            raise
        raise TtcpError(f"{e}; start once with --pin-reset to replace the pinned table (its filters and "
                        f"counters are lost), or remove it: rm -r {args.pin}") from None


def _run(args: argparse.Namespace, out: TextIO, timings: Timings, signals: _Signals) -> int:
    token = _token(args)
    histogram_mode = args.histogram is not None or args.format == "histogram"
    timings.phase("setup")
    if not args.no_api and importlib.util.find_spec("aiohttp") is None:
        # The server is imported after the header; a missing package must fail before it.
        raise TtcpError("the HTTP API needs aiohttp, which is not installed: pip install aiohttp "
                        "(or run with --no-api)")
    sockets = [] if args.no_api else _listen(args.host, args.port)
    timings.phase("listen")
    rlimit.raise_nofile()  # pidfds and namespaces held for containers, beside the API's sockets
    resolver = Resolver.for_host()
    histograms = HistogramPrinter(out, ms=args.ms, cgroup_path=resolver.paths) if histogram_mode else None
    source: FiltersFile | None = None
    stats = BpfStats()
    try:
        if args.bpf_stats:
            stats = BpfStats.enable()
        with Tracer(max_filters=args.max_filters, max_groups=args.max_groups, ringbuf_size=args.ringbuf_size,
                    btf_path=args.btf, pin_dir=args.pin, pin_reset=args.pin_reset, resolver=resolver) as tracer:
            timings.phase("object")
            table = _open_table(tracer, args)
            table.workload_names = namer(resolver.registry)  # by container, by pod
            printer = Printer(args.format, out, show=not histogram_mode,
                              lines=Lines(table.names, resolver.paths, resolver.registry), wide=args.wide)
            wanted = list(dict.fromkeys(args.filters))
            if len(wanted) > args.max_filters:
                raise TtcpError(f"{len(wanted)} --filter filters exceed --max-filters {args.max_filters}")
            tracer.add_filters(wanted)
            if args.filters_file is not None:
                # With --pin, the pinned table says which filters the file managed (their
                # origin, kept in the `texts` map): those it no longer lists go now.
                source = FiltersFile(args.filters_file, table)
                source.start()
            else:  # a pinned table's file filters, with no file to manage them: the API's now
                table.set_origin([f for f in table.filters() if table.origin(f) is Origin.FILE], Origin.API)
            timings.phase("maps")
            tracer.attach(args.attach)
            if args.sample:
                tracer.enable_sampling()
            tracer.release_kernel_btf()
            timings.phase("attach")
            preload = None if args.no_api else _preload_server(timings)
            signals.remember()
            if not args.no_api and token is None and not is_loopback(args.host):
                logging.getLogger("ttcp").warning(
                    "the API on %s has no token: whoever reaches port %d can change what ttcp reports; "
                    "give --token-file (or %s)", args.host, args.port, TOKEN_FILE_ENV)
            docker, containerd = _runtimes(args)
            opts = Options(host=args.host, port=args.port, api=not args.no_api,
                           table_header=args.format == "table" and histograms is None,
                           histogram_s=args.histogram, table_full_hint=TABLE_FULL_HINT,
                           stream_backlog=args.stream_backlog, token=token,
                           allowed_hosts=tuple(args.allowed_hosts), sockets=sockets, filters_file=source,
                           bpf_stats=stats, max_series=args.metrics_max_series,
                           metrics_groups=args.metrics_groups, limits=_limits(args),
                           docker_socket=docker, containerd_state=containerd)
            agent = Agent(tracer, printer, opts, histograms, resolver)

            def header_out() -> None:
                timings.ready()
                if not opts.api:
                    timings.report()

            def api_up() -> None:
                timings.mark("api")
                timings.report()

            asyncio.run(agent.serve(signals.stop_requested, preload, on_ready=header_out, on_api=api_up))
            agent.print_totals()
            dropped = (tracer.ring_full(), tracer.recursion_misses())
    finally:
        for sock in sockets:  # the server closed them; not if it never started
            sock.close()
        resolver.close()
        if source is not None:
            source.close()
        stats.close()
    print(f"ttcp: {_summary(printer, dropped, histograms is not None)}", file=sys.stderr)
    return 0


def _runtimes(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The runtimes to follow (Docker's socket, containerd's state directory): those
    given, else the defaults that exist here."""
    if args.no_runtimes:
        return None, None
    docker = args.docker_socket or (DOCKER_SOCKET if os.path.exists(DOCKER_SOCKET) else None)
    containerd = args.containerd_state or (CONTAINERD_STATE if os.path.isdir(CONTAINERD_STATE) else None)
    return docker, containerd


def _limits(args: argparse.Namespace) -> Limits:
    return Limits(max_connections=args.max_connections, request_timeout_s=args.request_timeout,
                  keepalive_timeout_s=args.keepalive_timeout, max_stream_clients=args.max_stream_clients)


def _listen(host: str, port: int) -> list[socket.socket]:
    try:
        return listen(host, port)
    except BindError as e:
        hint = BIND_HINTS.get(e.errno or 0, "check --host and --port")
        raise TtcpError(f"{e} ({hint})") from None


def main(argv: list[str] | None = None) -> int:
    timings = Timings()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pin_reset and args.pin is None:
        parser.error("--pin-reset needs --pin DIR")
    try:
        return run(args, timings=timings)
    except TtcpError as e:  # BpfError included: errno, step and verifier log tail
        print(f"ttcp: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `ttcp | head`: the reader left; exit quietly like other filters.
        to_devnull(sys.stdout)
        return 0
    except KeyboardInterrupt:
        print("ttcp: interrupted during start-up; everything created was released", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
