"""The program's timestamps as Unix time: one offset, in one place.

bpf_ktime_get_ns() stamps events and filter matches with CLOCK_MONOTONIC;
adding the distance between the wall clock and the monotonic one gives Unix
time. The printer takes the distance once (every line of a run on one
clock); an API answer takes it when asked (a clock stepped since is followed).
"""

from __future__ import annotations

import time


def wall_clock_offset_ns() -> int:
    """Add to a CLOCK_MONOTONIC stamp (bpf_ktime_get_ns) to get Unix time, in ns."""
    return time.time_ns() - time.monotonic_ns()


def monotonic_to_wall(mono_ns: int) -> float:
    """Unix time of a bpf_ktime_get_ns() stamp, in seconds (0 stays 0: never matched)."""
    if not mono_ns:
        return 0.0
    return (wall_clock_offset_ns() + mono_ns) / 1e9
