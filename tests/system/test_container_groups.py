"""`by container` with a real Docker engine (issues 23 + 24): the kernel's groups, one per
cgroup and network namespace, named after the containers and merged by name.

Two containers of one network each make a request to a server on the gateway; the
filter `dst GATEWAY port 8080 by container` then has one group per container, named;
after `docker restart` (a new namespace, so a new kernel group) the client's second
request lands in the same named group (a new cgroup: a new kernel group). The private dockerd of
tests/support/container/engine.py; everything made here is removed. Run with
`make test-container`.
"""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest

from tests.support.cli_process import TtcpProcess
from tests.support.container.engine import Engine
from tests.system.test_container import engine, say  # noqa: F401 - the module's private engine
from tests.system.test_container_names import CLIENT, OTHER, PORT, Net, net, run_client  # noqa: F401

pytestmark = [pytest.mark.container, pytest.mark.kernel]


def groups(t: TtcpProcess, text: str) -> dict[str, int]:
    status, body = t.api("GET", f"/filters/{urllib.parse.quote(text, safe='')}/groups")
    assert status == 200, body
    return {g["group"]: g["closed"]["count"] for g in json.loads(body)["groups"]}


def settled(t: TtcpProcess, text: str, want: dict[str, int], limit_s: float = 15.0) -> dict[str, int]:
    deadline = time.monotonic() + limit_s
    while (got := groups(t, text)) != want and time.monotonic() < deadline:
        time.sleep(0.1)
    return got


def test_by_container_names_and_merges_the_groups(engine: Engine, net: Net) -> None:  # noqa: F811
    text = f"dst {net.gateway} port {PORT} by container"
    with TtcpProcess("--format", "json", "--docker-socket", f"{engine.run_dir}/docker.sock") as t:
        status, body = t.api("PUT", "/", text.encode())
        assert status in (200, 201, 204), body
        run_client(engine, net)
        run_client(engine, net, OTHER, net.other_ip)
        assert settled(t, text, {CLIENT: 1, OTHER: 1}) == {CLIENT: 1, OTHER: 1}
        # A restart makes a new cgroup (ids are never reused) and namespace (whose inode the
        # kernel may reuse at once): a new kernel group, merged under the same name.
        engine.docker("restart", "-t", "0", CLIENT, step="docker restart")
        assert settled(t, text, {CLIENT: 2, OTHER: 1}) == {CLIENT: 2, OTHER: 1}
        status, body = t.api("GET", "/metrics")
        assert status == 200
        series = [line for line in body.decode().splitlines() if line.startswith("ttcp_group_connection_rtt_seconds_count{")
                  and "group=" in line]
        say(f"by container: {series}")
        assert any(f'group="{CLIENT}"' in line for line in series), series
        assert t.stop() == 0
    assert "Traceback" not in t.stderr, t.stderr
