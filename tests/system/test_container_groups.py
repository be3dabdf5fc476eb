"""`by container` and `by pod` with a real Docker engine and a real containerd (issues 23
+ 24): the kernel's groups, one per cgroup and network namespace, named after the
containers and pods and merged by name.

Two containers of one network each make a request to a server on the gateway; the
filter `dst GATEWAY port 8080 by container` then has one group per container, named;
after `docker restart` (a new namespace, so a new kernel group) the client's second
request lands in the same named group (a new cgroup: a new kernel group). With
containerd, a pod made as the CRI makes one (tests/system/test_containerd.py): its
app container's connections are `shop/web-0/app`, the pod namespace's other
sockets `shop/web-0`; `by pod` then sums another container's and the others. The private dockerd of
tests/support/container/engine.py and the private containerd of
tests/support/containerd; everything made here is removed. Run with `make
test-container`.
"""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest

from tests.support.cli_process import TtcpProcess
from tests.support.container.engine import Engine
from tests.support.containerd.daemon import Containerd
from tests.support.workloads import Netns, run_in
from tests.system.test_container import engine, say  # noqa: F401 - the module's private engine
from tests.system.test_container_names import CLIENT, OTHER, PORT, Net, net, run_client  # noqa: F401
from tests.system.test_containerd import NS, SIDECAR, cri, ctrd, exchange, pod_netns, workload  # noqa: F401

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


def test_by_container_and_by_pod_with_containerd(ctrd: Containerd, pod_netns: Netns) -> None:  # noqa: F811
    pod = ("shop", "web-0")
    by_container, by_pod = "pod shop/web-0 by container", "pod shop/web-0 by pod"  # one after the other
    try:
        with TtcpProcess("--format", "json", "--containerd-state", str(ctrd.state_dir)) as t:
            status, body = t.api("PUT", "/", by_container.encode())
            assert status in (200, 201, 204), body
            ctrd.run_task("sb-web0", ["sleep", "1000"], ns=NS, netns=pod_netns.path, annotations=cri(pod, "sb-web0"))
            deadline = time.monotonic() + 5
            while workload(t, by_container)["state"] != "resolved":
                assert time.monotonic() < deadline, workload(t, by_container)
                time.sleep(0.01)
            sandbox_pid = ctrd.task_pid("sb-web0", NS)
            ctrd.run_task("app-web0", ["python3", "-c", SIDECAR], ns=NS, netns=f"/proc/{sandbox_pid}/ns/net",
                          annotations=cri(pod, "sb-web0", "app"))  # 3 connections to itself: 6 sockets
            time.sleep(1.0)  # named from the state directory
            run_in(exchange, netns=pod_netns.path)  # 2 connections from no container of the pod: 4 sockets
            want = {"shop/web-0/app": 6, "shop/web-0": 4}
            assert settled(t, by_container, want) == want

            status, body = t.api("DELETE", "/", by_container.encode())
            assert status in (200, 204), body
            status, body = t.api("PUT", "/", by_pod.encode())
            assert status in (200, 201, 204), body
            ctrd.run_task("side-web0", ["python3", "-c", SIDECAR.replace("8080", "8081")], ns=NS,
                          netns=f"/proc/{sandbox_pid}/ns/net", annotations=cri(pod, "sb-web0", "side"))
            time.sleep(1.0)
            run_in(exchange, netns=pod_netns.path)
            assert settled(t, by_pod, {"shop/web-0": 10}) == {"shop/web-0": 10}  # two cgroups, one pod
            assert t.stop() == 0
        assert "Traceback" not in t.stderr, t.stderr
    finally:
        for cid in ("side-web0", "app-web0", "sb-web0"):
            ctrd.remove_task(cid, NS)
