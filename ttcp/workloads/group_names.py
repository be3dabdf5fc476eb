"""The names `by container` and `by pod` give the kernel's workload groups.

The kernel keys such a group by the socket's cgroup id and netns inode
(ByKind.WORKLOAD); the table names each from the container registry when it
reads the groups (ttcp.rtt.groups.workload_key), never per event.
"""

from __future__ import annotations

from ttcp.rtt.groups import Named, Namer
from ttcp.workloads.registry import Registry


def namer(registry: Registry) -> Namer:
    """(netns, cgroup id) -> the container and pod the registry knows there (its cached lookup)."""
    def names(netns: int, cgroup_id: int) -> Named | None:
        found = registry.names(netns, cgroup_id)
        if found is None:
            return None
        pod = found.pod
        return Named(found.container, pod.namespace if pod is not None else "", pod.name if pod is not None else "")
    return names
