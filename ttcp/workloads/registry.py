"""The containers running now, by (runtime, id), and what each name selects (pure).

The runtime sources (ttcp.workloads.docker_watch, containerd_watch) report
changes (ttcp.workloads.runtime); the resolver reads each running container's
Placement from /proc (ttcp.workloads.placement) and hands both here. The
registry answers two questions:

- `resolve(workload)`: what `container NAME|ID` or `pod NAMESPACE/NAME` selects in
  the kernel now (table_rules.Resolution): the container's own network
  namespace; its cgroup when it is on the host's network or shares its namespace
  with other containers (the namespace cannot tell them apart; the cgroup can);
  pending, with a note saying why, when nothing runs under the name.
- `names(netns, cgroup_id)`: the container and pod an event's socket belongs to
  (by cgroup id first, precise; else by a namespace owned by one container or
  one pod), as a JSON fragment for the event line and a label for `-w`; the
  `by` breakdowns (issue 24) can use the same lookup.

Bounded: at most `limit` containers (more are counted in `dropped`, not kept),
labels are not kept, and the name cache is cleared on every change. Keys are
(runtime, id): a netns inode is reused by the kernel as soon as it is free.
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ttcp.rtt import filters as F
from ttcp.rtt.filters import FilterError, Workload
from ttcp.rtt.table_rules import Resolution
from ttcp.workloads.runtime import Change, Container, Gone, Lost, Pod, Relisted, Seen

MAX_CONTAINERS = 16384  # running containers kept (a node runs a few hundred)
MAX_CACHED_NAMES = 4096  # (netns, cgroup id) -> names, cleared on every change
MAX_RECENT = 1024  # names of ended containers kept by cgroup id, for their last events still in the ring
_HEX = frozenset("0123456789abcdef")

Key = tuple[str, str]  # (runtime, id)
T = TypeVar("T")


@dataclass(frozen=True)
class Placement:
    """Where a running container's sockets are, read from /proc/PID."""

    netns: int  # its network namespace's inode (0: unknown)
    cgroup: str | None  # its cgroup-v2 path (None: not placed in cgroup v2, or no cgroup2 here)
    cgroup_id: int | None  # that cgroup's id
    host_network: bool  # in the host's network namespace
    no_cgroup: str = ""  # why `cgroup` is None although it has one (too deep for the kernel's walk)


@dataclass(frozen=True)
class Found:
    """What a container or pod filter selects now, and what GET /filters says about it."""

    resolution: Resolution
    note: str = ""
    shared_with: tuple[str, ...] = ()
    pid: int = 0  # a process in the namespace it resolves to (the resolver holds that namespace open)


@dataclass(frozen=True)
class Names:
    """The names of one socket's workload (empty strings: unknown)."""

    container: str = ""
    container_id: str = ""
    pod: Pod | None = None

    def fragment(self) -> str:
        """The event's JSON members, each with a leading comma ("" when nothing is known)."""
        out = ""
        if self.container:
            out += f',"container":{json.dumps(self.container)},"container_id":{json.dumps(self.container_id)}'
        if self.pod is not None:
            out += f',"pod":{json.dumps(self.pod.name)},"pod_namespace":{json.dumps(self.pod.namespace)}'
        return out

    def label(self) -> str | None:
        """The table's Workload column: `pod NS/NAME`, else `container NAME` (None: neither)."""
        if self.pod is not None:
            return escaped(f"pod {self.pod}")
        return escaped(f"container {self.container}") if self.container else None


def escaped(text: str) -> str:
    """Printable text for a terminal: control and non-ASCII characters as escapes."""
    return text if text.isascii() and text.isprintable() else text.encode("unicode_escape").decode("ascii")


@dataclass(frozen=True)
class _Entry:
    container: Container
    place: Placement

    @property
    def label(self) -> str:
        c = self.container
        return f"{c.namespace}/{c.name}" if c.namespace else c.name


def valid_pod(pod: Pod | None) -> Pod | None:
    """A pod whose namespace and name follow Kubernetes' rules; None otherwise (labels are
    free text: a Docker label can hold anything)."""
    if pod is None:
        return None
    try:
        F.pod_name(f"{pod.namespace}/{pod.name}")
    except FilterError:
        return None
    return pod


class Registry:
    """The running containers of every runtime, and the lookups on them."""

    def __init__(self, limit: int = MAX_CONTAINERS) -> None:
        self.limit = limit
        self._entries: dict[Key, _Entry] = {}
        self._by_netns: dict[int, dict[Key, None]] = {}  # own namespaces (not the host's)
        self._by_cgroup: dict[int, Key] = {}
        # what a filter's text finds without a scan: full id, name, pod ("NS/NAME")
        self._by_id: dict[str, dict[Key, None]] = {}
        self._by_name: dict[str, dict[Key, None]] = {}
        self._by_pod: dict[Pod, dict[Key, None]] = {}
        self._touched: set[str] = set()  # ids, names and pod texts whose resolution may have changed
        self._lost: set[str] = set()  # runtimes out of sight: their namespaces name nothing (Lost)
        self._names: dict[tuple[int, int], Names | None] = {}
        # Ended containers' names by cgroup id (never reused, unlike a netns inode): the
        # events of their last connections are often read just after the runtime said so.
        self._recent: OrderedDict[int, Names] = OrderedDict()
        self.version = 0  # changes whenever what a lookup answers may
        self.dropped = 0  # containers not kept: the registry was full

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[tuple[Container, Placement]]:
        return [(e.container, e.place) for e in self._entries.values()]

    # ---- changes ----

    def apply(self, change: Change, place: Callable[[Container], Placement | None]) -> bool:
        """One runtime change; `place` reads where a running container is (None: its
        process is gone already). False when the registry is full (the container is
        not kept; its sockets then go out with ids only)."""
        if isinstance(change, Seen):
            c = change.container
            placement = place(c) if c.running else None
            if placement is None:
                self._drop(c.key)
                return True
            return self._put(c, placement)
        if isinstance(change, Gone):
            self._drop((change.runtime, change.id))
        elif isinstance(change, Relisted):
            for key in [k for k in self._entries if k[0] == change.runtime and k[1] not in change.ids]:
                self._drop(key)
            if change.runtime in self._lost:
                self._lost.discard(change.runtime)
                self._changed()
        elif isinstance(change, Lost) and change.runtime not in self._lost:
            self._lost.add(change.runtime)
            self._changed()  # names by namespace pause (the cache goes); what filters select stays
        return True

    def _put(self, c: Container, place: Placement) -> bool:
        if c.key not in self._entries and len(self._entries) >= self.limit:
            self.dropped += 1
            return False
        self._drop(c.key)
        c = dataclasses.replace(c, labels={}, pod=valid_pod(c.pod))
        e = self._entries[c.key] = _Entry(c, place)
        self._index(e, add=True)
        if place.netns and not place.host_network:
            self._touch_netns(place.netns)  # its neighbours now share their namespace
            self._by_netns.setdefault(place.netns, {})[c.key] = None
        self._touch(e)
        if place.cgroup_id is not None:
            self._by_cgroup[place.cgroup_id] = c.key
        self._changed()
        return True

    def _drop(self, key: Key) -> None:
        e = self._entries.pop(key, None)
        if e is None:
            return
        self._index(e, add=False)
        self._touch(e)
        keys = self._by_netns.get(e.place.netns)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._by_netns[e.place.netns]
            self._touch_netns(e.place.netns)  # its neighbours may have it to themselves now
        if e.place.cgroup_id is not None and self._by_cgroup.get(e.place.cgroup_id) == key:
            del self._by_cgroup[e.place.cgroup_id]
            self._recent[e.place.cgroup_id] = _names_of(e.container)
            if len(self._recent) > MAX_RECENT:
                self._recent.popitem(last=False)
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        self._names.clear()

    def _index(self, e: _Entry, add: bool) -> None:
        c = e.container
        _indexed(self._by_id, c.id, c.key, add)
        _indexed(self._by_name, c.name, c.key, add)
        if c.pod is not None:
            _indexed(self._by_pod, c.pod, c.key, add)

    def _touch(self, e: _Entry) -> None:
        c = e.container
        self._touched.update((c.id, c.name))
        if c.pod is not None:
            self._touched.add(str(c.pod))

    def _touch_netns(self, netns: int) -> None:
        for key in self._by_netns.get(netns, {}):
            self._touch(self._entries[key])

    def touched(self) -> set[str]:
        """The ids, names and pod texts ("NS/NAME") whose filters may resolve differently since
        the last call: only those need resolving again (an id's prefixes are the caller's)."""
        touched, self._touched = self._touched, set()
        return touched

    # ---- what a filter selects ----

    def resolve(self, w: Workload) -> Found:
        """What `container NAME|ID` or `pod NAMESPACE/NAME` selects now."""
        if w.kind == F.POD:
            return self._resolve_pod(w)
        matches = self._matching(w.name)
        if not matches:
            return Found(Resolution.pending(w), f"no running container is named {w.name}")
        if len(matches) > 1:
            return Found(Resolution.pending(w), f"{len(matches)} running containers match {w.name}: "
                         + ", ".join(sorted(e.label for e in matches)[:8]))
        return self._resolve_container(w, matches[0])

    def _matching(self, name: str) -> list[_Entry]:
        """Docker's order: a full id, then an exact name, then a unique id prefix (≥ 12 hex)."""
        by_id = [self._entries[k] for k in self._by_id.get(name, {})]
        if by_id:
            return by_id
        by_name = [self._entries[k] for k in self._by_name.get(name, {})]
        if by_name or len(name) < F.CONTAINER_ID_PREFIX or not set(name) <= _HEX:
            return by_name
        return [e for e in self._entries.values() if e.container.id.startswith(name)]

    def _resolve_container(self, w: Workload, e: _Entry) -> Found:
        place = e.place
        if place.host_network:
            if place.cgroup is None or place.cgroup_id is None:
                return Found(Resolution.pending(w), f"{e.label} is on the host's network and in no cgroup-v2 "
                             "cgroup: the kernel cannot tell its sockets from the host's" + _why(place))
            return Found(Resolution.cgroup(place.cgroup, place.cgroup_id),
                         f"{e.label} is on the host's network: selected by its cgroup")
        others = sorted(self._entries[k].label for k in self._by_netns.get(place.netns, {}) if k != e.container.key)
        if not others:
            return Found(Resolution.netns(place.netns), pid=e.container.pid)
        shared = tuple(others[:16])
        if place.cgroup is not None and place.cgroup_id is not None:
            return Found(Resolution.cgroup(place.cgroup, place.cgroup_id),
                         f"{e.label} shares its network namespace: selected by its cgroup", shared)
        return Found(Resolution.netns(place.netns), f"{e.label} shares its network namespace and has no "
                     "cgroup-v2 cgroup: the others' connections are selected too" + _why(place), shared,
                     e.container.pid)

    def _resolve_pod(self, w: Workload) -> Found:
        namespace, _, name = w.name.partition("/")
        pod = Pod(namespace, name)
        members = [self._entries[k] for k in self._by_pod.get(pod, {})]
        if not members:
            return Found(Resolution.pending(w), f"no running container belongs to pod {pod}")
        members.sort(key=lambda e: not e.container.sandbox)  # the sandbox holds the pod's namespace
        place = members[0].place
        if place.host_network:
            return Found(Resolution.pending(w), f"pod {pod} is on the host's network: select its containers "
                         "(container NAME) instead")
        strays = sorted(self._entries[k].label for k in self._by_netns.get(place.netns, {})
                        if self._entries[k].container.pod != pod)
        note = "other containers share its network namespace" if strays else ""
        return Found(Resolution.netns(place.netns), note, tuple(strays[:16]), members[0].container.pid)

    # ---- names of a socket ----

    def names(self, netns: int, cgroup_id: int) -> Names | None:
        """The container and pod of a socket in namespace `netns` and cgroup `cgroup_id`."""
        key = (netns, cgroup_id)
        try:
            return self._names[key]
        except KeyError:
            pass
        found = self._lookup(netns, cgroup_id)
        if len(self._names) >= MAX_CACHED_NAMES:
            self._names.clear()
        self._names[key] = found
        return found

    def _lookup(self, netns: int, cgroup_id: int) -> Names | None:
        key = self._by_cgroup.get(cgroup_id)
        if key is not None:
            return _names_of(self._entries[key].container)
        recent = self._recent.get(cgroup_id)
        if recent is not None:
            return recent
        keys = self._by_netns.get(netns)
        if not keys:
            return None
        members = [self._entries[k].container for k in keys]
        if any(c.runtime in self._lost for c in members):
            return None  # its namespace may have ended and its inode gone to another meanwhile
        if len(members) == 1:
            return _names_of(members[0])
        pods = {c.pod for c in members}
        if len(pods) == 1 and None not in pods:
            return Names(pod=members[0].pod)
        owners = [c for c in members if not c.shares_netns_of]  # Docker: --network container:X
        return _names_of(owners[0]) if len(owners) == 1 else None

    def fragment(self, netns: int, cgroup_id: int) -> str:
        found = self.names(netns, cgroup_id)
        return found.fragment() if found is not None else ""

    def label(self, netns: int, cgroup_id: int) -> str | None:
        found = self.names(netns, cgroup_id)
        return found.label() if found is not None else None


def _indexed(index: dict[T, dict[Key, None]], value: T, key: Key, add: bool) -> None:
    if add:
        index.setdefault(value, {})[key] = None
        return
    keys = index.get(value)
    if keys is not None:
        keys.pop(key, None)
        if not keys:
            del index[value]


def _why(place: Placement) -> str:
    return f" ({place.no_cgroup})" if place.no_cgroup else ""


def _names_of(c: Container) -> Names:
    return Names(c.name, c.id, c.pod)
