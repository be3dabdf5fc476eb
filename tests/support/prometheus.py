"""A private Prometheus server for the tests, and promtool: Debian's `prometheus` package.

The test writes the configuration (one scrape job every second, the bearer token
from a file), the server keeps its TSDB in the test's temporary directory and
listens on a free loopback port (never 9090: a developer's own Prometheus may be
there); queries go through the HTTP API, as a user's would. The server dies with
the thread that started it (PR_SET_PDEATHSIG, set by setpriv), so a test killed half-way leaves
no server behind; stop() asks it to exit (SIGTERM, its clean shutdown).

What it takes to know (measured): the first scrape comes 5-6 s after the start (the discovery
manager hands targets to the scrapers at most every 5 s), so one server serves a
whole test module; rate() needs two samples in its window, and a series' first
sample is no increase, so a test lets the zeros be scraped before it makes traffic.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tests.support.kernel import scaled

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
T = TypeVar("T")


class PrometheusError(RuntimeError):
    """The server did not start, or a query failed (the message says why)."""


def installed() -> str | None:
    """None when prometheus and promtool are there, else what to do."""
    missing = [p for p in (PROMETHEUS, PROMTOOL) if not Path(p).exists()]
    return f"{', '.join(missing)} missing: apt-get install prometheus (make deps)" if missing else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape_config(target: str, token_file: Path | None, *, job: str = "ttcp",
                  rule_files: Sequence[Path] = ()) -> str:
    """prometheus.yml scraping `target` every second, as JSON (YAML's subset: no PyYAML
    needed). scrape_timeout must not exceed the interval: it is set to it."""
    job_cfg: dict[str, Any] = {"job_name": job, "scrape_interval": "1s", "scrape_timeout": "1s",
                               "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}
    if token_file is not None:  # read on every scrape, a trailing newline trimmed
        job_cfg["authorization"] = {"type": "Bearer", "credentials_file": str(token_file)}
    cfg: dict[str, Any] = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                           "scrape_configs": [job_cfg]}
    if rule_files:
        cfg["rule_files"] = [str(p) for p in rule_files]
    return json.dumps(cfg, indent=2)


class PromServer:
    """One prometheus process on 127.0.0.1:PORT with its data under `workdir`."""

    def __init__(self, config: str, workdir: Path) -> None:
        self.config = config
        self.dir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "prometheus.yml").write_text(self.config)
        with open(self.dir / "prometheus.log", "wb") as log:
            self.proc = subprocess.Popen(
                # setpriv: SIGTERM to the server when the thread that started it ends (no preexec_fn:
                # Python code between fork and exec may deadlock on a lock another thread held)
                ["setpriv", "--pdeathsig", "TERM", "--", PROMETHEUS, f"--config.file={self.dir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        try:
            self.wait("ready", self._ready, timeout)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise PrometheusError(f"prometheus exited {self.proc.returncode}: {self.log()[-2000:]}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        path = self.dir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, SIGKILL if it hangs; its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    # ---- the HTTP API ----

    def api(self, path: str, **params: str | float) -> Any:
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
                doc = json.load(r)
        except urllib.error.HTTPError as e:  # 400/422: a bad query; the body says why
            doc = json.load(e)
        if doc.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{metric: {labels}, value: [ts, "text"]}] (a scalar as one)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "vector":
            return list(data["result"])
        return [{"metric": {}, "value": data["result"]}]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return list(self.api("query_range", query=expr, start=start, end=end, step=step)["result"])

    def value(self, expr: str, **labels: str) -> float | None:
        """The sample of `expr` whose labels include `labels`, or None."""
        for r in self.query(expr):
            if all(r["metric"].get(k) == v for k, v in labels.items()):
                return float(r["value"][1])
        return None

    def label_values(self, label: str, selector: str | None = None) -> list[str]:
        """What Grafana's label_values(SELECTOR, LABEL) asks."""
        params = {"match[]": selector} if selector else {}
        return sorted(self.api(f"label/{label}/values", **params))

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def wait(self, what: str, check: Callable[[], T], timeout: float = 20.0) -> T:
        """check() until it is truthy; PrometheusError saying what did not happen."""
        deadline = time.monotonic() + scaled(timeout)
        last: T = check()
        while not last:
            if time.monotonic() > deadline:
                raise PrometheusError(f"{what}: not within {timeout} s (last: {last!r})")
            time.sleep(0.1)
            last = check()
        return last

    def wait_up(self, timeout: float = 20.0) -> dict[str, Any]:
        """Until every target is up; the first one."""
        def up() -> dict[str, Any] | None:
            ts = self.targets()
            return ts[0] if ts and all(t["health"] == "up" for t in ts) else None
        return self.wait("every target up", up, timeout)


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], input=None if stdin is None else stdin.decode(),
                          capture_output=True, text=True, timeout=scaled(60), check=False)
