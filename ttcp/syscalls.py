"""Thin, typed wrappers over bpf(2), perf_event_open(2) and friends (inotify(7) too).

This is the only module in ttcp that talks to the kernel through ctypes (the
file system calls of the workloads, inotify(7) and open_by_handle_at(2),
included: Python has no wrapper for them). Every call fills
the command's layout from ttcp.kernel.abi (zeroed where not set) and tells
the kernel its size up to the command's last field (the kernel rejects
non-zero bytes past it), retries EINTR, and turns a failure into a
`BpfError` naming the command and the object, so callers never see a bare
OSError or a negative return code.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import mmap
import os
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ttcp.errors import BpfError, privilege_hint
from ttcp.kernel.abi import (
    ATTR_SIZE,
    BpfLinkInfo,
    BpfMapInfo,
    BpfProgInfo,
    BtfLoadAttr,
    EnableStatsAttr,
    FileHandle,
    InotifyEvent,
    LinkCreateAttr,
    MapBatchAttr,
    MapCreateAttr,
    MapElemAttr,
    ObjIdAttr,
    ObjInfoAttr,
    ObjPinAttr,
    PerfEventAttr,
    ProgLoadAttr,
    ProgTestRunAttr,
    RawTracepointOpenAttr,
    Statfs,
)
from ttcp.kernel.uapi import (
    BPF_LOG_STATS,
    BPF_OBJ_NAME_LEN,
    NS_GET_NSTYPE,
    PERF_EVENT_IOC_ENABLE,
    PERF_EVENT_IOC_SET_BPF,
    PERF_FLAG_FD_CLOEXEC,
    PERF_TYPE_TRACEPOINT,
    Cmd,
    Inotify,
    StatsType,
    UpdateFlag,
)

# Kernel numbers live in ttcp.kernel.uapi, layouts in ttcp.kernel.abi; these are
# this module's own conventions.
_SYSCALL_NUMBERS = {
    "x86_64": (321, 298),  # (bpf, perf_event_open)
    "aarch64": (280, 241),
    "arm64": (280, 241),
}

# Verifier log: start at 1 MiB, grow up to 16 MiB (the kernel caps log_size
# near UINT32_MAX >> 2; 16 MiB holds any log a human will read).
_LOG_INITIAL = 1 << 20
_LOG_MAX = 16 << 20
_LOAD_EAGAIN_RETRIES = 5
_STATS_LOG = 64 << 10  # room for BPF_LOG_STATS' few lines


# ---- libc plumbing ---------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _syscall_numbers() -> tuple[int, int]:
    machine = os.uname().machine
    try:
        return _SYSCALL_NUMBERS[machine]
    except KeyError:
        raise BpfError("bpf(2) setup", errno.ENOSYS, hint=f"unsupported architecture {machine}") from None


_NR_BPF, _NR_PERF_EVENT_OPEN = _syscall_numbers()

# Separate function objects (CDLL.__getitem__ returns a fresh one) so each
# call site has exact argtypes: a bare Python int through the variadic
# syscall() would be truncated to 32 bits.
_bpf_fn = _libc["syscall"]
_bpf_fn.restype = ctypes.c_long
_bpf_fn.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_ulong]

_perf_fn = _libc["syscall"]
_perf_fn.restype = ctypes.c_long
_perf_fn.argtypes = [
    ctypes.c_long, ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_ulong,
]

_statfs_fn = _libc["statfs"]
_statfs_fn.restype = ctypes.c_int
_statfs_fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p]

_mount_fn = _libc["mount"]
_mount_fn.restype = ctypes.c_int
_mount_fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]



_inotify_init1 = _libc["inotify_init1"]
_inotify_init1.restype = ctypes.c_int
_inotify_init1.argtypes = [ctypes.c_int]

_inotify_add_watch = _libc["inotify_add_watch"]
_inotify_add_watch.restype = ctypes.c_int
_inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]

_inotify_rm_watch = _libc["inotify_rm_watch"]
_inotify_rm_watch.restype = ctypes.c_int
_inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]

_open_by_handle_at = _libc["open_by_handle_at"]
_open_by_handle_at.restype = ctypes.c_int
_open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]


class _Buf:
    """A C-addressable copy of some bytes (or a zeroed area) kept alive while
    the kernel may read or write it."""

    def __init__(self, data: bytes | int) -> None:
        if isinstance(data, int):
            self.size = data
            self.c = ctypes.create_string_buffer(data) if data else None
        else:
            self.size = len(data)
            self.c = ctypes.create_string_buffer(bytes(data), self.size) if data else None

    @property
    def addr(self) -> int:
        """The address, or 0 (NULL) for an empty buffer."""
        return ctypes.addressof(self.c) if self.c is not None else 0

    def raw(self, n: int | None = None) -> bytes:
        if self.c is None:
            return b""
        if n is None or n >= self.size:
            return self.c.raw
        return ctypes.string_at(self.c, n)  # one copy of the n bytes, not of the whole buffer first


def _bpf_raw(cmd: Cmd, attr: ctypes.Structure) -> tuple[int, int]:
    """bpf(cmd, attr) with the command's size: (result, 0) on success, (-1, errno)
    on failure; EINTR is retried."""
    addr, size = ctypes.addressof(attr), ATTR_SIZE[cmd]
    while True:
        ret: int = _bpf_fn(_NR_BPF, cmd, addr, size)
        if ret >= 0:
            return ret, 0
        err = ctypes.get_errno()
        if err != errno.EINTR:
            return -1, err


def _bpf(cmd: Cmd, attr: ctypes.Structure, step: str) -> int:
    ret, err = _bpf_raw(cmd, attr)
    if ret < 0:
        raise BpfError(step, err, hint=privilege_hint(err))
    return ret


def _obj_name(name: str) -> bytes:
    """The kernel accepts [A-Za-z0-9_.] and at most 15 bytes; map anything else to '_'."""
    clean = re.sub(r"[^A-Za-z0-9_.]", "_", name)
    return clean.encode()[: BPF_OBJ_NAME_LEN - 1]


def _label(name: str, fd: int) -> str:
    return name if name else f"fd {fd}"


def close(fd: int) -> None:
    """Close a BPF object / perf event fd."""
    os.close(fd)


# ---- CPUs --------------------------------------------------------------------


def _parse_cpu_list(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


@functools.cache  # fixed at boot; per-CPU map writes and reads ask for it every time
def possible_cpus() -> int:
    """Number of possible CPUs: per-CPU map values hold one slot per possible CPU."""
    return len(_parse_cpu_list(Path("/sys/devices/system/cpu/possible").read_text()))


def online_cpus() -> list[int]:
    """Ids of online CPUs (perf events are opened per online CPU)."""
    return _parse_cpu_list(Path("/sys/devices/system/cpu/online").read_text())


def percpu_value_size(value_size: int) -> int:
    """Bytes a per-CPU lookup returns: each CPU's slot is 8-byte aligned."""
    return ((value_size + 7) & ~7) * possible_cpus()


# ---- maps ----------------------------------------------------------------------


def map_create(
    map_type: int,
    key_size: int,
    value_size: int,
    max_entries: int,
    *,
    flags: int = 0,
    name: str = "",
    btf_fd: int = 0,
    btf_key_type_id: int = 0,
    btf_value_type_id: int = 0,
) -> int:
    """BPF_MAP_CREATE; returns the map fd."""
    a = MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size, max_entries=max_entries,
                      map_flags=flags, map_name=_obj_name(name), btf_fd=btf_fd,
                      btf_key_type_id=btf_key_type_id, btf_value_type_id=btf_value_type_id)
    return _bpf(Cmd.MAP_CREATE, a, f"MAP_CREATE {name or '(unnamed)'}")


def map_lookup(fd: int, key: bytes, value_size: int, *, percpu: bool = False, name: str = "") -> bytes | None:
    """The value for `key`, or None when absent.

    With `percpu=True` the result holds every possible CPU's value, each in an
    8-byte-aligned slot (see `percpu_value_size`).
    """
    size = percpu_value_size(value_size) if percpu else value_size
    k, v = _Buf(key), _Buf(size)
    ret, err = _bpf_raw(Cmd.MAP_LOOKUP_ELEM, MapElemAttr(map_fd=fd, key=k.addr, value=v.addr))
    if ret < 0:
        if err == errno.ENOENT:
            return None
        raise BpfError(f"MAP_LOOKUP_ELEM {_label(name, fd)}", err, hint=privilege_hint(err))
    return v.raw()


def map_update(fd: int, key: bytes, value: bytes, flags: int = UpdateFlag.ANY, *, name: str = "") -> None:
    """Insert or replace (per `flags`: BPF_ANY / BPF_NOEXIST / BPF_EXIST)."""
    k, v = _Buf(key), _Buf(value)
    _bpf(Cmd.MAP_UPDATE_ELEM, MapElemAttr(map_fd=fd, key=k.addr, value=v.addr, flags=flags),
         f"MAP_UPDATE_ELEM {_label(name, fd)}")


def map_delete(fd: int, key: bytes, *, name: str = "") -> bool:
    """Delete `key`; False if it was not there."""
    k = _Buf(key)
    ret, err = _bpf_raw(Cmd.MAP_DELETE_ELEM, MapElemAttr(map_fd=fd, key=k.addr))
    if ret < 0:
        if err == errno.ENOENT:
            return False
        raise BpfError(f"MAP_DELETE_ELEM {_label(name, fd)}", err, hint=privilege_hint(err))
    return True


def map_get_next_key(fd: int, key: bytes | None, key_size: int, *, name: str = "") -> bytes | None:
    """The key after `key` (the first key when `key` is None), or None at the end."""
    k = _Buf(key if key is not None else b"")
    nxt = _Buf(key_size)
    ret, err = _bpf_raw(Cmd.MAP_GET_NEXT_KEY, MapElemAttr(map_fd=fd, key=k.addr, next_key=nxt.addr))
    if ret < 0:
        if err == errno.ENOENT:
            return None
        raise BpfError(f"MAP_GET_NEXT_KEY {_label(name, fd)}", err, hint=privilege_hint(err))
    return nxt.raw()


def map_lookup_batch(fd: int, key_size: int, value_size: int, count: int, *,
                     name: str = "") -> list[tuple[bytes, bytes]]:
    """Every entry of a (non-per-CPU) map through BPF_MAP_LOOKUP_BATCH: a few
    syscalls instead of two per entry. A bucket larger than `count` (ENOSPC)
    doubles the buffers and resumes. Kernels before 5.6 raise BpfError EINVAL."""
    keys, values = map_dump(fd, key_size, value_size, count, name=name)
    return [(keys[i * key_size:(i + 1) * key_size], values[i * value_size:(i + 1) * value_size])
            for i in range(len(keys) // key_size)]


_scratch: dict[int, ctypes.Array[ctypes.c_char]] = {}  # batch buffers by size, reused (never read past
# what the kernel wrote): a dump of megabytes each scrape would otherwise allocate and zero them anew


def _scratch_buffer(size: int, slot: int) -> ctypes.Array[ctypes.c_char]:
    """A buffer of `size` bytes kept for the next call of the same size and slot (keys 0, values 1)."""
    key = size * 2 + slot
    buf = _scratch.get(key)
    if buf is None:
        if len(_scratch) > 16:
            _scratch.clear()
        buf = _scratch[key] = ctypes.create_string_buffer(size)
    return buf


def map_dump(fd: int, key_size: int, value_size: int, count: int, *, name: str = "") -> tuple[bytes, bytes]:
    """map_lookup_batch's entries as two blobs, the keys one after the other and the
    values in the same order: for a reader of thousands of entries, which unpacks
    them with struct.iter_unpack rather than one slice each."""
    step = f"MAP_LOOKUP_BATCH {name}".rstrip()
    key_parts: list[bytes] = []
    value_parts: list[bytes] = []
    token_in: _Buf | None = None
    count = max(count, 1)
    while True:
        token_out = _Buf(8)
        keys, values = _scratch_buffer(count * key_size, 0), _scratch_buffer(count * value_size, 1)
        a = MapBatchAttr(in_batch=token_in.addr if token_in is not None else 0, out_batch=token_out.addr,
                         keys=ctypes.addressof(keys), values=ctypes.addressof(values), count=count, map_fd=fd)
        ret, err = _bpf_raw(Cmd.MAP_LOOKUP_BATCH, a)
        if ret < 0 and err == errno.ENOSPC:
            count *= 2
            continue
        if ret < 0 and err != errno.ENOENT:
            raise BpfError(step, err, hint=privilege_hint(err))
        got = a.count
        key_parts.append(ctypes.string_at(keys, got * key_size))
        value_parts.append(ctypes.string_at(values, got * value_size))
        if ret < 0:  # ENOENT: the walk is complete
            return b"".join(key_parts), b"".join(value_parts)
        token_in = _Buf(token_out.raw())


def map_delete_batch(fd: int, keys: list[bytes], *, name: str = "") -> int:
    """Delete every key of `keys` through BPF_MAP_DELETE_BATCH (5.6+; hash maps): a
    few syscalls instead of one per key. The kernel stops at a key that is not there
    (ENOENT: gone meanwhile, e.g. evicted from an LRU map), which is skipped; returns
    how many were deleted."""
    step = f"MAP_DELETE_BATCH {name}".rstrip()
    deleted = 0
    while keys:
        buf = _Buf(b"".join(keys))
        a = MapBatchAttr(keys=buf.addr, count=len(keys), map_fd=fd)
        ret, err = _bpf_raw(Cmd.MAP_DELETE_BATCH, a)
        deleted += a.count
        if ret < 0 and err != errno.ENOENT:
            raise BpfError(step, err, hint=privilege_hint(err))
        keys = keys[a.count + 1:] if ret < 0 else []
    return deleted


def map_freeze(fd: int, *, name: str = "") -> None:
    """BPF_MAP_FREEZE: no more writes from user space (e.g. .rodata)."""
    _bpf(Cmd.MAP_FREEZE, MapElemAttr(map_fd=fd), f"MAP_FREEZE {_label(name, fd)}")


# ---- pinning (BPF file system) --------------------------------------------------------


def obj_pin(fd: int, path: str | os.PathLike[str]) -> None:
    """BPF_OBJ_PIN: give the object a name in a BPF file system; it then lives
    until that name is removed (EEXIST if the name is taken)."""
    where = _Buf(os.fsencode(path) + b"\0")
    _bpf(Cmd.OBJ_PIN, ObjPinAttr(pathname=where.addr, bpf_fd=fd), f"OBJ_PIN {os.fspath(path)}")


def obj_get(path: str | os.PathLike[str]) -> int:
    """BPF_OBJ_GET: a new fd for the object pinned at `path` (read-write)."""
    where = _Buf(os.fsencode(path) + b"\0")
    return _bpf(Cmd.OBJ_GET, ObjPinAttr(pathname=where.addr), f"OBJ_GET {os.fspath(path)}")


def fs_type(path: str | os.PathLike[str]) -> int:
    """statfs(2)'s f_type of the file system holding `path` (e.g. uapi.BPF_FS_MAGIC); OSError."""
    buf = Statfs()
    while _statfs_fn(os.fsencode(path), ctypes.addressof(buf)) != 0:
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err), os.fspath(path))
    return int(buf.f_type) & 0xFFFFFFFF


# ---- programs and BTF ------------------------------------------------------------


def _load_with_log(cmd: Cmd, build: Callable[[_Buf | None, int], ctypes.Structure],
                   true_size_field: str, step: str) -> int:
    """Run a load command fast (no log); on failure rerun with a verifier log
    that grows until it fits, then raise with the real errno and the log.

    `build(log, level)` returns the command's attr; where the kernel reports
    the log size it needed (6.4+), `true_size_field` holds it.
    """
    err = 0
    for _ in range(_LOAD_EAGAIN_RETRIES):
        attr = build(None, 0)
        ret, err = _bpf_raw(cmd, attr)
        if ret >= 0:
            return ret
        if err != errno.EAGAIN:
            break
    real_err, log = err, ""
    size = _LOG_INITIAL
    while True:
        buf = _Buf(size)
        attr = build(buf, 1)
        ret, err2 = _bpf_raw(cmd, attr)
        if ret >= 0:  # passed on the retry (e.g. a transient EAGAIN): keep it
            return ret
        log = buf.raw().split(b"\0", 1)[0].decode(errors="replace")
        if err2 != errno.ENOSPC or size >= _LOG_MAX:
            if err2 != errno.ENOSPC:
                real_err = err2
            break
        wanted: int = getattr(attr, true_size_field)
        size = min(_LOG_MAX, wanted if wanted > size else size * 2)
    hint = "" if log.strip() else privilege_hint(real_err)
    raise BpfError(step, real_err, log=log, hint=hint)


def _check_records(prog: str, what: str, blob: bytes, rec_size: int) -> None:
    if blob and (rec_size <= 0 or len(blob) % rec_size):
        raise BpfError(f"PROG_LOAD {prog}", errno.EINVAL,
                       hint=f"{what} is not a whole number of {rec_size}-byte records")


def prog_load(
    prog_type: int,
    insns: bytes,
    license: str,
    *,
    name: str = "",
    expected_attach_type: int = 0,
    attach_btf_id: int = 0,
    attach_btf_obj_fd: int = 0,
    prog_btf_fd: int = 0,
    func_info: bytes = b"",
    func_info_rec_size: int = 0,
    line_info: bytes = b"",
    line_info_rec_size: int = 0,
    prog_flags: int = 0,
    stats: list[str] | None = None,
) -> int:
    """BPF_PROG_LOAD; returns the program fd. On rejection the BpfError
    carries the verifier log. Given `stats`, the load asks for the verifier's
    statistics (BPF_LOG_STATS: "processed N insns ...") and appends them."""
    if len(insns) % 8 or not insns:
        raise BpfError(f"PROG_LOAD {name}", errno.EINVAL,
                       hint="instructions must be a non-empty multiple of 8 bytes")
    _check_records(name, "func_info", func_info, func_info_rec_size)
    _check_records(name, "line_info", line_info, line_info_rec_size)
    code = _Buf(insns)
    lic = _Buf(license.encode() + b"\0")
    finfo, linfo = _Buf(func_info), _Buf(line_info)

    def build(log: _Buf | None, level: int) -> ProgLoadAttr:
        a = ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8, insns=code.addr, license=lic.addr,
                         prog_flags=prog_flags, prog_name=_obj_name(name),
                         expected_attach_type=expected_attach_type, prog_btf_fd=prog_btf_fd,
                         attach_btf_id=attach_btf_id, attach_btf_obj_fd=attach_btf_obj_fd)
        if log is not None:
            a.log_level, a.log_size, a.log_buf = level, log.size, log.addr
        if func_info:
            a.func_info_rec_size, a.func_info = func_info_rec_size, finfo.addr
            a.func_info_cnt = len(func_info) // func_info_rec_size
        if line_info:
            a.line_info_rec_size, a.line_info = line_info_rec_size, linfo.addr
            a.line_info_cnt = len(line_info) // line_info_rec_size
        return a

    step = f"PROG_LOAD {name or '(unnamed)'}"
    if stats is not None:
        log = _Buf(_STATS_LOG)
        ret, _ = _bpf_raw(Cmd.PROG_LOAD, build(log, BPF_LOG_STATS))
        if ret >= 0:
            stats.append(log.raw().split(b"\0", 1)[0].decode(errors="replace").strip())
            return ret
    return _load_with_log(Cmd.PROG_LOAD, build, "log_true_size", step)


def btf_load(data: bytes, *, name: str = "") -> int:
    """BPF_BTF_LOAD; returns the BTF fd. On rejection the BpfError carries the BTF log."""
    blob = _Buf(data)

    def build(log: _Buf | None, level: int) -> BtfLoadAttr:
        a = BtfLoadAttr(btf=blob.addr, btf_size=len(data))
        if log is not None:
            a.btf_log_buf, a.btf_log_size, a.btf_log_level = log.addr, log.size, level
        return a

    return _load_with_log(Cmd.BTF_LOAD, build, "btf_log_true_size", f"BTF_LOAD {name}".rstrip())


# ---- attaching ---------------------------------------------------------------------


def link_create(
    prog_fd: int, target_fd: int, attach_type: int, *, flags: int = 0, target_btf_id: int = 0, name: str = ""
) -> int:
    """BPF_LINK_CREATE; returns the link fd (closing it detaches)."""
    a = LinkCreateAttr(prog_fd=prog_fd, target_fd=target_fd, attach_type=attach_type, flags=flags,
                       target_btf_id=target_btf_id)
    return _bpf(Cmd.LINK_CREATE, a, f"LINK_CREATE {_label(name, prog_fd)}")


def raw_tracepoint_open(prog_fd: int, name: str | None) -> int:
    """BPF_RAW_TRACEPOINT_OPEN; `name` None for tp_btf/fentry (target from load time)."""
    tp = _Buf(name.encode() + b"\0" if name else b"")
    a = RawTracepointOpenAttr(name=tp.addr, prog_fd=prog_fd)
    return _bpf(Cmd.RAW_TRACEPOINT_OPEN, a, f"RAW_TRACEPOINT_OPEN {name or _label('', prog_fd)}")


def perf_event_open_tracepoint(tp_id: int, cpu: int) -> int:
    """A perf event for tracepoint `tp_id` on one CPU, all processes."""
    attr = PerfEventAttr(type=PERF_TYPE_TRACEPOINT, size=ctypes.sizeof(PerfEventAttr), config=tp_id,
                         sample_period=1, wakeup_events=1)
    while True:
        ret: int = _perf_fn(_NR_PERF_EVENT_OPEN, ctypes.addressof(attr), -1, cpu, -1, PERF_FLAG_FD_CLOEXEC)
        if ret >= 0:
            return ret
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise BpfError(f"PERF_EVENT_OPEN tracepoint {tp_id} cpu {cpu}", err, hint=privilege_hint(err))


def _ioctl(fd: int, request: int, arg: int, step: str) -> None:
    try:
        fcntl.ioctl(fd, request, arg)
    except OSError as e:
        raise BpfError(step, e.errno or errno.EIO, hint=privilege_hint(e.errno or 0)) from None


def perf_event_set_bpf(fd: int, prog_fd: int) -> None:
    """Attach a program to a perf event (the pre-link way)."""
    _ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd, f"PERF_EVENT_IOC_SET_BPF fd {fd}")


def perf_event_enable(fd: int) -> None:
    _ioctl(fd, PERF_EVENT_IOC_ENABLE, 0, f"PERF_EVENT_IOC_ENABLE fd {fd}")


# ---- tracefs -------------------------------------------------------------------------

_TRACEFS = Path("/sys/kernel/tracing")
_DEBUG_TRACING = Path("/sys/kernel/debug/tracing")
_TP_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def _events_dir() -> Path | None:
    for root in (_TRACEFS, _DEBUG_TRACING):
        if (root / "events").is_dir():
            return root / "events"
    return None


def mount_tracefs() -> Path:
    """Mount tracefs at /sys/kernel/tracing unless some tracefs is reachable already."""
    found = _events_dir()
    if found is not None:
        return found
    ret = _mount_fn(b"tracefs", str(_TRACEFS).encode(), b"tracefs", 0, None)
    err = ctypes.get_errno() if ret != 0 else 0
    if ret != 0 and err != errno.EBUSY:
        raise BpfError(f"MOUNT tracefs on {_TRACEFS}", err, hint=privilege_hint(err))
    found = _events_dir()
    if found is None:
        raise BpfError(f"MOUNT tracefs on {_TRACEFS}", errno.ENOENT, hint="tracefs has no events directory")
    return found


def tracepoint_id(category: str, name: str) -> int:
    """The id of a classic tracepoint, from tracefs (mounted on demand)."""
    step = f"TRACEPOINT {category}/{name}"
    if not (_TP_NAME.match(category) and _TP_NAME.match(name)):
        raise BpfError(step, errno.EINVAL, hint="tracepoint names are [A-Za-z0-9_]+")
    path = mount_tracefs() / category / name / "id"
    try:
        return int(path.read_text())
    except FileNotFoundError:
        raise BpfError(step, errno.ENOENT, hint=f"no such tracepoint ({path} is missing)") from None
    except OSError as e:
        raise BpfError(step, e.errno or errno.EIO, hint=privilege_hint(e.errno or 0)) from None


# ---- object info ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgInfo:
    id: int
    type: int
    name: str
    run_time_ns: int
    run_cnt: int
    recursion_misses: int


@dataclass(frozen=True)
class MapInfo:
    id: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    name: str


@dataclass(frozen=True)
class LinkInfo:
    id: int
    type: int
    prog_id: int


def _obj_info(fd: int, info: ctypes.Structure, what: str) -> int:
    """Fill `info` (zeroed where this kernel's struct ends earlier); returns how
    many bytes the kernel filled."""
    a = ObjInfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(Cmd.OBJ_GET_INFO_BY_FD, a, f"OBJ_GET_INFO_BY_FD {what} fd {fd}")
    return int(a.info_len)


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def prog_info(fd: int) -> ProgInfo:
    i = BpfProgInfo()
    _obj_info(fd, i, "prog")
    return ProgInfo(i.id, i.type, _cstr(i.name), i.run_time_ns, i.run_cnt, i.recursion_misses)


def prog_info_size(fd: int) -> int:
    """How much of ttcp's bpf_prog_info prefix this kernel fills: less than
    sizeof(BpfProgInfo) where the kernel's struct is older."""
    return _obj_info(fd, BpfProgInfo(), "prog")


def map_info(fd: int) -> MapInfo:
    i = BpfMapInfo()
    _obj_info(fd, i, "map")
    return MapInfo(i.id, i.type, i.key_size, i.value_size, i.max_entries, i.map_flags, _cstr(i.name))


def link_info(fd: int) -> LinkInfo:
    i = BpfLinkInfo()
    _obj_info(fd, i, "link")
    return LinkInfo(i.id, i.type, i.prog_id)


def enable_stats(stats_type: int = StatsType.RUN_TIME) -> int:
    """BPF_ENABLE_STATS: run_time_ns/run_cnt are counted while the returned fd is open."""
    return _bpf(Cmd.ENABLE_STATS, EnableStatsAttr(type=stats_type), "ENABLE_STATS")


# ---- id iteration (leak checks, diagnostics) --------------------------------------------


def _ids(cmd: Cmd, what: str) -> list[int]:
    ids: list[int] = []
    start = 0
    while True:
        a = ObjIdAttr(start_id=start)
        ret, err = _bpf_raw(cmd, a)
        if ret < 0:
            if err == errno.ENOENT:
                return ids
            raise BpfError(f"{what}_GET_NEXT_ID", err, hint=privilege_hint(err))
        start = a.next_id
        ids.append(start)


def prog_ids() -> list[int]:
    return _ids(Cmd.PROG_GET_NEXT_ID, "PROG")


def map_ids() -> list[int]:
    return _ids(Cmd.MAP_GET_NEXT_ID, "MAP")


def link_ids() -> list[int]:
    return _ids(Cmd.LINK_GET_NEXT_ID, "LINK")


def prog_get_fd_by_id(prog_id: int) -> int:
    return _bpf(Cmd.PROG_GET_FD_BY_ID, ObjIdAttr(prog_id=prog_id), f"PROG_GET_FD_BY_ID {prog_id}")


def map_get_fd_by_id(map_id: int) -> int:
    return _bpf(Cmd.MAP_GET_FD_BY_ID, ObjIdAttr(map_id=map_id), f"MAP_GET_FD_BY_ID {map_id}")


def link_get_fd_by_id(link_id: int) -> int:
    return _bpf(Cmd.LINK_GET_FD_BY_ID, ObjIdAttr(link_id=link_id), f"LINK_GET_FD_BY_ID {link_id}")


# ---- test runs ---------------------------------------------------------------------------


def prog_test_run(prog_fd: int, data_in: bytes = b"", repeat: int = 1, ctx_in: bytes = b"") -> int:
    """BPF_PROG_TEST_RUN; returns the program's return value (of the last run)."""
    return int(_test_run(prog_fd, data_in, repeat, ctx_in).retval)


def prog_test_run_ns(prog_fd: int, data_in: bytes = b"", repeat: int = 1) -> int:
    """BPF_PROG_TEST_RUN `repeat` times; the mean ns per run, as the kernel timed its loop."""
    return int(_test_run(prog_fd, data_in, repeat, b"").duration)


def _test_run(prog_fd: int, data_in: bytes, repeat: int, ctx_in: bytes) -> ProgTestRunAttr:
    data, ctx = _Buf(data_in), _Buf(ctx_in)
    a = ProgTestRunAttr(prog_fd=prog_fd, data_size_in=len(data_in), data_in=data.addr, repeat=repeat,
                        ctx_size_in=len(ctx_in), ctx_in=ctx.addr)
    _bpf(Cmd.PROG_TEST_RUN, a, f"PROG_TEST_RUN fd {prog_fd}")
    return a


# ---- ring buffer mapping --------------------------------------------------------------------


def mmap_ringbuf(map_fd: int, data_size: int) -> tuple[mmap.mmap, mmap.mmap]:
    """Map a BPF ring buffer: (consumer page RW, producer page + data twice RO).

    The data area is mapped twice back to back so a record that wraps past the
    end is still contiguous in memory.
    """
    page = mmap.PAGESIZE
    if data_size <= 0 or data_size & (data_size - 1) or data_size % page:
        raise BpfError(f"MMAP ringbuf fd {map_fd}", errno.EINVAL,
                       hint="size must be a power-of-two multiple of the page size")
    try:
        cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
    except OSError as e:
        raise BpfError(f"MMAP ringbuf consumer fd {map_fd}", e.errno or errno.EIO) from None
    try:
        prod = mmap.mmap(map_fd, page + 2 * data_size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
    except OSError as e:
        cons.close()
        raise BpfError(f"MMAP ringbuf producer fd {map_fd}", e.errno or errno.EIO) from None
    return cons, prod


# ---- inotify, file handles, namespaces (the workloads' file system calls) ----------------
# These raise OSError, as os does: they are file system calls, not BPF steps.


def _checked_libc(ret: int, what: str, path: str | None = None) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return ret


def open_by_handle(mount_fd: int, handle_type: int, handle: bytes, flags: int) -> int:
    """open_by_handle_at(2): a file of the file system `mount_fd` is on, by its handle
    (needs CAP_DAC_READ_SEARCH)."""
    raw = bytes(FileHandle(handle_bytes=len(handle), handle_type=handle_type)) + handle
    buf = ctypes.create_string_buffer(raw, len(raw))
    while True:
        ret = _open_by_handle_at(mount_fd, ctypes.addressof(buf), flags)
        if ret >= 0 or ctypes.get_errno() != errno.EINTR:
            return _checked_libc(ret, "open_by_handle_at")


def namespace_type(fd: int) -> int:
    """The CLONE_NEW* type of the namespace file `fd` (NS_GET_NSTYPE, 4.11+)."""
    return int(fcntl.ioctl(fd, NS_GET_NSTYPE))


# ---- process limits and files -----------------------------------------------------------


def set_memlock_unlimited() -> None:
    """RLIMIT_MEMLOCK to infinity (needs CAP_SYS_RESOURCE to go past the hard limit);
    kernels before 5.11 charge BPF maps and programs to it. Raises OSError."""
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except ValueError:  # Python's word for the kernel's EPERM past the hard limit
        raise OSError(errno.EPERM, "not allowed to raise the hard limit") from None


def mmap_file(path: str | os.PathLike[str]) -> mmap.mmap:
    """A private read-only mapping of a whole file; OSError where the file
    system refuses mmap (sysfs BTF before ~6.15 says ENODEV)."""
    with open(path, "rb") as f:
        try:
            return mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
        except ValueError as e:  # an empty file
            raise OSError(errno.EINVAL, f"cannot map {path}: {e}") from None


# ---- file watches (inotify) --------------------------------------------------------------

_INOTIFY_HEAD = ctypes.sizeof(InotifyEvent)
_INOTIFY_READ = 64 * 1024  # room for hundreds of events with the longest names


class WatchEvent(NamedTuple):
    wd: int
    mask: Inotify
    name: str  # the entry of the watched directory it is about ("" for the directory itself)


def inotify_init() -> int:
    """A non-blocking, close-on-exec inotify fd. Raises OSError (EMFILE: the user's
    max_user_instances is reached)."""
    return _checked_libc(_inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")


def inotify_add_watch(fd: int, path: str | os.PathLike[str], mask: Inotify) -> int:
    """Watch `path` for `mask`; the watch descriptor (the same one again for the same
    inode). Raises OSError (ENOENT, ENOTDIR with Inotify.ONLYDIR, EACCES)."""
    return _checked_libc(_inotify_add_watch(fd, os.fsencode(path), int(mask)), "inotify_add_watch",
                         os.fspath(path))


def inotify_rm_watch(fd: int, wd: int) -> None:
    """Remove a watch; one the kernel removed already (its inode went) is no error."""
    if _inotify_rm_watch(fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
        _checked_libc(-1, "inotify_rm_watch")


def inotify_read(fd: int) -> list[WatchEvent]:
    """Every event queued now ([] when none: the fd is non-blocking). Raises OSError."""
    out: list[WatchEvent] = []
    while True:
        try:
            raw = os.read(fd, _INOTIFY_READ)
        except BlockingIOError:
            return out
        except InterruptedError:
            continue
        out += parse_inotify(raw)


def parse_inotify(raw: bytes) -> list[WatchEvent]:
    """struct inotify_event records, back to back (pure). ValueError on a cut record:
    the kernel only ever returns whole ones."""
    out: list[WatchEvent] = []
    at = 0
    while at < len(raw):
        if len(raw) - at < _INOTIFY_HEAD:
            raise ValueError(f"inotify: {len(raw) - at} bytes left, a record needs {_INOTIFY_HEAD}")
        head = InotifyEvent.from_buffer_copy(raw, at)
        end = at + _INOTIFY_HEAD + head.len
        if end > len(raw):
            raise ValueError(f"inotify: a name of {head.len} bytes runs past the {len(raw)} read")
        name = raw[at + _INOTIFY_HEAD:end].split(b"\0", 1)[0]
        out.append(WatchEvent(head.wd, Inotify(head.mask), os.fsdecode(name)))
        at = end
    return out
