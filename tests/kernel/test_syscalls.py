"""ttcp.syscalls against the real kernel: maps, program loading, info, ids,
attaching through perf events and raw tracepoints."""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support import bpf_asm as asm
from tests.support.btf_builder import BtfBuilder
from tests.support.kernel import require
from tests.support.paths import REPO
from ttcp import syscalls
from ttcp.errors import BpfError
from ttcp.kernel import features
from ttcp.kernel.uapi import AttachType, MapType, ProgType, UpdateFlag

pytestmark = [pytest.mark.matrix, pytest.mark.kernel, pytest.mark.usefixtures("no_bpf_leaks")]


@contextmanager
def opened(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        syscalls.close(fd)


def test_cpu_lists_parse() -> None:
    assert syscalls._parse_cpu_list("0-3,5,7-8\n") == [0, 1, 2, 3, 5, 7, 8]
    assert syscalls.possible_cpus() >= len(syscalls.online_cpus()) >= 1


def test_hash_map_roundtrip_and_iteration() -> None:
    with opened(syscalls.map_create(MapType.HASH, 4, 8, 16, name="t_hash")) as fd:
        keys = [struct.pack("<I", i) for i in range(10)]
        for i, k in enumerate(keys):
            syscalls.map_update(fd, k, struct.pack("<Q", i * 1000))
        assert syscalls.map_lookup(fd, keys[3], 8) == struct.pack("<Q", 3000)
        assert syscalls.map_lookup(fd, struct.pack("<I", 99), 8) is None

        seen, key = [], None
        while (key := syscalls.map_get_next_key(fd, key, 4)) is not None:
            seen.append(key)
        assert sorted(seen) == sorted(keys)

        assert syscalls.map_delete(fd, keys[0]) is True
        assert syscalls.map_delete(fd, keys[0]) is False
        assert syscalls.map_lookup(fd, keys[0], 8) is None

        info = syscalls.map_info(fd)
        assert (info.type, info.key_size, info.value_size, info.max_entries, info.name) == (
            MapType.HASH, 4, 8, 16, "t_hash")
        assert info.id in syscalls.map_ids()


def test_update_flags_and_errors_carry_step_and_errno() -> None:
    with opened(syscalls.map_create(MapType.HASH, 4, 4, 2, name="t_flags")) as fd:
        k, v = b"kkkk", b"vvvv"
        with pytest.raises(BpfError) as exc:
            syscalls.map_update(fd, k, v, UpdateFlag.EXIST, name="t_flags")
        assert exc.value.errno == errno.ENOENT
        assert exc.value.step == "MAP_UPDATE_ELEM t_flags"
        syscalls.map_update(fd, k, v, UpdateFlag.NOEXIST)
        with pytest.raises(BpfError) as exc:
            syscalls.map_update(fd, k, v, UpdateFlag.NOEXIST)
        assert exc.value.errno == errno.EEXIST
        assert exc.value.step.startswith("MAP_UPDATE_ELEM fd ")
        syscalls.map_update(fd, b"k2kk", v)
        with pytest.raises(BpfError) as exc:
            syscalls.map_update(fd, b"k3kk", v)
        assert exc.value.errno == errno.E2BIG

    with pytest.raises(BpfError) as exc:
        syscalls.map_create(9999, 4, 4, 1, name="bogus")
    assert exc.value.errno == errno.EINVAL
    assert exc.value.step == "MAP_CREATE bogus"
    assert "MAP_CREATE bogus: EINVAL" in str(exc.value)


def test_map_freeze_blocks_user_writes() -> None:
    with opened(syscalls.map_create(MapType.ARRAY, 4, 4, 1, name="t_frozen")) as fd:
        syscalls.map_update(fd, bytes(4), b"abcd")
        syscalls.map_freeze(fd)
        with pytest.raises(BpfError) as exc:
            syscalls.map_update(fd, bytes(4), b"wxyz")
        assert exc.value.errno == errno.EPERM
        assert syscalls.map_lookup(fd, bytes(4), 4) == b"abcd"


def test_percpu_lookup_has_one_aligned_slot_per_possible_cpu() -> None:
    with opened(syscalls.map_create(MapType.PERCPU_ARRAY, 4, 4, 1, name="t_pcpu")) as fd:
        ncpu = syscalls.possible_cpus()
        slots = b"".join(struct.pack("<II", cpu + 1, 0) for cpu in range(ncpu))
        syscalls.map_update(fd, bytes(4), slots)
        raw = syscalls.map_lookup(fd, bytes(4), 4, percpu=True)
        assert raw is not None and len(raw) == 8 * ncpu
        assert [struct.unpack_from("<I", raw, 8 * c)[0] for c in range(ncpu)] == list(range(1, ncpu + 1))


def _wait_gone(ids_fn, obj_id: int) -> bool:
    """Objects are freed asynchronously after their last fd closes."""
    deadline = time.monotonic() + 3
    while obj_id in ids_fn():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_prog_load_info_test_run_and_ids() -> None:
    fd = syscalls.prog_load(ProgType.SOCKET_FILTER, asm.mov_imm(asm.R0, 7) + asm.exit_(),
                            "GPL", name="t_trivial")
    try:
        info = syscalls.prog_info(fd)
        assert info.type == ProgType.SOCKET_FILTER
        assert info.name == "t_trivial"
        assert info.id in syscalls.prog_ids()
        assert syscalls.prog_test_run(fd, asm.packet(b"x"), repeat=3) == 7
        with opened(syscalls.prog_get_fd_by_id(info.id)) as fd2:
            assert syscalls.prog_info(fd2).id == info.id
    finally:
        syscalls.close(fd)
    assert _wait_gone(syscalls.prog_ids, info.id)
    with pytest.raises(BpfError) as exc:
        syscalls.prog_get_fd_by_id(info.id)
    assert exc.value.errno == errno.ENOENT


def test_object_names_are_sanitised_and_truncated() -> None:
    with opened(syscalls.map_create(MapType.ARRAY, 4, 4, 1, name="a-very:long/map name")) as fd:
        assert syscalls.map_info(fd).name == "a_very_long_map"


def test_verifier_rejection_carries_errno_and_log() -> None:
    bad = asm.exit_()  # r0 never written
    with pytest.raises(BpfError) as exc:
        syscalls.prog_load(ProgType.SOCKET_FILTER, bad, "GPL", name="t_bad")
    err = exc.value
    assert err.errno in (errno.EACCES, errno.EINVAL)
    assert err.step == "PROG_LOAD t_bad"
    assert "R0 !read_ok" in err.log_tail()
    assert "R0 !read_ok" in str(err)
    assert err.hint == ""  # a verifier rejection is not a privilege problem


def test_verifier_log_grows_until_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    # Many instructions, then a read of an uninitialised register: the log is
    # far longer than the tiny first buffer, so the loader must grow it.
    bad = b"".join(asm.mov_imm(asm.R0, i) for i in range(200)) + asm.mov_reg(asm.R0, asm.R5) + asm.exit_()
    with pytest.raises(BpfError) as full:
        syscalls.prog_load(ProgType.SOCKET_FILTER, bad, "GPL", name="t_biglog")
    monkeypatch.setattr(syscalls, "_LOG_INITIAL", 256)
    with pytest.raises(BpfError) as grown:
        syscalls.prog_load(ProgType.SOCKET_FILTER, bad, "GPL", name="t_biglog")
    assert len(full.value.log) > 8 * 256  # (5.10 writes about 3.7 KiB of it, 6.x more)
    assert grown.value.log == full.value.log
    assert grown.value.errno == full.value.errno == errno.EACCES
    assert "R5 !read_ok" in grown.value.log


def test_btf_load_rejects_garbage_with_log() -> None:
    with pytest.raises(BpfError) as exc:
        syscalls.btf_load(b"\x9f\xeb\x01\x00" + bytes(20), name="junk")
    assert exc.value.step == "BTF_LOAD junk"
    assert exc.value.errno == errno.EINVAL
    assert exc.value.log.strip() and exc.value.hint == ""  # the kernel said why


def test_btf_load_minimal_blob() -> None:
    b = BtfBuilder()  # one INT type "int" (4 bytes, signed, 32 bits)
    b.add_int("int", 4, signed=True)
    with opened(syscalls.btf_load(b.build())) as fd:
        assert fd > 0


_DROP_PRIVS = """
import os
from ttcp import syscalls
from ttcp.errors import BpfError
from ttcp.kernel.uapi import ProgType
os.setgroups([]); os.setgid(65534); os.setuid(65534)  # after imports: nobody cannot read them
try:
    syscalls.prog_load(ProgType.TRACEPOINT, bytes.fromhex("b7000000000000009500000000000000"),
                       "GPL")
except BpfError as e:
    print(e.errno, repr(e.log), e.hint)
"""


def test_eperm_without_log_gets_privilege_hint() -> None:
    out = subprocess.run([sys.executable, "-c", _DROP_PRIVS], capture_output=True, text=True, timeout=30,
                         cwd=REPO, check=False)
    assert out.returncode == 0, out.stderr
    err, log, hint = out.stdout.strip().split(" ", 2)
    assert int(err) == errno.EPERM
    assert log == "''"
    assert "CAP_BPF" in hint


def _tcp_loopback_roundtrip() -> None:
    """A loopback TCP connection opened and closed: fires sock/inet_sock_set_state."""
    with socket.create_server(("127.0.0.1", 0)) as srv, socket.create_connection(srv.getsockname()) as cli:
        conn, _ = srv.accept()
        conn.close()
        cli.close()


def _tracepoint_prog() -> int:
    return syscalls.prog_load(ProgType.TRACEPOINT, asm.TRIVIAL, "GPL", name="t_tp")


def _run_count_after_traffic(prog_fd: int) -> int:
    before = syscalls.prog_info(prog_fd).run_cnt
    _tcp_loopback_roundtrip()
    return syscalls.prog_info(prog_fd).run_cnt - before


@contextmanager
def pinned_to(cpu: int) -> Iterator[None]:
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


@pytest.mark.parametrize("how", ["link", "ioctl"])
def test_tracepoint_attach_via_perf_event(how: str) -> None:
    """One perf event is enough: the program joins the tracepoint's program
    array, which runs on every CPU; attaching it again (another CPU's event)
    is EEXIST. Perf-event links exist from 5.15: before, the ioctl (ttcp's
    own fallback, chosen by the same probe)."""
    if how == "link":
        require(features.perf_event_link())
    tp_id = syscalls.tracepoint_id("sock", "inet_sock_set_state")
    assert tp_id > 0
    cpus = syscalls.online_cpus()
    with opened(syscalls.enable_stats()), opened(_tracepoint_prog()) as prog:
        assert _run_count_after_traffic(prog) == 0  # not attached yet
        fds: list[int] = []
        try:
            pfd = syscalls.perf_event_open_tracepoint(tp_id, cpus[0])
            fds.append(pfd)
            if how == "link":
                link = syscalls.link_create(prog, pfd, AttachType.PERF_EVENT)
                fds.append(link)
                assert syscalls.link_info(link).prog_id == syscalls.prog_info(prog).id
            else:
                syscalls.perf_event_set_bpf(pfd, prog)
            syscalls.perf_event_enable(pfd)
            for cpu in cpus:
                with pinned_to(cpu):
                    assert _run_count_after_traffic(prog) > 0, f"no run on cpu {cpu}"
            if len(cpus) > 1:
                pfd2 = syscalls.perf_event_open_tracepoint(tp_id, cpus[1])
                fds.append(pfd2)
                with pytest.raises(BpfError) as exc:
                    syscalls.perf_event_set_bpf(pfd2, prog)
                assert exc.value.errno == errno.EEXIST
        finally:
            for fd in reversed(fds):
                syscalls.close(fd)
        assert _run_count_after_traffic(prog) == 0  # detached with the fds


def test_tracepoint_id_errors() -> None:
    with pytest.raises(BpfError) as exc:
        syscalls.tracepoint_id("sock", "no_such_tracepoint_here")
    assert exc.value.errno == errno.ENOENT
    with pytest.raises(BpfError) as exc:
        syscalls.tracepoint_id("..", "x")
    assert exc.value.errno == errno.EINVAL


def test_raw_tracepoint_open_and_link_ids() -> None:
    with opened(syscalls.enable_stats()), opened(
        syscalls.prog_load(ProgType.RAW_TRACEPOINT, asm.TRIVIAL, "GPL", name="t_rawtp")
    ) as prog:
        link = syscalls.raw_tracepoint_open(prog, "inet_sock_set_state")
        try:
            info = syscalls.link_info(link)
            assert info.prog_id == syscalls.prog_info(prog).id
            assert info.id in syscalls.link_ids()
            assert _run_count_after_traffic(prog) > 0
            with opened(syscalls.link_get_fd_by_id(info.id)) as again:
                assert syscalls.link_info(again).id == info.id
        finally:
            syscalls.close(link)
        assert _wait_gone(syscalls.link_ids, info.id)
        assert _run_count_after_traffic(prog) == 0
    with pytest.raises(BpfError) as exc:
        syscalls.raw_tracepoint_open(-1, "inet_sock_set_state")
    assert exc.value.errno == errno.EBADF
    assert exc.value.step == "RAW_TRACEPOINT_OPEN inet_sock_set_state"


def test_mmap_ringbuf_protections() -> None:
    with opened(syscalls.map_create(MapType.RINGBUF, 0, 0, 4096, name="t_rb")) as fd:
        cons, prod = syscalls.mmap_ringbuf(fd, 4096)
        try:
            assert len(cons) == syscalls.mmap.PAGESIZE
            assert len(prod) == syscalls.mmap.PAGESIZE + 2 * 4096
            cons[0:8] = bytes(8)  # consumer page is writable
            with pytest.raises(TypeError):
                prod[0:8] = bytes(8)  # producer side is read-only
        finally:
            cons.close()
            prod.close()
    with pytest.raises(BpfError):
        syscalls.mmap_ringbuf(0, 3000)
