"""What ttcp does to stdout once its reader has gone (`ttcp | head`)."""

from __future__ import annotations

import os

from ttcp.output import to_devnull


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_gone_reader_leaves_stdout_on_dev_null_and_no_descriptor_behind() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone
    with os.fdopen(write_end, "w") as out:
        before = _open_fds()
        to_devnull(out)
        assert _open_fds() == before  # the /dev/null descriptor it opened is closed again
        assert os.readlink(f"/proc/self/fd/{out.fileno()}") == os.devnull
        out.write("still buffered\n")  # and what Python still holds goes nowhere, quietly
        out.flush()
