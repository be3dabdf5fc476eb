"""containerd for real: the state-directory watcher against a private containerd (Debian's package).

A pod is made the way the CRI plugin makes one, with `ctr`: a network namespace
(`ip netns add`, loopback up) as the sandbox's, the sandbox (pause) task joined
to it with `--with-ns network:`, and the pod's containers with the annotations
the CRI sets (io.kubernetes.cri.sandbox-namespace/-name, container-name,
container-type, sandbox-id). The image is the Docker test's cached debootstrap
tree, imported as an OCI layout (no registry, no dockerd). Everything is removed
afterwards (tests/support/containerd/daemon.py). The watcher is tested alone, then
ttcp itself: `PUT pod shop/web-0` before the pod exists, followed when its sandbox
starts, exactly the connections in the pod's namespace selected and named, a sidecar
started later named on its own connections.

Run with `make test-container` (root; it installs the packages it lacks). Where it
cannot run it skips, except when TTCP_REQUIRE_KERNEL=1 or TTCP_REQUIRE_CONTAINER=1
(CI), where that is a failure.
"""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scripts import netns_scenario as scenario
from tests.support.cli_process import TtcpProcess
from tests.support.container import images
from tests.support.container.engine import Unavailable, ensure_packages
from tests.support.containerd.daemon import Containerd, missing_commands, remove_leftovers
from tests.support.kernel import scaled
from tests.support.traffic import Conn, Server, connect_many
from tests.support.workloads import Netns, run_in
from ttcp.workloads.containerd_watch import StateWatcher
from ttcp.workloads.runtime import Change, Container, Gone, Pod, Relisted, Seen

pytestmark = [pytest.mark.container]

NS = "k8s.io"  # the CRI plugin's namespace
_T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}] {text}", flush=True)


def _cannot_run(reason: str) -> None:
    if "1" in (os.environ.get("TTCP_REQUIRE_KERNEL"), os.environ.get("TTCP_REQUIRE_CONTAINER")):
        pytest.fail(f"containerd test cannot run ({reason}) but CI requires it", pytrace=False)
    pytest.skip(f"containerd test: {reason}")


def cri(pod: tuple[str, str], sandbox_id: str, container: str | None = None) -> dict[str, str]:
    """The annotations the CRI plugin puts on a pod's sandbox (container None) or container."""
    out = {"io.kubernetes.cri.sandbox-namespace": pod[0], "io.kubernetes.cri.sandbox-name": pod[1],
           "io.kubernetes.cri.sandbox-id": sandbox_id,
           "io.kubernetes.cri.container-type": "sandbox" if container is None else "container"}
    if container is not None:
        out["io.kubernetes.cri.container-name"] = container
    return out


@pytest.fixture(scope="module")
def ctrd() -> Iterator[Containerd]:
    """A private containerd with the test image in namespace k8s.io; all removed after."""
    t0 = time.monotonic()
    try:
        ensure_packages(say)  # docker.io brings containerd, runc and ctr; debootstrap the image's tree
    except Unavailable as e:
        _cannot_run(str(e))
    if missing_commands():
        _cannot_run(f"missing {', '.join(missing_commands())} after installing the packages")
    with scenario._sigterm_as_interrupt():
        remove_leftovers(say)
        c = Containerd(say)
        try:
            c.start()
            work = c.run_dir / "base"
            work.mkdir()
            c.import_image(images.rootfs_tarball(work, say, c.timings), NS)
            c.timings["harness ready"] = time.monotonic() - t0
            yield c
        finally:
            t1 = time.monotonic()
            failed = c.cleanup()
            c.timings["cleanup"] = time.monotonic() - t1
            say("containerd timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in c.timings.items()))
    assert not failed, f"cleanup incomplete: {failed}"
    assert not list(Path("/var/tmp").glob(f"ttcp-ctrd-{os.getpid()}-*"))


@pytest.fixture
def pod_netns() -> Iterator[Netns]:
    made = Netns()
    try:
        yield made
    finally:
        made.delete()


@pytest.fixture
def watcher(ctrd: Containerd) -> Iterator[StateWatcher]:
    w = StateWatcher(ctrd.state_dir, say)
    yield w
    w.close()


def until(w: StateWatcher, match: Callable[[Change], bool], within: float = 5.0) -> tuple[Change, float]:
    """The first change `match` accepts, and the seconds it took; fails after `within`."""
    t0 = time.monotonic()
    deadline = t0 + within
    while (left := deadline - time.monotonic()) > 0:
        if select.select([w.fileno()], [], [], left)[0]:
            for change in w.process():
                if match(change):
                    return change, time.monotonic() - t0
    raise AssertionError(f"no such change within {within} s; tasks now {w.tasks}")


def started(cid: str) -> Callable[[Change], bool]:
    return lambda c: isinstance(c, Seen) and c.container.id == cid and c.container.pid > 0


def netns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def test_a_pod_seen_from_the_state_directory(ctrd: Containerd, watcher: StateWatcher, pod_netns: Netns) -> None:
    pod = ("shop", "web-0")
    assert watcher.scan() == [Relisted("containerd", frozenset())]
    try:
        ctrd.run_task("sb-web0", ["sleep", "1000"], ns=NS, netns=pod_netns.path, annotations=cri(pod, "sb-web0"))
        change, _ = until(watcher, started("sb-web0"))
        assert isinstance(change, Seen)
        sandbox = change.container
        assert sandbox.pod == Pod("shop", "web-0") and sandbox.sandbox and not sandbox.host_network
        assert sandbox.namespace == NS and sandbox.pid == ctrd.task_pid("sb-web0", NS)
        assert netns_inode(sandbox.pid) == pod_netns.inode

        t0 = time.monotonic()  # a sidecar, started later, in the pod's netns (the CRI: /proc/<pause>/ns/net)
        ctrd.run_task("app-web0", ["sleep", "1000"], ns=NS, netns=f"/proc/{sandbox.pid}/ns/net",
                      annotations=cri(pod, "sb-web0", "app"))
        change, _ = until(watcher, started("app-web0"))
        sidecar_s = time.monotonic() - t0
        assert isinstance(change, Seen)
        app = change.container
        assert app == Container(runtime="containerd", id="app-web0", name="app", namespace=NS, pid=app.pid,
                                pod=Pod("shop", "web-0"), container_name="app")
        assert app.pid == ctrd.task_pid("app-web0", NS) and netns_inode(app.pid) == pod_netns.inode

        ctrd.run_task("host-agent", ["sleep", "1000"], ns=NS, net_host=True)
        change, _ = until(watcher, started("host-agent"))
        assert isinstance(change, Seen) and change.container.host_network and change.container.pod is None
        assert netns_inode(change.container.pid) == os.stat("/proc/self/ns/net").st_ino

        t0 = time.monotonic()
        ctrd.ctr("task", "kill", "-s", "SIGKILL", "app-web0", ns=NS)
        until(watcher, Gone("containerd", "app-web0").__eq__)
        exit_s = time.monotonic() - t0
        assert watcher.tasks[(NS, "app-web0")].pid == 0
        ctrd.kill_task("app-web0", NS)
        ctrd.ctr("task", "delete", "app-web0", ns=NS)
        until(watcher, Gone("containerd", "app-web0", removed=True).__eq__)
        assert (NS, "app-web0") not in watcher.tasks

        again = watcher.scan()  # what a restarted agent finds: the two running tasks
        assert again[0] == Relisted("containerd", frozenset({"sb-web0", "host-agent"}))
        say(f"containerd watcher: sidecar seen {sidecar_s:.3f} s after `ctr run` began, "
            f"exit seen {exit_s:.3f} s after `ctr task kill` began")
        assert sidecar_s < scaled(1.0) and exit_s < scaled(1.0), (sidecar_s, exit_s)
    finally:
        for cid in ("app-web0", "host-agent", "sb-web0"):
            ctrd.remove_task(cid, NS)
    removed: set[str] = set()

    def both_removed(c: Change) -> bool:
        if isinstance(c, Gone) and c.removed:
            removed.add(c.id)
        return len(removed) == 2

    until(watcher, both_removed)
    assert removed == {"sb-web0", "host-agent"} and not watcher.tasks and not watcher._pidfds


# ---- ttcp itself: `pod shop/web-0` through the API ------------------------------------------------

SIDECAR = """\
import socket, threading, time
srv = socket.create_server(("127.0.0.1", 8080))
def serve():
    while True:
        c, _ = srv.accept(); c.recv(100); c.sendall(b"pong" * 100); c.close()
threading.Thread(target=serve, daemon=True).start()
for _ in range(3):
    k = socket.create_connection(("127.0.0.1", 8080)); k.sendall(b"ping"); k.recv(1000); k.close()
time.sleep(1000)
"""


def workload(t: TtcpProcess, text: str) -> dict[str, object]:
    status, body = t.api("GET", "/filters")
    assert status == 200, body
    found: dict[str, object] = next(e["workload"] for e in json.loads(body)["filters"] if e["filter"] == text)
    return found


def events_until(t: TtcpProcess, done: Callable[[list[dict[str, object]]], bool],
                 limit_s: float = 10.0) -> list[dict[str, object]]:
    """Event lines until `done` accepts them, then every line until quiet."""
    out: list[dict[str, object]] = []
    deadline = time.monotonic() + limit_s
    while not done(out) and time.monotonic() < deadline:
        try:
            out.append(json.loads(t.next_line(timeout=max(deadline - time.monotonic(), 0.05))))
        except Exception:  # noqa: BLE001 - queue.Empty: the deadline decides
            break
    return out + [json.loads(line) for line in t.lines_until_quiet()]


def exchange() -> list[Conn]:
    with Server("127.0.0.1") as srv:
        return connect_many(srv, "127.0.0.1", 2)


@pytest.mark.kernel
def test_pod_by_name_selects_exactly_its_connections(ctrd: Containerd, pod_netns: Netns) -> None:
    text = "pod shop/web-0"
    pod = ("shop", "web-0")
    other = Netns()
    try:
        with TtcpProcess("--format", "json", "--containerd-state", str(ctrd.state_dir)) as t:
            status, body = t.api("PUT", "/", text.encode())
            assert status in (200, 201, 204), body
            assert workload(t, text)["state"] == "pending"

            t0 = time.monotonic()  # the sandbox starts after the filter: followed within 1 s
            ctrd.run_task("sb-web0", ["sleep", "1000"], ns=NS, netns=pod_netns.path, annotations=cri(pod, "sb-web0"))
            ran = time.monotonic()
            while (state := workload(t, text))["state"] != "resolved":
                assert time.monotonic() - ran < 1.0, f"{text} not resolved within 1 s of `ctr run`: {state}"
                time.sleep(0.01)
            resolved_s = time.monotonic() - t0
            assert state.get("resolved_to") == {"netns": pod_netns.inode}, state

            ours = run_in(exchange, netns=pod_netns.path)  # the pod's namespace, from outside any container
            run_in(exchange, netns=other.path)  # the same addresses and ports in another namespace
            got = events_until(t, lambda out: len(out) >= 4)
            assert len(got) == 4 and {(e["netns"], e["filter"]) for e in got} == {(pod_netns.inode, text)}, got
            assert {c.sport for c in ours} <= {e["sport"] for e in got} | {e["dport"] for e in got}
            assert {(e.get("pod"), e.get("pod_namespace")) for e in got} == {("web-0", "shop")}, got

            sandbox_pid = ctrd.task_pid("sb-web0", NS)
            t0 = time.monotonic()  # a sidecar started later, talking to itself in the pod's namespace
            ctrd.run_task("app-web0", ["python3", "-c", SIDECAR], ns=NS, netns=f"/proc/{sandbox_pid}/ns/net",
                          annotations=cri(pod, "sb-web0", "app"))
            got = events_until(t, lambda out: any(e.get("container") == "app" for e in out))
            sidecar_s = time.monotonic() - t0
            assert got and all(e["netns"] == pod_netns.inode and e["filter"] == text for e in got), got
            assert all((e.get("pod"), e.get("pod_namespace")) == ("web-0", "shop") for e in got), got
            assert [e.get("container_id") for e in got if e.get("container")] == ["app-web0"] * len(got), got
            assert len(got) == 6, got  # three connections, both ends

            status, _ = t.api("DELETE", "/", text.encode())
            assert status in (200, 204)
            run_in(exchange, netns=pod_netns.path)
            assert t.lines_until_quiet() == []
            assert t.stop() == 0
        say(f"containerd end to end: {text} resolved {resolved_s:.3f} s after `ctr run` began; the "
            f"sidecar's first event {sidecar_s:.3f} s after its `ctr run` began")
        assert sidecar_s < scaled(1.0), sidecar_s  # ctr run, python3's start and its exchanges included
    finally:
        for cid in ("app-web0", "sb-web0"):
            ctrd.remove_task(cid, NS)
        other.delete()
