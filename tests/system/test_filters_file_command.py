"""`ttcp --filters-file PATH` as a process: applied before the header, read again
when a ConfigMap-style update swaps its `..data` symlink, a bad version refused
(one stderr line, GET /filters and /metrics say why, the last good set stays),
the API kept off the file's filters, a missing file at start an error, and a
restart with --pin. Real loopback traffic from 127.0.75.0/24.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli_process import REPO, TtcpProcess
from tests.support.kernel import scaled
from tests.support.traffic import Server, connect_many

pytestmark = pytest.mark.kernel
parser = pytest.importorskip("prometheus_client.parser")


class ConfigMap:
    """A directory laid out as kubelet mounts a ConfigMap with one key, `filters`."""

    def __init__(self, root: Path, content: str) -> None:
        self.root, self.generation = root, 0
        self.update(content)
        (root / "filters").symlink_to("..data/filters")

    @property
    def path(self) -> Path:
        return self.root / "filters"

    def update(self, content: str) -> None:
        """A new timestamped directory, `..data` swapped to it in one rename, the old one removed."""
        self.generation += 1
        new = self.root / f"..2026_01_01_00_00_0{self.generation}.{self.generation}"
        new.mkdir()
        (new / "filters").write_text(content)
        link = self.root / "..data_tmp"
        link.symlink_to(new.name)
        old = (self.root / "..data").resolve() if (self.root / "..data").exists() else None
        os.rename(link, self.root / "..data")
        if old is not None:
            (old / "filters").unlink()
            old.rmdir()


def listing(t: TtcpProcess) -> dict[str, Any]:
    status, body = t.api("GET", "/filters")
    assert status == 200, body
    doc: dict[str, Any] = json.loads(body)
    return doc


def until(what: str, check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + scaled(timeout)
    while not (got := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return got


def scalars(t: TtcpProcess) -> dict[str, float]:
    status, body = t.api("GET", "/metrics")
    assert status == 200
    return {s.name: s.value for fam in parser.text_string_to_metric_families(body.decode())
            for s in fam.samples if not s.labels}


def test_a_configmap_update_and_a_bad_version(tmp_path: Path) -> None:
    cm = ConfigMap(tmp_path, "127.0.75.1\n# the other client\n127.0.75.2\n")
    with TtcpProcess("--filters-file", str(cm.path), "--format", "json") as t, Server("127.0.0.1") as srv:
        doc = listing(t)  # applied before the program attached
        assert {e["filter"]: e["origin"] for e in doc["filters"]} == {"127.0.75.1": "file", "127.0.75.2": "file"}
        assert doc["filters_file"]["path"] == str(cm.path) and doc["filters_file"]["error"] is None
        connect_many(srv, "127.0.75.1", 3)
        assert len(t.lines_until_quiet()) == 3
        first = doc["filters_file"]["version"]

        assert t.api("PUT", "/", b"127.0.75.9")[0] == 204  # the API's own: kept across versions
        cm.update("127.0.75.1\n127.0.75.3\n")
        doc = until("the new version", lambda: (d := listing(t))["filters_file"]["version"] != first and d)
        assert {e["filter"]: e["origin"] for e in doc["filters"]} == {
            "127.0.75.1": "file", "127.0.75.3": "file", "127.0.75.9": "api"}
        assert {e["filter"]: e["matches"] for e in doc["filters"]}["127.0.75.1"] == 3  # kept

        status, body = t.api("DELETE", "/filters/127.0.75.1")
        assert status == 409 and f"managed by the filters file {cm.path}" in json.loads(body)["error"]

        good = doc["filters_file"]["version"]
        cm.update("127.0.75.1\n127.0.75.4 port 99999\n")
        error = until("the error", lambda: listing(t)["filters_file"]["error"])
        assert error["line"] == 2 and "99999" in error["message"]
        assert listing(t)["filters_file"]["version"] == good
        assert {e["filter"] for e in listing(t)["filters"]} == {"127.0.75.1", "127.0.75.3", "127.0.75.9"}
        assert t.wait_stderr(f"filters file {cm.path} line 2: ")
        m = scalars(t)
        assert m["ttcp_filters_file_errors_total"] == 1 and m["ttcp_filters_file_reload_success"] == 0

        cm.update("127.0.75.3\n")
        until("the fix", lambda: listing(t)["filters_file"]["error"] is None)
        assert {e["filter"] for e in listing(t)["filters"]} == {"127.0.75.3", "127.0.75.9"}
        m = scalars(t)
        assert m["ttcp_filters_file_errors_total"] == 1 and m["ttcp_filters_file_reload_success"] == 1
        connect_many(srv, "127.0.75.1", 1)  # no longer selected
        connect_many(srv, "127.0.75.3", 2)
        assert [json.loads(x)["saddr"] for x in t.lines_until_quiet()] == ["127.0.75.3"] * 2
        assert t.stop() == 0
    assert t.stderr.count("filters file") == 1


def test_a_missing_file_at_start_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "filters"
    r = subprocess.run([sys.executable, "-m", "ttcp", "--no-api", "--filters-file", str(missing)], cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                       timeout=scaled(30), check=False)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (f"ttcp: --filters-file {missing}: the file is missing (deleted, or a dangling "
                        "symlink)\n")


def test_a_restart_with_pin_and_a_file(tmp_path: Path, pin_dir: Path) -> None:
    """The file's filters come back the file's, with their pinned counters; the API's stay the API's."""
    path = tmp_path / "filters"
    path.write_text("127.0.76.1\n")
    args = ("--pin", str(pin_dir), "--filters-file", str(path), "--format", "json")
    with Server("127.0.0.1") as srv:
        with TtcpProcess(*args) as t:
            assert t.api("PUT", "/", b"127.0.76.9")[0] == 204
            connect_many(srv, "127.0.76.1", 2)
            assert len(t.lines_until_quiet()) == 2
            assert t.stop() == 0
        with TtcpProcess(*args) as t:
            entries = {e["filter"]: (e["origin"], e["matches"]) for e in listing(t)["filters"]}
            assert entries == {"127.0.76.1": ("file", 2), "127.0.76.9": ("api", 0)}
            assert t.api("DELETE", "/", b"127.0.76.1")[0] == 409
            assert t.stop() == 0


def test_a_restart_with_pin_drops_what_the_file_dropped_meanwhile(tmp_path: Path, pin_dir: Path) -> None:
    path = tmp_path / "filters"
    path.write_text("127.0.77.1\n127.0.77.2\n")
    args = ("--pin", str(pin_dir), "--filters-file", str(path))
    with TtcpProcess(*args) as t:
        assert t.stop() == 0
    path.write_text("127.0.77.1\n")
    with TtcpProcess(*args) as t:
        entries = {e["filter"]: e["origin"] for e in listing(t)["filters"]}
        t.stop()
    assert entries == {"127.0.77.1": "file"}


def test_a_restart_with_pin_without_the_file_hands_its_filters_to_the_api(tmp_path: Path, pin_dir: Path) -> None:
    """Nothing manages a pinned file filter once ttcp runs without --filters-file: it becomes
    the API's, so that a DELETE can remove it (a 409 naming an absent file would strand it)."""
    path = tmp_path / "filters"
    path.write_text("127.0.78.1\n")
    with TtcpProcess("--pin", str(pin_dir), "--filters-file", str(path)) as t:
        assert t.api("DELETE", "/", b"127.0.78.1")[0] == 409
        assert t.stop() == 0
    with TtcpProcess("--pin", str(pin_dir)) as t:
        assert {e["filter"]: e["origin"] for e in listing(t)["filters"]} == {"127.0.78.1": "api"}
        assert t.api("DELETE", "/", b"127.0.78.1")[0] == 204
        assert listing(t)["filters"] == []
        assert t.stop() == 0
