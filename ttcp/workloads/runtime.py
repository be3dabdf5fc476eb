"""What a container runtime tells ttcp about its containers (Docker, containerd).

Each runtime source (ttcp.workloads.docker, ttcp.workloads.containerd) turns its
own records into `Container`s and reports changes as `Seen` and `Gone`; the
registry (ttcp.workloads.registry) is the one consumer. Keys are (runtime, id),
never a namespace inode: the kernel reuses those at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Runtime = Literal["docker", "containerd"]


@dataclass(frozen=True)
class Pod:
    """A Kubernetes pod as the runtime's annotations or labels name it."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Container:
    """One container, running or not, as its runtime last described it."""

    runtime: Runtime
    id: str  # the full id (Docker: 64 hex; containerd: its identifier)
    name: str  # Docker's name without the leading "/"; containerd: the id, or the CRI container name
    namespace: str = ""  # containerd's namespace ("k8s.io", "default"); "" for Docker
    image: str = ""
    pid: int = 0  # the init process while running; 0 otherwise
    host_network: bool = False  # shares the host's network namespace
    shares_netns_of: str | None = None  # Docker `--network container:X`: X's id
    pod: Pod | None = None
    container_name: str = ""  # the pod's container name (CRI); "" when not a pod's
    sandbox: bool = False  # a pod's sandbox (pause) container, which holds its netns
    labels: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> tuple[Runtime, str]:
        return (self.runtime, self.id)

    @property
    def running(self) -> bool:
        return self.pid > 0


@dataclass(frozen=True)
class Seen:
    """A container appeared, started or changed (its pid, name or network)."""

    container: Container


@dataclass(frozen=True)
class Gone:
    """A container stopped (`removed` False) or was removed: what the kernel matches for
    it must go before anything new can take its netns inode."""

    runtime: Runtime
    id: str
    removed: bool = False


@dataclass(frozen=True)
class Relisted:
    """A source saw the runtime's full list again (after a reconnect): containers of this
    runtime not in `ids` are gone."""

    runtime: Runtime
    ids: frozenset[str]


@dataclass(frozen=True)
class Lost:
    """A source lost sight of its runtime (a Docker engine not answering): its containers
    stay for the filters (a followed namespace is held, its inode cannot be reused), but
    a namespace inode no longer names them, since one that ended meanwhile could be
    another's now; until the next `Relisted`. Cgroup ids still name them (never reused)."""

    runtime: Runtime


Change = Seen | Gone | Relisted | Lost
