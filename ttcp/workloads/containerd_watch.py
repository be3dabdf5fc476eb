"""containerd's tasks followed through its state directory: inotify for bundles, a pidfd for exits.

The runc v2 shim's layout (measured on containerd 1.6, the same in 1.7 and 2.x),
under `<state>/io.containerd.runtime.v2.task/<namespace>/<id>/`: the bundle
directory appears when the task is created, with config.json already written
(before a watch on the new directory can exist: it is read after the watch is
added); `.init.pid` is renamed to `init.pid` once runc made the process; on
`task delete` the directory is renamed to `.<id>` and removed. An exit changes
nothing there (ctr leaves the task; the CRI deletes it at once), so a pidfd on
the task's pid tells it (about 50 ms, measured). Everything is fd-driven, as
ttcp.workloads.watch is: one epoll descriptor holds the inotify descriptor and
the pidfds, the agent adds it to its loop and calls `process()` when it is
readable. No gRPC: containerd's event stream is HTTP/2 + protobuf, and the
state directory gives the same facts through a truly read-only mount.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import random
import select
import time
from collections.abc import Callable
from pathlib import Path

from ttcp import syscalls
from ttcp.kernel.uapi import Inotify
from ttcp.workloads.containerd import (
    MAX_CONFIG,
    MAX_INIT_PID,
    SKIPPED_NAMESPACES,
    TASK_DIR,
    BundleError,
    parse_bundle,
    valid_identifier,
)
from ttcp.workloads.runtime import Change, Container, Gone, Relisted, Seen

Log = Callable[[str], None]
Emit = Callable[[list[Change]], None]
MAX_TASKS = 16384  # a node runs a few hundred; a bound on memory, pidfds and watches
MAX_LOGGED = 1024  # bad bundles remembered so each is logged once
DIR_MASK = (Inotify.CREATE | Inotify.DELETE | Inotify.MOVED_TO | Inotify.MOVED_FROM | Inotify.DELETE_SELF
            | Inotify.MOVE_SELF | Inotify.ONLYDIR)
BUNDLE_MASK = Inotify.MOVED_TO | Inotify.CLOSE_WRITE | Inotify.ONLYDIR
ANCESTOR_MASK = Inotify.CREATE | Inotify.MOVED_TO | Inotify.ONLYDIR
Key = tuple[str, str]  # (containerd namespace, id)


def task_dir(given: Path) -> Path:
    """What --containerd-state names: the runc v2 shim's task directory (DEFAULT_TASK_DIR,
    what a DaemonSet mounts, possibly under another name), or containerd's state directory
    that holds it. Unambiguous: a directory named TASK_DIR, or holding one, or any other
    existing directory (a task directory mounted elsewhere). Only a path that does not exist
    yet is guessed at by its name: containerd's state directory unless named TASK_DIR."""
    if given.name == TASK_DIR or (given.is_dir() and not (given / TASK_DIR).is_dir()):
        return given
    return given / TASK_DIR


class StateWatcher:
    """The tasks under containerd's task directory (`task_dir(state_dir)`) as changes.

    `scan()` arms the watches and reports every task (and `Relisted`); `process()`,
    once `fileno()` is readable, reports what changed since. A state directory that
    does not exist yet is waited for (its nearest existing ancestor is watched); a
    lost inotify event (queue overflow) is a rescan.
    """

    def __init__(self, state_dir: str | os.PathLike[str], log: Log,
                 skip_namespaces: frozenset[str] = SKIPPED_NAMESPACES) -> None:
        self.root = task_dir(Path(state_dir))
        self.log = log
        self.skip = skip_namespaces  # Docker's tasks (moby): its API names them
        self.inotify = syscalls.inotify_init()
        self.epoll = select.epoll()
        self.epoll.register(self.inotify, select.EPOLLIN)
        self._dirs: dict[int, Path] = {}  # watch descriptor -> directory
        self._tasks: dict[Key, Container] = {}
        self._pidfds: dict[int, Key] = {}  # pidfd -> the task whose init it is
        self._pidfd_of: dict[Key, tuple[int, int]] = {}  # task -> (pidfd, pid)
        self._ancestors: set[int] = set()  # watches above a task directory that is not there yet
        self._exited: dict[Key, int] = {}  # the pid that exited: init.pid still names it
        self._owner: dict[str, str] = {}  # id -> namespace (Change keys are (runtime, id))
        self._logged: set[Key] = set()

    def fileno(self) -> int:
        return self.epoll.fileno()

    @property
    def tasks(self) -> dict[Key, Container]:
        return dict(self._tasks)

    # ---- the changes -------------------------------------------------------------------

    def scan(self) -> list[Change]:
        """Watch the directory tree and read every bundle: `Relisted`, then a `Seen` for each task."""
        present: dict[Key, Container] = {}
        for key in self._arm():
            task = self._read(*key)
            if task is not None:
                present[key] = task
        for key in set(self._tasks) - set(present):
            self._drop(key)
        changes: list[Change] = [Relisted("containerd", frozenset(c.id for c in present.values()))]
        for key, task in present.items():
            self._tasks[key] = task
            changes.append(Seen(task))
        return changes

    def process(self) -> list[Change]:
        """Follow what happened since (call when `fileno()` is readable; [] when nothing did)."""
        ready = {fd for fd, _ in self.epoll.poll(0)}
        changes: list[Change] = []
        for fd in sorted(ready & set(self._pidfds)):  # exits first: the inotify part may close pidfds
            changes += self._exit(fd)
        if self.inotify in ready:
            changes += self._inotify()
        return changes

    def close(self) -> None:
        for fd in list(self._pidfds):
            self._unfollow(fd)
        if self.inotify >= 0:
            os.close(self.inotify)
            self.inotify = -1
        self.epoll.close()

    # ---- inotify -----------------------------------------------------------------------

    def _inotify(self) -> list[Change]:
        touched: dict[Key, None] = {}
        gone: dict[Key, None] = {}
        rescan = False
        for wd, mask, name in syscalls.inotify_read(self.inotify):
            if mask & Inotify.Q_OVERFLOW:
                rescan = True
                continue
            where = self._dirs.get(wd)
            if mask & Inotify.IGNORED:
                self._dirs.pop(wd, None)
            if where is None:
                continue
            if where != self.root and self.root not in where.parents:  # an ancestor: the directory may be here
                rescan = rescan or bool(mask & (Inotify.CREATE | Inotify.MOVED_TO))
                continue
            depth = len(where.relative_to(self.root).parts)
            if depth == 0 and mask & (Inotify.DELETE_SELF | Inotify.MOVE_SELF | Inotify.IGNORED):
                rescan = True  # the task directory itself went
            elif depth == 0 and mask & Inotify.ISDIR and mask & (Inotify.CREATE | Inotify.MOVED_TO):
                touched.update(dict.fromkeys(self._namespace(name)))  # its bundles made before its watch
            elif depth == 1 and name and not name.startswith("."):
                key = (where.name, name)
                if mask & (Inotify.CREATE | Inotify.MOVED_TO):
                    gone.pop(key, None)
                    touched[key] = None
                elif mask & (Inotify.DELETE | Inotify.MOVED_FROM):
                    touched.pop(key, None)
                    gone[key] = None
            elif depth == 1 and mask & (Inotify.DELETE_SELF | Inotify.MOVE_SELF):
                rescan = True  # a whole namespace went
            elif depth == 2 and name in ("init.pid", "config.json"):
                touched[(where.parent.name, where.name)] = None
        if rescan:
            return self.scan()
        changes: list[Change] = []
        for key in gone:
            if self._drop(key):
                changes.append(Gone("containerd", key[1], removed=True))
        for key in touched:
            changes += self._update(key)
        return changes

    def _update(self, key: Key) -> list[Change]:
        """A bundle was made or its files changed: watch it, read it, report it if it differs."""
        ns, ident = key
        if ns in self.skip or not valid_identifier(ns) or not valid_identifier(ident):
            return []
        self._watch(self.root / ns / ident, BUNDLE_MASK)
        task = self._read(ns, ident)
        if task is None or self._tasks.get(key) == task:
            return []
        was = self._tasks.get(key)
        self._tasks[key] = task
        changes: list[Change] = []
        if was is not None and was.pid and was.pid != task.pid:
            changes.append(Gone("containerd", ident))  # a new process: the old one's netns goes first
        changes.append(Seen(task))
        return changes

    # ---- exits ---------------------------------------------------------------------------

    def _exit(self, fd: int) -> list[Change]:
        key = self._unfollow(fd)
        task = self._tasks.get(key) if key is not None else None
        if key is None or task is None or not task.pid:
            return []
        self._exited[key] = task.pid
        self._tasks[key] = _stopped(task)
        return [Gone("containerd", key[1])]

    def _follow(self, key: Key, pid: int, written: float) -> bool:
        """A pidfd on the task's init, readable when it exits; False if it is gone already, or
        if the pid now names a process that started after init.pid was `written` (the init
        exited before ttcp looked, and the kernel gave its number to another process)."""
        held = self._pidfd_of.get(key)
        if held is not None and held[1] == pid:
            return True
        if held is not None:  # a new process in the same bundle (`task start` again)
            self._unfollow(held[0])
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        except OSError as e:  # EMFILE; ENOSYS before Linux 5.3: the exit shows at the task's deletion
            self._log_once(key, f"containerd {key[0]}/{key[1]}: no pidfd ({errno.errorcode.get(e.errno or 0, e)}); "
                                "its exit is seen when the task is deleted")
            return True
        if started_after(pid, written):  # checked with the pidfd open: the pid cannot move meanwhile
            os.close(fd)
            return False
        self._pidfds[fd] = key
        self._pidfd_of[key] = (fd, pid)
        self.epoll.register(fd, select.EPOLLIN)
        return True

    def _unfollow(self, fd: int) -> Key | None:
        key = self._pidfds.pop(fd, None)
        if key is not None:
            del self._pidfd_of[key]
        with contextlib.suppress(OSError):
            self.epoll.unregister(fd)
        os.close(fd)
        return key

    # ---- the tree ------------------------------------------------------------------------

    def _arm(self) -> list[Key]:
        """Watch the task directory, each namespace and each bundle, each before listing it."""
        if not self._watch(self.root, DIR_MASK):
            above = self.root.parent
            while not self._watch(above, ANCESTOR_MASK, ancestor=True) and above != above.parent:
                above = above.parent
            return []
        for wd in self._ancestors:  # the directory is here: what is above it no longer matters
            self._dirs.pop(wd, None)
            syscalls.inotify_rm_watch(self.inotify, wd)
        self._ancestors.clear()
        return [key for ns in _subdirs(self.root) for key in self._namespace(ns)
                if self._watch(self.root / key[0] / key[1], BUNDLE_MASK)]

    def _namespace(self, ns: str) -> list[Key]:
        """Watch a namespace's directory, then list its bundles."""
        if ns in self.skip or not valid_identifier(ns) or not self._watch(self.root / ns, DIR_MASK):
            return []
        return [(ns, ident) for ident in _subdirs(self.root / ns) if valid_identifier(ident)]

    def _watch(self, path: Path, mask: Inotify, *, ancestor: bool = False) -> bool:
        try:
            wd = syscalls.inotify_add_watch(self.inotify, path, mask)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR):  # ENOSPC: fs.inotify.max_user_watches
                self._log_once(("watch", str(path)), f"containerd: cannot watch {path}: {e.strerror}")
            return False
        self._dirs[wd] = path
        if ancestor:
            self._ancestors.add(wd)
        return True

    def _read(self, ns: str, ident: str) -> Container | None:
        """The task as its bundle says now (None: gone, half-written, refused or one too many)."""
        key = (ns, ident)
        bundle = self.root / ns / ident
        try:
            with open(bundle / "config.json", "rb") as f:
                config = f.read(MAX_CONFIG + 1)
            try:
                with open(bundle / "init.pid", "rb") as f:
                    init_pid: bytes | None = f.read(MAX_INIT_PID)
                    written = os.fstat(f.fileno()).st_mtime
            except FileNotFoundError:
                init_pid, written = None, 0.0
            task = parse_bundle(ns, ident, config, init_pid)
        except FileNotFoundError:
            return None  # deleted meanwhile, or config.json not there yet: its own event comes
        except BundleError as e:
            self._log_once(key, f"{e}; its events carry ids only")
            return None
        except OSError as e:
            self._log_once(key, f"containerd {ns}/{ident}: {e.strerror}; its events carry ids only")
            return None
        owner = self._owner.get(ident, ns)
        if owner != ns:
            self._log_once(key, f"containerd {ns}/{ident}: the id is {owner}'s too; only {owner}'s is named")
            return None
        if key not in self._tasks and len(self._tasks) >= MAX_TASKS:
            self._log_once(key, f"containerd: more than {MAX_TASKS} tasks; {ns}/{ident} is not named")
            return None
        self._owner[ident] = ns
        if task.pid and (self._exited.get(key) == task.pid or not self._follow(key, task.pid, written)):
            return _stopped(task)  # init.pid names a process that exited (and whose pid may be reused)
        return task

    def _drop(self, key: Key) -> bool:
        """Forget a deleted task; True if it was known."""
        held = self._pidfd_of.get(key)
        if held is not None:
            self._unfollow(held[0])
        self._exited.pop(key, None)
        self._logged.discard(key)
        if self._owner.get(key[1]) == key[0]:
            del self._owner[key[1]]
        return self._tasks.pop(key, None) is not None

    def _log_once(self, key: Key, text: str) -> None:
        if key not in self._logged and len(self._logged) < MAX_LOGGED:
            self._logged.add(key)
            self.log(text)


def started_after(pid: int, written: float, slack: float = 1.0) -> bool:
    """Process `pid` started more than `slack` s after the wall-clock time `written`
    (runc starts a task's init before the shim writes init.pid). False when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read(4096)
        ticks = int(stat[stat.rindex(b")") + 2:].split()[19])  # field 22, starttime: since boot
    except (OSError, ValueError, IndexError):
        return False
    boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return boot + ticks / os.sysconf("SC_CLK_TCK") > written + slack


def _stopped(task: Container) -> Container:
    return dataclasses.replace(task, pid=0)


def _subdirs(path: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False)
                      and not e.name.startswith("."))
    except OSError:
        return []


RETRY_FIRST, RETRY_CAP = 0.5, 30.0  # s between attempts after a failure (doubling)
HEALTHY_AFTER = 30.0  # s a watcher must have run for its end to start a new episode


async def follow(state_dir: str | os.PathLike[str], emit: Emit, log: Log,
                 health: dict[str, object] | None = None,
                 make: Callable[[str | os.PathLike[str], Log], StateWatcher] = StateWatcher) -> None:
    """Report containerd's tasks to `emit` until cancelled: what the agent runs as a task.

    The watcher is fd-driven (the loop calls `process()` when it is readable), so
    this sets it up, waits, and takes it down. A watcher that cannot start (no
    inotify instance left) or fails later costs one line per change of reason;
    its tasks are then reported gone (`Relisted` with none: no stale names, no
    filter left on an old namespace) and it starts again with backoff. `health`
    (what GET /healthz shows) says whether it is followed, and why not.
    """
    health = {} if health is None else health
    health.update(followed=False, problem=None)
    delay, last = 0.0, ""
    while True:
        started = time.monotonic()
        reason = await _watch(state_dir, emit, log, health, make)
        health.update(followed=False, problem=reason)
        emit([Relisted("containerd", frozenset())])  # nothing known of its tasks any more
        if time.monotonic() - started > HEALTHY_AFTER:
            delay, last = 0.0, ""
        if reason != last:
            log(f"containerd {state_dir}: {reason}; names from containerd paused, retrying")
            last = reason
        delay = min(RETRY_CAP, delay * 2 or RETRY_FIRST)
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))


def _reason(e: Exception) -> str:
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return f"unexpected {e.__class__.__name__}: {str(e)[:160]}"


async def _watch(state_dir: str | os.PathLike[str], emit: Emit, log: Log, health: dict[str, object],
                 make: Callable[[str | os.PathLike[str], Log], StateWatcher]) -> str:
    """One watcher's life: why it ended."""
    loop = asyncio.get_running_loop()
    try:
        watcher = make(state_dir, log)
    except OSError as e:
        return f"cannot watch ({_reason(e)})"
    failed: asyncio.Future[str] = loop.create_future()

    def readable() -> None:
        try:
            emit(watcher.process())
            present()
        except Exception as e:  # noqa: BLE001 -- an I/O error or a bug: one line, a new watcher
            loop.remove_reader(watcher.fileno())
            if not failed.done():
                failed.set_result(_reason(e))

    missing = [False]

    def present() -> None:
        """Followed while the task directory is there; a missing one costs a line, once."""
        if watcher.root.is_dir():
            missing[0] = False
            health.update(followed=True, problem=None)
        elif not missing[0]:
            missing[0] = True
            health.update(followed=False, problem=f"{watcher.root}: no such directory, waiting for it")
            log(f"containerd {state_dir}: {watcher.root} does not exist (a mistyped --containerd-state, "
                "or containerd not started yet); waiting for it, no names from containerd meanwhile")

    try:
        try:
            emit(watcher.scan())
        except Exception as e:  # noqa: BLE001 -- as in readable()
            return _reason(e)
        present()
        loop.add_reader(watcher.fileno(), readable)
        return await failed
    finally:
        loop.remove_reader(watcher.fileno())
        watcher.close()
