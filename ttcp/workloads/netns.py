"""Network namespace files, held open while filters name them.

A namespace's inode number (what the BPF program reads from the socket's
net->ns.inum) is given to another namespace as soon as the first is freed
(measured: `ip netns add/del` five times gave two numbers in turn). A file
descriptor on the namespace keeps it alive, so while ttcp holds one the number
cannot move to another namespace: a `netns PATH` filter holds its file from
the moment it is added to the moment it is removed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ttcp import syscalls
from ttcp.kernel.uapi import CLONE_NEWNET
from ttcp.rtt.filter_table import WorkloadError


@dataclass
class _Held:
    fd: int
    inode: int
    uses: int = 1


class NetnsHandles:
    """Namespace files by path, each open once, counted by the filters naming it."""

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}

    def acquire(self, path: str) -> int:
        """The inode of the network namespace at `path`, held; WorkloadError if there is none."""
        held = self._held.get(path)
        if held is not None:
            held.uses += 1
            return held.inode
        fd = self._open(path)
        try:
            inode = os.fstat(fd).st_ino
            self._check(fd, path)
        except BaseException:
            os.close(fd)
            raise
        self._held[path] = _Held(fd, inode)
        return inode

    @staticmethod
    def _open(path: str) -> int:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise WorkloadError(f"netns {path} does not exist: a netns filter names a namespace that exists "
                                f"(/run/netns/NAME after `ip netns add NAME`, or /proc/PID/ns/net)") from None
        except OSError as e:
            raise WorkloadError(f"netns {path}: {e.strerror}") from None

    @staticmethod
    def _check(fd: int, path: str) -> None:
        try:
            kind = syscalls.namespace_type(fd)
        except OSError:
            raise WorkloadError(f"netns {path} is not a namespace file (a /run/netns entry seen without its "
                                f"mount, e.g. in a container without mount propagation?)") from None
        if kind != CLONE_NEWNET:
            raise WorkloadError(f"netns {path} is a namespace file, but not of a network namespace")

    def release(self, path: str) -> None:
        held = self._held.get(path)
        if held is None:
            return
        held.uses -= 1
        if held.uses <= 0:
            del self._held[path]
            os.close(held.fd)

    def close(self) -> None:
        for held in self._held.values():
            os.close(held.fd)
        self._held.clear()
