"""Run the real `ttcp` command as a subprocess and read its output live."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Self

from tests.support import paths
from tests.support.kernel import scaled

REPO = str(paths.REPO)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TtcpProcess:
    """`python -m ttcp ARGS` with stdout lines collected by a thread."""

    def __init__(self, *args: str, port: int | None = None, ready_timeout: float = 20.0,
                 env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.args = ["--port", str(self.port), *args]
        env = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
        self.proc = subprocess.Popen([sys.executable, "-m", "ttcp", *self.args], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self._stderr.append), daemon=True).start()
        self._wait_ready(scaled(ready_timeout))

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in stream:
            sink(line.rstrip("\n"))

    def _wait_ready(self, timeout: float) -> None:
        """Ready: the API answers (unless --no-api), and then the table's header is
        out; without a header (json, histograms) the attach line on stderr says
        the program runs, and the API answering that the loop does."""
        header = not {"json", "histogram", "--histogram"} & set(self.args)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ttcp exited {self.proc.returncode}: {self.stderr}")
            if "--no-api" in self.args or self._api_up():
                if header:
                    self.header = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
                    return
                if "attached via" in self.stderr:
                    return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"ttcp not ready in {timeout}s: {self.stderr}")

    def _api_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    @property
    def stderr(self) -> str:
        return "\n".join(self._stderr)

    def wait_stderr(self, needle: str, timeout: float = 5.0) -> bool:
        """True once `needle` shows on stderr (its pump thread runs apart from stdout's)."""
        deadline = time.monotonic() + scaled(timeout)
        while needle not in self.stderr:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def next_line(self, timeout: float = 5.0) -> str:
        return self.lines.get(timeout=max(scaled(timeout), 0.01))

    def lines_until_quiet(self, quiet: float = 0.5, limit: float = 10.0) -> list[str]:
        """Every line printed until none came for `quiet` seconds."""
        out: list[str] = []
        deadline = time.monotonic() + scaled(limit)
        while time.monotonic() < deadline:
            try:
                out.append(self.lines.get(timeout=scaled(quiet)))
            except queue.Empty:
                break
        return out

    def api(self, method: str, path: str = "/", body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=scaled(5)) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal, wait, and return the exit code; stderr is complete after this."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        time.sleep(0.1)  # let the pump threads reach EOF
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
