"""How many entries a BPF LRU hash needs to hold N live ones.

The common (not per-CPU) LRU of BPF_MAP_TYPE_LRU_HASH moves free entries to a
CPU's local list LOCAL_FREE_TARGET (128) at a time (kernel/bpf/bpf_lru_list.c).
When the global free list has fewer, kernels before the fix that scales the
target to the map's size (Debian's 6.1.0-57 among them) evict live entries
to make up the 128: a 64-entry map lost one of 3 groups there. Each CPU's local
list holds at most that many free entries, so with N + 128 x possible CPUs
entries, the CPU that refills always finds 128 free globally while at most N
are live: N are held before any eviction, on every kernel.
"""

from __future__ import annotations

from ttcp import syscalls

LOCAL_FREE_TARGET = 128  # free entries a CPU takes from the LRU's global list at a time


def entries_to_hold(n: int, cpus: int | None = None) -> int:
    """max_entries for an LRU hash that holds `n` live entries before it evicts any
    (`cpus`: possible CPUs; None: this machine's)."""
    return n + LOCAL_FREE_TARGET * (syscalls.possible_cpus() if cpus is None else cpus)
