"""The `ttcp` command: load and attach, serve the filter API, print events.

Start-up order: the filters are loaded and the program attached first, then
the API listens, then the header is printed — so a header on stdout means
ttcp is fully ready. Events go to stdout, diagnostics to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn, TextIO

from . import addresses, events
from .elf_loader import VMLINUX_BTF
from .errors import TtcpError
from .tracer import DEFAULT_MAX_FILTERS, DEFAULT_RINGBUF_SIZE, MODES, Tracer

COALESCE_S = 0.002  # the most a line waits for company before it is printed

EPILOG = """\
output (stdout), one line per TCP connection that ended, whose local address is a filter:
  YYYY/MM/DD HH:MM:SS Src addr        Port   -> Dest addr       Port   RTT(ms)
  RTT is the kernel's smoothed RTT (srtt) with microsecond precision. With
  --format json each line is an object with every field (rtt_us, rttvar_us,
  retrans, bytes_acked, bytes_received, netns, hook, ...).

filter API (see README / GET /openapi.json):
  curl -L http://localhost:8090 -XGET
  curl -L http://localhost:8090 -XPUT -d 192.168.0.1
  curl -L http://localhost:8090 -XDELETE -d 192.168.0.1

attach modes: fentry (exact RTT at close(); needs ftrace), tp_btf
(tcp_destroy_sock), tracepoint (sock/inet_sock_set_state via perf events).
auto tries them in that order and says on stderr which one it uses.

needs: root (or CAP_BPF + CAP_PERFMON), a kernel with BTF
(/sys/kernel/btf/vmlinux). On SIGINT/SIGTERM ttcp drains the ring buffer,
prints a summary on stderr and exits 0.
"""


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


def _filter(text: str) -> bytes:
    try:
        return addresses.key_of(text)
    except addresses.AddressError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r} (0-65535)")
    return port


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
    p.add_argument("--filter", dest="filters", metavar="ADDR", type=_filter, action="append",
                   default=[], help="report connections whose local address is ADDR (IPv4 or "
                                    "IPv6); repeatable; loaded before the program attaches")
    p.add_argument("--max-filters", type=_positive, default=DEFAULT_MAX_FILTERS, metavar="N",
                   help="size of the filter table (default: %(default)s)")
    p.add_argument("--attach", choices=("auto",) + MODES, default="auto",
                   help="kernel hook: auto tries fentry, tp_btf, tracepoint in order "
                        "(default: %(default)s)")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="table: the header and aligned columns; json: one JSON object per line "
                        "(default: %(default)s)")
    p.add_argument("--ringbuf-size", type=_size, default=DEFAULT_RINGBUF_SIZE, metavar="BYTES",
                   help=f"kernel ring buffer for events, a power of two (default: {DEFAULT_RINGBUF_SIZE >> 20}M)")
    p.add_argument("--btf", type=Path, default=VMLINUX_BTF, metavar="PATH",
                   help="kernel BTF to relocate against (default: %(default)s; e.g. a BTFHub "
                        "file for a kernel without built-in BTF)")
    p.add_argument("--no-api", action="store_true",
                   help="do not start the HTTP API (filters come only from --filter)")
    return p


class Printer:
    """Decodes ring-buffer records and writes lines; flushes once per drain."""

    def __init__(self, fmt: str, out: TextIO) -> None:
        self.out = out
        self.printed = 0
        self.undecodable = 0
        self.unwritten = 0
        self.reader_gone = False
        self._offset = events.wall_clock_offset_ns()
        self._line = events.json_line if fmt == "json" else events.table_line
        self._pending: list[str] = []

    def record(self, raw: bytes) -> None:
        try:
            line = self._line(raw, self._offset)
        except TtcpError:
            self.undecodable += 1
            return
        self._pending.append(line)
        self.printed += 1

    def records(self, batch: list[bytes]) -> None:
        """A whole drained batch; short records (never sent by our program) are counted apart."""
        line, offset = self._line, self._offset
        try:
            lines = [line(raw, offset) for raw in batch]
        except TtcpError:
            for raw in batch:
                self.record(raw)
            return
        self._pending += lines
        self.printed += len(lines)

    def flush(self) -> bool:
        """Write what is pending; False once the reader of stdout has gone
        (`ttcp | head`): from then on lines are counted as unwritten, not printed."""
        if self._pending and not self.reader_gone:
            try:
                self.out.write("\n".join(self._pending) + "\n")
                self.out.flush()
            except BrokenPipeError:
                self.reader_gone = True
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())
        if self.reader_gone:
            self.printed -= len(self._pending)
            self.unwritten += len(self._pending)
        self._pending.clear()
        return not self.reader_gone


class Timings:
    """Start-up phases on stderr once ready, when TTCP_TIMINGS=1 (used by `make bench`).

    `ttcp: timings exec=S setup=S object=S maps=S attach=S aiohttp@=S server=S ready=S
    t_main=MONO`: exec is the process's age when main() began (interpreter and
    imports; clock-tick resolution); each phase is the seconds since the previous
    one; NAME@ a moment in seconds since main(); ready the seconds from main() to
    the header; t_main the CLOCK_MONOTONIC stamp of main().
    """

    def __init__(self, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = os.environ.get("TTCP_TIMINGS", "") not in ("", "0")
        self.enabled = enabled
        self.t_main = self._last = time.monotonic()
        self.exec_s = _process_age_s() if enabled else None
        self.parts: list[tuple[str, float]] = []

    def phase(self, name: str) -> None:
        """Close the phase that ends now."""
        now = time.monotonic()
        self.parts.append((name, now - self._last))
        self._last = now

    def mark(self, name: str) -> None:
        """A moment, in seconds since main() (e.g. aiohttp imported, in its thread)."""
        self.parts.append((name + "@", time.monotonic() - self.t_main))

    def report(self) -> None:
        if not self.enabled:
            return
        fields = [] if self.exec_s is None else [f"exec={self.exec_s:.3f}"]
        fields += [f"{name}={secs:.4f}" for name, secs in self.parts]
        fields += [f"ready={time.monotonic() - self.t_main:.4f}", f"t_main={self.t_main:.6f}"]
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
    """Import aiohttp while the kernel verifies our program (ctypes drops the GIL)."""
    # Importing aiohttp builds its HTTPS *client* context, loading the system CA
    # store (~0.1 s). ttcp only serves plain HTTP and never opens an outgoing
    # TLS connection, so unless the user chose a CA file, give it an empty one.
    os.environ.setdefault("SSL_CERT_FILE", os.devnull)

    def work() -> None:
        # An ImportError here is raised again, properly, when the server starts.
        with contextlib.suppress(ImportError):
            from . import server  # noqa: F401
        timings.mark("aiohttp")
    t = threading.Thread(target=work, name="preload-aiohttp", daemon=True)
    t.start()
    return t


async def _serve(tracer: Tracer, args: argparse.Namespace, printer: Printer,
                 preload: threading.Thread | None, timings: Timings) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if _stop_requested.is_set():  # a signal came while the loop was being set up
        stop.set()
    runner = None
    if not args.no_api:
        if preload is not None:
            preload.join()
        from . import server
        app = server.create_app(tracer.filters, health=lambda: _health(tracer, printer),
                                mono_to_wall=tracer.monotonic_to_wall)
        runner = await server.start(app, args.host, args.port)
    ring = tracer.ring
    assert ring is not None

    def drain() -> int:
        batch = ring.read_batch()
        printer.records(batch)
        if not printer.flush():
            stop.set()  # nobody reads our stdout any more
        return len(batch)

    def on_readable() -> None:
        # After a wakeup that brought records, stop listening for COALESCE_S:
        # at high rates the next drain then takes many records per wakeup (the
        # kernel does not wake a reader that has not caught up), which costs
        # far less CPU per event; a lone event is still printed at once.
        if drain():
            loop.remove_reader(ring.fileno())
            loop.call_later(COALESCE_S, resume)

    def resume() -> None:
        if not stop.is_set():
            loop.add_reader(ring.fileno(), on_readable)
            drain()

    timings.phase("server")
    if args.format == "table":
        printer.out.write(events.HEADER + "\n")
        printer.out.flush()
    timings.report()
    loop.add_reader(ring.fileno(), on_readable)
    try:
        drain()
        await stop.wait()
    finally:
        loop.remove_reader(ring.fileno())
        if runner is not None:
            from . import server
            await server.stop(runner)
        drain()


def _health(tracer: Tracer, printer: Printer) -> dict:
    return {
        "status": "ok",
        "attach_mode": tracer.report.mode,
        "attach_method": tracer.report.method,
        "events": printer.printed,
        "dropped": tracer.drops(),
        "filters": len(tracer.filters) if tracer.filters is not None else 0,
        "max_filters": tracer.filters.max_entries if tracer.filters is not None else 0,
    }


_stop_requested = threading.Event()


def _remember_stop(signum: int, frame: object) -> None:
    """From attach until the loop's own handlers are in place, a signal only
    asks for a stop: raising inside asyncio's set-up would leave it half made."""
    _stop_requested.set()


def _interrupt(signum: int, frame: object) -> None:
    """Before the event loop runs, SIGTERM unwinds like Ctrl-C, releasing what was created."""
    raise KeyboardInterrupt


def run(args: argparse.Namespace, out: TextIO = sys.stdout, timings: Timings | None = None) -> int:
    timings = timings or Timings()
    signal.signal(signal.SIGTERM, _interrupt)
    preload = None if args.no_api else _preload_server(timings)
    printer = Printer(args.format, out)
    timings.phase("setup")
    with Tracer(max_filters=args.max_filters, ringbuf_size=args.ringbuf_size,
                btf_path=args.btf) as tracer:
        timings.phase("object")
        tracer.open_maps()
        if len(set(args.filters)) > args.max_filters:
            raise TtcpError(f"{len(set(args.filters))} --filter addresses exceed --max-filters "
                            f"{args.max_filters}")
        tracer.add_filters(args.filters)
        timings.phase("maps")
        tracer.attach(args.attach)
        timings.phase("attach")
        signal.signal(signal.SIGTERM, _remember_stop)
        signal.signal(signal.SIGINT, _remember_stop)
        asyncio.run(_serve(tracer, args, printer, preload, timings))
        dropped = tracer.drops()
    print(f"ttcp: {printer.printed} events printed, {dropped} dropped"
          + (f", {printer.undecodable} undecodable" if printer.undecodable else "")
          + (f", {printer.unwritten} not written (stdout closed)" if printer.reader_gone else ""),
          file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    timings = Timings()
    args = build_parser().parse_args(argv)
    try:
        return run(args, timings=timings)
    except TtcpError as e:  # BpfError included: errno, step and verifier log tail
        print(f"ttcp: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `ttcp | head`: the reader left; exit quietly like other filters.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("ttcp: interrupted during start-up; everything created was released", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
