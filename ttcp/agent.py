"""The running agent: the event loop that drains the ring buffer, serves the
API and prints, once the program is attached.

Start-up order: the API's sockets listen first (`listen`, before anything is
loaded, so a port in use fails at once), then the filters are loaded and the
program attached (by the caller), then the header is printed — so a header on
stdout means the program runs and the API's socket takes connections — and
only then does the HTTP server (aiohttp, whose import is most of ttcp's
start-up) take over the sockets: a request made as soon as the header is out
waits in the listen queue until the server answers it. Events go to stdout
(and to GET /events clients), diagnostics to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ttcp.api.event_stream import DEFAULT_BACKLOG, EventHub
from ttcp.api.limits import Connections, Limits
from ttcp.api.metrics import FileCounters, FilterSeries, GroupSeries, ProgramStats, Snapshot
from ttcp.api.process_metrics import ProcessMetrics, ProcessReader
from ttcp.api.series_bound import DEFAULT_MAX_SERIES, SeriesBound
from ttcp.api.token import Token
from ttcp.errors import BindError, FormatError, TtcpError
from ttcp.kernel.bpf_stats import BpfStats
from ttcp.output import HistogramPrinter, Printer
from ttcp.rtt import clock, events
from ttcp.rtt.filter_table import FilterStats
from ttcp.rtt.filters import Filter
from ttcp.rtt.filters_sync import SETTLE_S, FiltersFile
from ttcp.rtt.groups import GroupSet, Lazy, no_paths
from ttcp.rtt.tracer import Tracer
from ttcp.workloads.resolver import Resolver
from ttcp.workloads.runtime import Change

log = logging.getLogger("ttcp")

COALESCE_S = 0.002  # the most a line waits for company before it is printed
DEFAULT_METRICS_GROUPS = 5  # --metrics-groups: each filter's top groups in /metrics
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@functools.cache
def version() -> str:
    from importlib import metadata  # ~30 ms of imports: not on the way to the header
    try:
        return metadata.version("ttcp")
    except metadata.PackageNotFoundError:
        return "unknown"


def listen(host: str, port: int, backlog: int = 1024) -> list[socket.socket]:
    """The API's listening sockets, bound as asyncio's create_server binds them
    (every address `host` resolves to; SO_REUSEADDR; IPv6 sockets v6-only).
    BindError if one cannot be had; nothing stays open then. The listen queue
    is deep enough for a burst of thousands of connects: a full one drops SYNs,
    and a client whose SYN is dropped, a fresh /healthz too, waits 1 s to retry."""
    socks: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
        for sock in socks:
            sock.listen(backlog)
            sock.setblocking(False)
    except (OSError, UnicodeError) as e:  # UnicodeError: a host IDNA cannot encode
        for sock in socks:
            sock.close()
        raise BindError.of(host, port, e) from None
    return socks


@dataclass
class Options:
    host: str
    port: int
    api: bool
    table_header: bool  # print the table's header line once ready
    histogram_s: float | None = None
    sample_mode: str = "auto"  # hooks tried when sampling is switched on
    table_full_hint: str = ""
    stream_backlog: int = DEFAULT_BACKLOG  # lines a GET /events client may fall behind
    token: Token | None = None  # required of every API call but GET /healthz
    allowed_hosts: tuple[str, ...] = ()  # names accepted in Host besides IP literals and localhost
    sockets: list[socket.socket] = field(default_factory=list)  # from listen(): the API serves these
    filters_file: FiltersFile | None = None  # started: applied once, its directory watched
    bpf_stats: BpfStats = field(default_factory=BpfStats)  # the kernel's BPF statistics (--bpf-stats)
    max_series: int = DEFAULT_MAX_SERIES  # bound on /metrics' series (0: none)
    metrics_groups: int = DEFAULT_METRICS_GROUPS  # the top groups of a filter with a breakdown in /metrics
    limits: Limits = field(default_factory=Limits)  # connections, request deadline, keep-alive, streams
    docker_socket: str | None = None  # the Docker engine followed for names (None: none)
    containerd_state: str | None = None  # containerd's task state directory followed (None: none)


class Agent:
    """One run: tracer, printers, event hub; the callbacks the API is given."""

    def __init__(self, tracer: Tracer, printer: Printer, opts: Options,
                 histograms: HistogramPrinter | None = None, resolver: Resolver | None = None) -> None:
        self.tracer = tracer
        self.printer = printer
        self.resolver = resolver  # its cgroup paths are followed while the loop runs
        self.opts = opts
        self.histograms = histograms
        self.hub = EventHub(opts.stream_backlog, max_clients=opts.limits.stream_clients)
        self.connections: Connections[Any] = Connections(opts.limits)  # the API's, once it serves
        self.bound = SeriesBound(opts.max_series)
        self.process: ProcessReader | None = None
        with contextlib.suppress(OSError, FormatError):  # no /proc: no process metrics
            self.process = ProcessReader()
        self._runner: Any = None  # the API's aiohttp runner, once it serves
        self._runtime_health: dict[str, Callable[[], dict[str, object]]] = {}  # runtime -> its state
        self._bugs: set[str] = set()  # unexpected exceptions following the runtimes, logged once each

    @property
    def version(self) -> str:
        return version()

    # ---- what the API sees ----

    def health(self) -> dict[str, Any]:
        table = self.tracer.table
        return {
            "status": "ok",
            "version": self.version,
            "attach_mode": self.tracer.report.mode,
            "attach_method": self.tracer.report.method,
            "events": self.printer.printed,
            "dropped": self.tracer.drops(),
            "filters": len(table) if table is not None else 0,
            "max_filters": table.max_entries if table is not None else 0,
            "sampling": self.tracer.sampling_enabled,
            "stream_clients": len(self.hub.clients),
            "stream_clients_dropped": self.hub.dropped_clients,
            "api_connections": self.connections.counts.open,
            "api_connections_max": self.opts.limits.max_connections,
            "api_connections_rejected": self._rejected(),
            **({} if self.resolver is None else {"containers": self._containers()}),
        }

    def _containers(self) -> dict[str, Any]:
        """The container registry's size and bounds (a leak shows here), and the runtimes followed."""
        assert self.resolver is not None
        registry = self.resolver.registry
        return {"running": len(registry), "dropped": registry.dropped, "followed": len(self.resolver.followed),
                "docker": self.opts.docker_socket, "containerd": self.opts.containerd_state,
                **{f"{name}_status": health() for name, health in self._runtime_health.items()}}

    def sampling(self) -> dict[str, Any]:
        s = self.tracer.sampling
        out = {"enabled": self.tracer.sampling_enabled, "attach_mode": s.mode or None,
               "attach_method": s.method or None,
               "skipped": [{"mode": m, "reason": r} for m, r in s.skipped]}
        if self.tracer.sampling_enabled:
            out["workloads"] = self.tracer.sampling_workloads
            if not self.tracer.sampling_workloads:
                out["note"] = ("the classic tcp/tcp_probe tracepoint has the socket only since Linux 6.9: "
                               "filters with a workload, and the groups of `by cgroup` and `by netns`, get no "
                               "live samples here")
        return out

    def set_sampling(self, on: bool) -> dict[str, Any]:
        if on:
            self.tracer.enable_sampling(self.opts.sample_mode)
        else:
            self.tracer.disable_sampling()
        return self.sampling()

    def metrics(self) -> Snapshot:
        table = self.tracer.table
        assert table is not None
        stats = self._stats()
        grouped = table.groups([f for f in stats if f.by is not None], top=self.opts.metrics_groups)
        series = [_series(f, s, grouped.get(f), self.cgroup_path) for f, s in stats.items()]
        source = self.opts.filters_file
        return Snapshot(series, events_total=self.printer.printed,
                        dropped={"ring_full": self.tracer.ring_full(), "recursion": self.tracer.recursion_misses()},
                        filters_max=table.max_entries, attach_mode=self.tracer.report.mode,
                        version=self.version, sampling=self.tracer.sampling_enabled,
                        stream_clients_dropped=self.hub.dropped_clients, process=self._process(),
                        programs=[ProgramStats(*p) for p in self.tracer.program_stats()],
                        bpf_stats=self.opts.bpf_stats.enabled(),
                        filters_file=None if source is None else FileCounters(source.errors_total, source.reload_ok),
                        bound=self.bound, now_ns=time.monotonic_ns(), api_connections=self.connections.counts.open,
                        api_connections_max=self.opts.limits.max_connections, api_rejected=self._rejected())

    def cgroup_path(self, cgroup_id: int) -> str | None:
        return self.resolver.paths(cgroup_id) if self.resolver is not None else None

    def _rejected(self) -> dict[str, int]:
        return {**self.connections.counts.rejected, "streams": self.hub.refused_clients}

    def _process(self) -> ProcessMetrics | None:
        if self.process is None:
            return None
        try:
            return self.process.read()
        except (OSError, FormatError):  # left out of this answer rather than failing it
            return None

    # ---- the loop ----

    async def serve(self, stop_requested: threading.Event, preload: threading.Thread | None,
                    on_ready: Callable[[], None] | None = None,
                    on_api: Callable[[], None] | None = None) -> None:
        """Print the header (then `on_ready`), drain the ring, start the API on
        the listening sockets once `preload` has imported the server (then
        `on_api`), and run until a signal or stdout's reader goes."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        if stop_requested.is_set():  # a signal came while the loop was being set up
            stop.set()
        try:
            await self._run(loop, stop, on_ready, lambda: self._start_api(preload, on_api))
        finally:
            for sig in _SIGNALS:
                loop.remove_signal_handler(sig)
            if self._runner is not None:
                from ttcp import server
                runner, self._runner = self._runner, None
                await server.stop(runner)

    async def _start_api(self, preload: threading.Thread | None, on_api: Callable[[], None] | None) -> None:
        if not self.opts.api:
            return
        if preload is not None:  # the reader drains meanwhile
            await asyncio.to_thread(preload.join)
        from ttcp import server
        assert self.tracer.table is not None
        source = self.opts.filters_file
        hooks = server.ApiHooks(health=self.health, mono_to_wall=clock.monotonic_to_wall,
                             metrics=self.metrics, sampling=self.sampling, set_sampling=self.set_sampling,
                             events=self.hub, table_full_hint=self.opts.table_full_hint,
                             filters_file=None if source is None else source.status, cgroup_path=self.cgroup_path)
        app = server.create_app(self.tracer.table, hooks, token=self.opts.token,
                                allowed_hosts=self.opts.allowed_hosts)
        self._runner = await server.start(app, self.opts.host, self.opts.port, self.opts.sockets,
                                          connections=self.connections)
        if on_api is not None:
            on_api()

    async def _run(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event,
                   on_ready: Callable[[], None] | None, start_api: Callable[[], Awaitable[None]]) -> None:
        ring = self.tracer.ring
        assert ring is not None
        printer, hub = self.printer, self.hub

        def drain() -> int:
            runs = ring.read_runs(events.EVENT_SIZE)
            lines = printer.records(runs, want_json=hub.wanted)
            if lines:
                hub.publish(lines)
            if not printer.flush():
                stop.set()  # nobody reads our stdout any more
            return len(runs)

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

        def follow_runtimes(changes: list[Change]) -> None:
            # A container started, ended, was renamed or removed: container and pod filters follow.
            table = self.tracer.table
            assert self.resolver is not None and table is not None
            try:
                for w, resolution in self.resolver.apply(changes):
                    try:
                        table.workload_moved(w, resolution)
                    except TtcpError as e:  # the kernel refused a write: say so, keep following
                        log.warning("%s: %s", w, e)
                self.resolver.settle()  # namespaces the table no longer selects may be freed now
            except Exception as e:  # noqa: BLE001 -- a bug: one line per kind, the watchers keep going
                self._bug("following the container runtimes", e)

        def follow_workloads() -> None:
            # A cgroup path's cgroup came, went or came back: the table follows (no API call).
            table = self.tracer.table
            assert self.resolver is not None and table is not None
            for resolution in self.resolver.process():
                try:
                    table.resolution_changed(resolution)
                except TtcpError as e:  # the kernel refused a write: say so, keep following
                    log.warning("cgroup %s: %s", resolution.selector[1], e)
            expire()

        expiry: list[asyncio.TimerHandle] = []  # the one pending expire() call, if any

        def expire() -> None:
            # A removed cgroup's id selects its sockets a while longer (table_rules.LINGER_S).
            table = self.tracer.table
            assert table is not None
            for handle in expiry:
                handle.cancel()
            expiry.clear()
            try:
                when = table.expire()
            except TtcpError as e:
                log.warning("workload table: %s", e)
                return
            if when is not None:
                expiry.append(loop.call_later(max(when - time.monotonic(), 0.0) + 0.01, expire))

        watched = self.resolver.fileno() if self.resolver is not None else -1
        if self.opts.table_header:
            printer.out.write(printer.header + "\n")
            printer.out.flush()
        if on_ready is not None:
            on_ready()
        ticker = None
        if self.histograms is not None and self.opts.histogram_s:
            ticker = asyncio.create_task(self._histogram_ticks(stop))
        loop.add_reader(ring.fileno(), on_readable)
        if watched >= 0:
            loop.add_reader(watched, follow_workloads)
        unwatch = self._watch_filters_file(loop)
        runtimes = self._follow_runtimes(follow_runtimes)
        try:
            drain()
            await start_api()
            await stop.wait()
        finally:
            loop.remove_reader(ring.fileno())
            if watched >= 0:
                loop.remove_reader(watched)
            unwatch()
            for task in runtimes:
                task.cancel()
            await asyncio.gather(*runtimes, return_exceptions=True)
            for handle in expiry:
                handle.cancel()
            if ticker is not None:
                ticker.cancel()
            drain()

    def _bug(self, where: str, e: BaseException) -> None:
        text = f"{where}: unexpected {e.__class__.__name__}: {str(e)[:200]}"
        if text not in self._bugs and len(self._bugs) < 1024:
            self._bugs.add(text)
            log.error("%s", text)

    def _watch_task(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        """A runtime watcher runs until cancelled: an end before that is logged at once."""
        def ended(t: asyncio.Task[None]) -> None:
            if t.cancelled():
                return
            e = t.exception()
            if e is not None:
                self._bug(f"{t.get_name()} watcher died; no more names from it", e)
            else:
                log.error("%s watcher ended; no more names from it", t.get_name())
        task.add_done_callback(ended)
        return task

    def _follow_runtimes(self, emit: Callable[[list[Change]], None]) -> list[asyncio.Task[None]]:
        """The container runtimes' watchers, as tasks (none without a resolver)."""
        tasks: list[asyncio.Task[None]] = []
        if self.resolver is None:
            return tasks
        if self.opts.docker_socket is not None:
            try:
                from ttcp.workloads.docker_watch import DockerWatcher
            except ImportError as e:  # aiohttp is optional with --no-api
                log.warning("docker %s: names from Docker need aiohttp (%s)", self.opts.docker_socket, e)
            else:
                watcher = DockerWatcher(self.opts.docker_socket, emit, log.warning)
                self._runtime_health["docker"] = watcher.health
                tasks.append(self._watch_task(asyncio.create_task(watcher.run(), name="docker")))
        if self.opts.containerd_state is not None:
            from ttcp.workloads.containerd_watch import follow as follow_containerd
            health: dict[str, object] = {}
            self._runtime_health["containerd"] = lambda: dict(health)
            tasks.append(self._watch_task(asyncio.create_task(
                follow_containerd(self.opts.containerd_state, emit, log.warning, health), name="containerd")))
        return tasks

    def _watch_filters_file(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """Read the filters file again SETTLE_S after its directory's first event (a
        ConfigMap update is several); returns what stops watching."""
        source = self.opts.filters_file
        if source is None or source.watch is None:
            return lambda: None
        fd = source.watch.fileno()
        pending: list[asyncio.TimerHandle] = []

        def on_events() -> None:
            if source.changed() and not pending:
                pending.append(loop.call_later(SETTLE_S, reload))

        def reload() -> None:
            pending.clear()
            source.reload()
            if source.lost_watch():
                loop.remove_reader(fd)

        def unwatch() -> None:
            loop.remove_reader(fd)
            for handle in pending:
                handle.cancel()

        loop.add_reader(fd, on_events)
        return unwatch

    async def _histogram_ticks(self, stop: asyncio.Event) -> None:
        assert self.histograms is not None and self.opts.histogram_s
        while True:
            await asyncio.sleep(self.opts.histogram_s)
            if not self.histograms.interval(self._stats(), self._all_groups()):
                stop.set()
                return

    def _stats(self) -> dict[Filter, FilterStats]:
        table = self.tracer.table
        assert table is not None
        return table.stats(table.filters())

    def _all_groups(self) -> dict[Filter, GroupSet]:
        table = self.tracer.table
        assert table is not None
        return table.groups([f for f in table.filters() if f.by is not None])

    def print_totals(self) -> None:
        if self.histograms is not None:
            self.histograms.totals(self._stats(), self._all_groups())


def _series(f: Filter, s: FilterStats, groups: GroupSet | None,
            cgroup_path: Callable[[int], str | None] = no_paths) -> FilterSeries:
    """A filter's series for /metrics; with a breakdown, its top groups too."""
    if groups is None:
        return FilterSeries(str(f), s.closed, s.sampled, s.last_match_ns)
    # Decoded only for the filters the bound shows (decoding costs); a partial, not a
    # closure: one object per filter a scrape.
    top = functools.partial(_group_series, groups, cgroup_path)
    return FilterSeries(str(f), s.closed, s.sampled, s.last_match_ns, Lazy(len(groups.groups), top), groups.live,
                        groups.evicted)


def _group_series(groups: GroupSet, cgroup_path: Callable[[int], str | None]) -> list[GroupSeries]:
    return [GroupSeries(g.key.text(groups.by, cgroup_path), g.closed, g.sampled) for g in groups.groups]


