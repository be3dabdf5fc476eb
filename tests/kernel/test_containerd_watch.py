"""The containerd state-directory watcher against the real kernel: inotify on a directory laid
out as the runc v2 shim lays it out (the same files, the `.init.pid` rename, the `.<id>`
rename on delete), with real child processes as the tasks' inits and real pidfds.
tests/system/test_containerd.py runs the same watcher against a real containerd."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ttcp.cli import CONTAINERD_STATE
from ttcp.workloads.containerd import DEFAULT_TASK_DIR, TASK_DIR
from ttcp.workloads.containerd_watch import StateWatcher, follow, started_after, task_dir
from ttcp.workloads.runtime import Change, Container, Gone, Pod, Relisted, Seen

POD = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-name": "web-0",
       "io.kubernetes.cri.sandbox-namespace": "shop", "io.kubernetes.cri.container-name": "app"}


def spec(annotations: dict[str, str] | None = None) -> bytes:
    return json.dumps({"ociVersion": "1.0.2", "annotations": annotations or {},
                       "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}]}}
                      ).encode()


class FakeShim:
    """What containerd-shim-runc-v2 does in the state directory, with `sleep` as each task's init."""

    def __init__(self, state: Path) -> None:
        self.root = state / TASK_DIR
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def create(self, ns: str, ident: str, config: bytes) -> None:
        d = self.root / ns / ident
        d.mkdir(parents=True)
        (d / "config.json").write_bytes(config)  # before any watch on d can exist
        (d / ".address").write_text("unix:///run/containerd/s/x")
        os.rename(d / ".address", d / "address")

    def start(self, ns: str, ident: str) -> int:
        p = subprocess.Popen(["sleep", "60"])
        self.procs[ident] = p
        d = self.root / ns / ident
        (d / ".init.pid").write_text(str(p.pid))
        os.rename(d / ".init.pid", d / "init.pid")
        return p.pid

    def kill(self, ident: str) -> None:
        p = self.procs.pop(ident)
        p.kill()
        p.wait()

    def delete(self, ns: str, ident: str) -> None:
        d = self.root / ns / ident
        hidden = d.with_name("." + ident)
        os.rename(d, hidden)
        shutil.rmtree(hidden)

    def close(self) -> None:
        for ident in list(self.procs):
            self.kill(ident)


def wait(w: StateWatcher, within: float = 1.0) -> list[Change]:
    """The changes of the first readable moment within `within` s ([] if none came)."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        if select.select([w.fileno()], [], [], left)[0]:
            changes = w.process()
            if changes:
                return changes
    return []


def seen(changes: list[Change]) -> list[Container]:
    return [c.container for c in changes if isinstance(c, Seen)]


@pytest.fixture
def shim(tmp_path: Path) -> Iterator[FakeShim]:
    s = FakeShim(tmp_path)
    yield s
    s.close()


@pytest.fixture
def logged() -> list[str]:
    return []


@pytest.fixture
def watcher(tmp_path: Path, logged: list[str]) -> Iterator[StateWatcher]:
    w = StateWatcher(tmp_path / TASK_DIR, logged.append)
    yield w
    w.close()


def test_a_tasks_life_from_a_state_directory_that_does_not_exist_yet(
        shim: FakeShim, watcher: StateWatcher, logged: list[str]) -> None:
    assert watcher.scan() == [Relisted("containerd", frozenset())]
    shim.create("k8s.io", "app1", spec(POD))
    [created] = seen(wait(watcher))
    assert created.pod == Pod("shop", "web-0") and created.name == "app" and created.pid == 0
    t0 = time.monotonic()
    pid = shim.start("k8s.io", "app1")
    [started] = seen(wait(watcher))
    took_start = time.monotonic() - t0
    assert started.pid == pid and started.id == "app1" and started.namespace == "k8s.io"
    t0 = time.monotonic()
    shim.kill("app1")  # exits; the bundle stays, as with ctr
    assert wait(watcher) == [Gone("containerd", "app1")]
    took_exit = time.monotonic() - t0
    assert watcher.tasks[("k8s.io", "app1")].pid == 0
    shim.delete("k8s.io", "app1")
    assert wait(watcher) == [Gone("containerd", "app1", removed=True)]
    assert not watcher.tasks
    shim.create("moby", "d0cker", spec())  # Docker's namespace: skipped
    shim.create("k8s.io", "bad", b"{not json")
    shim.create("k8s.io", "app2", spec(POD))
    changes = wait(watcher)
    changes += wait(watcher, 0.3)
    assert [c.id for c in seen(changes)] == ["app2"] and len(changes) == 1
    assert len(logged) == 1 and "k8s.io/bad" in logged[0]  # read at mkdir and at its config.json: logged once
    assert took_start < 0.2 and took_exit < 0.2, (took_start, took_exit)


def test_a_task_started_again_in_a_new_bundle_is_a_new_process(shim: FakeShim, watcher: StateWatcher) -> None:
    watcher.scan()
    shim.create("default", "c", spec())
    shim.start("default", "c")
    changes = wait(watcher)
    changes += wait(watcher, 0.2)
    assert seen(changes)[-1].pid > 0
    shim.kill("c")
    assert wait(watcher) == [Gone("containerd", "c")]
    shim.delete("default", "c")
    shim.create("default", "c", spec())
    pid = shim.start("default", "c")
    changes = wait(watcher)
    changes += wait(watcher, 0.2)
    assert seen(changes)[-1].pid == pid
    shim.kill("c")
    assert wait(watcher) == [Gone("containerd", "c")]  # the new pid is followed, not the old one's pidfd


def test_tasks_there_before_are_found_and_deletions_leave_nothing(shim: FakeShim, watcher: StateWatcher) -> None:
    for i in range(50):
        shim.create("k8s.io", f"c{i}", spec())
    pid = shim.start("k8s.io", "c0")
    changes = watcher.scan()
    assert changes[0] == Relisted("containerd", frozenset(f"c{i}" for i in range(50)))
    assert {c.id: c.pid for c in seen(changes)}["c0"] == pid and len(seen(changes)) == 50
    for i in range(50):
        shim.delete("k8s.io", f"c{i}")
    gone: set[str] = set()
    while len(gone) < 50 and (changes := wait(watcher)):
        gone |= {c.id for c in changes if isinstance(c, Gone) and c.removed}
    assert len(gone) == 50 and not watcher.tasks
    assert not watcher._pidfds and not watcher._pidfd_of and not watcher._owner


def test_an_exited_init_is_not_trusted_again(shim: FakeShim, watcher: StateWatcher) -> None:
    """A rescan (after an overflow) reads init.pid again: a pid that exited stays exited, even
    if the kernel gave the number to another process meanwhile."""
    shim.create("k8s.io", "x", spec())
    shim.start("k8s.io", "x")
    assert seen(watcher.scan())[0].pid > 0
    shim.kill("x")
    assert wait(watcher) == [Gone("containerd", "x")]
    assert seen(watcher.scan())[0].pid == 0
    shim.create("k8s.io", "y", spec())
    (shim.root / "k8s.io" / "y" / "init.pid").write_text(str(os.getpid()))  # alive: y's pid is followed
    changes = wait(watcher)
    assert seen(changes)[-1].pid == os.getpid()


def test_the_task_directory_removed_and_made_again(tmp_path: Path, shim: FakeShim, watcher: StateWatcher) -> None:
    shim.create("k8s.io", "a", spec())
    watcher.scan()
    shutil.rmtree(shim.root)
    changes = wait(watcher)
    assert changes == [Relisted("containerd", frozenset())]
    shim.create("k8s.io", "b", spec())
    changes = wait(watcher)
    changes += wait(watcher, 0.2)
    assert "b" in {c.id for c in seen(changes)} and set(watcher.tasks) == {("k8s.io", "b")}


def test_an_id_in_two_namespaces_is_named_once(shim: FakeShim, watcher: StateWatcher, logged: list[str]) -> None:
    shim.create("default", "same", spec())
    shim.create("k8s.io", "same", spec(POD))
    changes = watcher.scan()
    assert [c.namespace for c in seen(changes)] == ["default"] and len(logged) == 1


def test_an_exit_and_a_deletion_read_together(shim: FakeShim, watcher: StateWatcher) -> None:
    """Both descriptors ready at once (what the CRI does: delete at exit): the exit comes first,
    and the pidfd the deletion closes is not read again."""
    for ident in ("a", "b"):
        shim.create("k8s.io", ident, spec())
        shim.start("k8s.io", ident)
    watcher.scan()
    for ident in ("a", "b"):
        shim.kill(ident)
        shim.delete("k8s.io", ident)
    time.sleep(0.1)
    changes = watcher.process()
    assert changes == [Gone("containerd", "a"), Gone("containerd", "b"),
                       Gone("containerd", "a", removed=True), Gone("containerd", "b", removed=True)]
    assert not watcher.tasks and not watcher._pidfds and not watcher.process()


def test_the_task_directory_itself_can_be_named(tmp_path: Path, shim: FakeShim) -> None:
    shim.create("k8s.io", "a", spec())
    w = StateWatcher(shim.root, print)
    try:
        assert [c.id for c in seen(w.scan())] == ["a"]
    finally:
        w.close()


def test_one_meaning_of_the_state_path(tmp_path: Path, shim: FakeShim) -> None:
    """The task directory, under any name; containerd's state directory holding one; a path not
    there yet by its name only."""
    shim.create("k8s.io", "a", spec())
    elsewhere = tmp_path / "tasks"  # a DaemonSet mounting the task directory as /host/tasks
    os.rename(shim.root, elsewhere)
    assert task_dir(elsewhere) == elsewhere and task_dir(tmp_path) == tmp_path  # tmp_path has no task dir now
    w = StateWatcher(elsewhere, print)
    try:
        assert [c.id for c in seen(w.scan())] == ["a"]
    finally:
        w.close()
    os.rename(elsewhere, shim.root)
    assert task_dir(tmp_path) == shim.root and task_dir(shim.root) == shim.root
    assert task_dir(tmp_path / "later") == tmp_path / "later" / TASK_DIR
    assert task_dir(tmp_path / "x" / TASK_DIR) == tmp_path / "x" / TASK_DIR
    assert CONTAINERD_STATE == DEFAULT_TASK_DIR and task_dir(Path(CONTAINERD_STATE)) == Path(CONTAINERD_STATE)


def test_a_missing_directory_costs_one_line_and_is_not_followed_until_it_comes(tmp_path: Path) -> None:
    log: list[str] = []
    got: list[Change] = []
    health: dict[str, object] = {}
    typo = tmp_path / "run" / "containred"
    shim = FakeShim(typo)

    async def scenario() -> None:
        task = asyncio.create_task(follow(typo, got.extend, log.append, health))
        await asyncio.sleep(0.2)
        assert health == {"followed": False, "problem": f"{shim.root}: no such directory, waiting for it"}
        assert len(log) == 1 and "does not exist" in log[0] and str(shim.root) in log[0]
        shim.create("k8s.io", "a", spec())  # the directory comes (containerd started): followed
        for _ in range(100):
            if health["followed"]:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert health == {"followed": True, "problem": None} and len(log) == 1
    assert [c.id for c in seen(got)] == ["a"]


def test_follow_runs_the_watcher_in_a_loop_and_leaves_no_descriptor(shim: FakeShim) -> None:
    got: list[Change] = []

    async def scenario() -> None:
        task = asyncio.create_task(follow(shim.root, got.extend, print))
        await asyncio.sleep(0.05)
        shim.create("k8s.io", "a", spec(POD))
        shim.start("k8s.io", "a")
        for _ in range(100):
            if any(isinstance(c, Seen) and c.container.pid for c in got):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    before = len(os.listdir("/proc/self/fd"))
    asyncio.run(scenario())
    assert got[0] == Relisted("containerd", frozenset())
    assert any(isinstance(c, Seen) and c.container.pid and c.container.name == "app" for c in got)
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_pid_given_to_a_newer_process_is_not_the_tasks(shim: FakeShim, watcher: StateWatcher) -> None:
    """init.pid written an hour ago names a process that started just now: the task's init exited
    before ttcp looked and the kernel reused its number; that process is not the task."""
    shim.create("default", "old", spec())
    pid = shim.start("default", "old")
    os.utime(shim.root / "default" / "old" / "init.pid", (time.time() - 3600, time.time() - 3600))
    assert started_after(pid, time.time() - 3600) and not started_after(pid, time.time())
    assert not started_after(os.getpid(), time.time()) and not started_after(1 << 30, 0.0)
    [task] = seen(watcher.scan())
    assert task.pid == 0 and not watcher._pidfds


def test_a_failing_watcher_costs_a_line_drops_its_tasks_and_starts_again(shim: FakeShim) -> None:
    """A bug in the first scan, then an I/O error on a later event: each is one line, the
    tasks are reported gone (no stale names or namespaces) and a new watcher takes over."""
    shim.create("k8s.io", "a", spec(POD))
    shim.start("k8s.io", "a")
    made: list[StateWatcher] = []

    class Failing(StateWatcher):
        def __init__(self, state_dir: str | os.PathLike[str], log: Callable[[str], None]) -> None:
            super().__init__(state_dir, log)
            made.append(self)

        def scan(self) -> list[Change]:
            if len(made) == 1:
                raise AssertionError("a bug")
            return super().scan()

        def process(self) -> list[Change]:
            if len(made) == 2:
                raise OSError(errno.EIO, "Input/output error")
            return super().process()

    got: list[Change] = []
    log: list[str] = []
    health: dict[str, object] = {}

    async def until(cond: Callable[[], bool]) -> None:
        for _ in range(500):
            if cond():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"not within 5 s: {got} {log}")

    async def scenario() -> None:
        task = asyncio.create_task(follow(shim.root.parent, got.extend, log.append, health, Failing))
        await until(lambda: len(made) == 2 and health["followed"] is True)
        assert [c.id for c in seen(got)] == ["a"]
        shim.create("k8s.io", "b", spec())  # an event: the second watcher's process() fails
        await until(lambda: len(made) == 3 and health["followed"] is True)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    before = len(os.listdir("/proc/self/fd"))
    asyncio.run(scenario())
    assert len(log) == 2 and "unexpected AssertionError: a bug" in log[0] and "Input/output error" in log[1], log
    empty = Relisted("containerd", frozenset())
    first_seen = next(i for i, c in enumerate(got) if isinstance(c, Seen))
    assert got[0] == empty and empty in got[first_seen:]  # the failure after a scan drops its tasks
    last_empty = len(got) - 1 - got[::-1].index(empty)
    assert Relisted("containerd", frozenset({"a", "b"})) in got[last_empty:]  # the new watcher's scan
    assert len(os.listdir("/proc/self/fd")) == before
