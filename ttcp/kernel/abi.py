"""The kernel structures ttcp passes through syscalls, as ctypes layouts (pure).

Each layout is described once, with the kernel's own field names
(linux/bpf.h, linux/perf_event.h), so that tests/kernel/test_layouts.py can check
every offset and size against the running kernel's BTF instead of trusting
byte offsets that only the kernel accepting them would check. cilium/ebpf's
internal/sys/types.go is the model. Numbers (commands, types, flags) live in
ttcp.kernel.uapi; this module only says where things are.

A layout ends at the last field ttcp knows (structs that grow, such as
bpf_prog_info, are prefixes); a field whose name starts with "_" stands for
kernel bit-fields ttcp leaves at zero. Pointers are u64 in these ABIs. The
64-bit architectures ttcp runs on align u64 to 8, as the kernel's
__aligned_u64 does.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from typing import Final

from ttcp.kernel.uapi import BPF_OBJ_NAME_LEN, Cmd

u32 = ctypes.c_uint32
u64 = ctypes.c_uint64
_ObjName = ctypes.c_char * BPF_OBJ_NAME_LEN

Layout = type[ctypes.Structure]


def end_of(layout: Layout, field: str) -> int:
    """The offset just past `field`: how many bytes a prefix through it takes."""
    desc = getattr(layout, field)
    return int(desc.offset + desc.size)


# ---- union bpf_attr: one member per command ------------------------------------------


class MapCreateAttr(ctypes.Structure):
    """BPF_MAP_CREATE."""

    _fields_ = [
        ("map_type", u32), ("key_size", u32), ("value_size", u32), ("max_entries", u32),
        ("map_flags", u32), ("inner_map_fd", u32), ("numa_node", u32), ("map_name", _ObjName),
        ("map_ifindex", u32), ("btf_fd", u32), ("btf_key_type_id", u32), ("btf_value_type_id", u32),
    ]


class _ValueOrNextKey(ctypes.Union):
    _fields_ = [("value", u64), ("next_key", u64)]


class MapElemAttr(ctypes.Structure):
    """BPF_MAP_{LOOKUP,UPDATE,DELETE}_ELEM, BPF_MAP_GET_NEXT_KEY and BPF_MAP_FREEZE,
    each through its own last field (see LAST_FIELD)."""

    _anonymous_ = ("_value",)
    _fields_ = [("map_fd", u32), ("key", u64), ("_value", _ValueOrNextKey), ("flags", u64)]


class MapBatchAttr(ctypes.Structure):
    """BPF_MAP_*_BATCH (bpf_attr.batch)."""

    _fields_ = [
        ("in_batch", u64), ("out_batch", u64), ("keys", u64), ("values", u64),
        ("count", u32), ("map_fd", u32), ("elem_flags", u64), ("flags", u64),
    ]


class _AttachProgOrBtfObj(ctypes.Union):
    _fields_ = [("attach_prog_fd", u32), ("attach_btf_obj_fd", u32)]


class ProgLoadAttr(ctypes.Structure):
    """BPF_PROG_LOAD."""

    _anonymous_ = ("_attach_fd",)
    _fields_ = [
        ("prog_type", u32), ("insn_cnt", u32), ("insns", u64), ("license", u64),
        ("log_level", u32), ("log_size", u32), ("log_buf", u64),
        ("kern_version", u32), ("prog_flags", u32), ("prog_name", _ObjName),
        ("prog_ifindex", u32), ("expected_attach_type", u32), ("prog_btf_fd", u32),
        ("func_info_rec_size", u32), ("func_info", u64), ("func_info_cnt", u32),
        ("line_info_rec_size", u32), ("line_info", u64), ("line_info_cnt", u32),
        ("attach_btf_id", u32), ("_attach_fd", _AttachProgOrBtfObj),
        ("core_relo_cnt", u32), ("fd_array", u64), ("core_relos", u64),
        ("core_relo_rec_size", u32), ("log_true_size", u32),
    ]


class ObjPinAttr(ctypes.Structure):
    """BPF_OBJ_PIN and BPF_OBJ_GET (pathname is a pointer to a NUL-terminated path)."""

    _fields_ = [("pathname", u64), ("bpf_fd", u32), ("file_flags", u32)]


class ProgTestRunAttr(ctypes.Structure):
    """BPF_PROG_TEST_RUN (bpf_attr.test)."""

    _fields_ = [
        ("prog_fd", u32), ("retval", u32), ("data_size_in", u32), ("data_size_out", u32),
        ("data_in", u64), ("data_out", u64), ("repeat", u32), ("duration", u32),
        ("ctx_size_in", u32), ("ctx_size_out", u32), ("ctx_in", u64), ("ctx_out", u64),
        ("flags", u32), ("cpu", u32),
    ]


class _ObjId(ctypes.Union):
    _fields_ = [("start_id", u32), ("prog_id", u32), ("map_id", u32), ("link_id", u32)]


class ObjIdAttr(ctypes.Structure):
    """BPF_{PROG,MAP,LINK}_GET_NEXT_ID and BPF_{PROG,MAP,LINK}_GET_FD_BY_ID."""

    _anonymous_ = ("_id",)
    _fields_ = [("_id", _ObjId), ("next_id", u32), ("open_flags", u32)]


class ObjInfoAttr(ctypes.Structure):
    """BPF_OBJ_GET_INFO_BY_FD (bpf_attr.info); info points at a bpf_*_info below."""

    _fields_ = [("bpf_fd", u32), ("info_len", u32), ("info", u64)]


class RawTracepointOpenAttr(ctypes.Structure):
    """BPF_RAW_TRACEPOINT_OPEN (bpf_attr.raw_tracepoint)."""

    _fields_ = [("name", u64), ("prog_fd", u32)]


class BtfLoadAttr(ctypes.Structure):
    """BPF_BTF_LOAD."""

    _fields_ = [
        ("btf", u64), ("btf_log_buf", u64), ("btf_size", u32), ("btf_log_size", u32),
        ("btf_log_level", u32), ("btf_log_true_size", u32),
    ]


class LinkCreateAttr(ctypes.Structure):
    """BPF_LINK_CREATE (bpf_attr.link_create; target_btf_id is one arm of a union)."""

    _fields_ = [
        ("prog_fd", u32), ("target_fd", u32), ("attach_type", u32), ("flags", u32),
        ("target_btf_id", u32),
    ]


class EnableStatsAttr(ctypes.Structure):
    """BPF_ENABLE_STATS (bpf_attr.enable_stats)."""

    _fields_ = [("type", u32)]


# The layout each command takes and its last field (the kernel's
# BPF_<CMD>_LAST_FIELD, as far as ttcp goes). bpf(2) is told the end of that
# field: the kernel refuses non-zero bytes past a command's last field and
# zero-fills whatever the given size leaves out.
LAST_FIELD: Final[Mapping[Cmd, tuple[Layout, str]]] = {
    Cmd.MAP_CREATE: (MapCreateAttr, "btf_value_type_id"),
    Cmd.MAP_LOOKUP_ELEM: (MapElemAttr, "flags"),
    Cmd.MAP_UPDATE_ELEM: (MapElemAttr, "flags"),
    Cmd.MAP_DELETE_ELEM: (MapElemAttr, "flags"),
    Cmd.MAP_GET_NEXT_KEY: (MapElemAttr, "next_key"),
    Cmd.MAP_FREEZE: (MapElemAttr, "map_fd"),
    Cmd.MAP_LOOKUP_BATCH: (MapBatchAttr, "flags"),
    Cmd.MAP_DELETE_BATCH: (MapBatchAttr, "flags"),
    Cmd.PROG_LOAD: (ProgLoadAttr, "log_true_size"),
    Cmd.OBJ_PIN: (ObjPinAttr, "file_flags"),
    Cmd.OBJ_GET: (ObjPinAttr, "file_flags"),
    Cmd.PROG_TEST_RUN: (ProgTestRunAttr, "cpu"),
    Cmd.PROG_GET_NEXT_ID: (ObjIdAttr, "next_id"),
    Cmd.MAP_GET_NEXT_ID: (ObjIdAttr, "next_id"),
    Cmd.LINK_GET_NEXT_ID: (ObjIdAttr, "next_id"),
    Cmd.PROG_GET_FD_BY_ID: (ObjIdAttr, "open_flags"),
    Cmd.MAP_GET_FD_BY_ID: (ObjIdAttr, "open_flags"),
    Cmd.LINK_GET_FD_BY_ID: (ObjIdAttr, "open_flags"),
    Cmd.OBJ_GET_INFO_BY_FD: (ObjInfoAttr, "info"),
    Cmd.RAW_TRACEPOINT_OPEN: (RawTracepointOpenAttr, "prog_fd"),
    Cmd.BTF_LOAD: (BtfLoadAttr, "btf_log_true_size"),
    Cmd.LINK_CREATE: (LinkCreateAttr, "target_btf_id"),
    Cmd.ENABLE_STATS: (EnableStatsAttr, "type"),
}

ATTR_SIZE: Final[Mapping[Cmd, int]] = {cmd: end_of(layout, last) for cmd, (layout, last) in LAST_FIELD.items()}


# ---- what OBJ_GET_INFO_BY_FD fills (prefixes: the kernel fills what fits) ----------------


class BpfProgInfo(ctypes.Structure):
    """struct bpf_prog_info through recursion_misses; a kernel that stops
    earlier (before 5.12) says so in the returned info_len."""

    _fields_ = [
        ("type", u32), ("id", u32), ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", u32), ("xlated_prog_len", u32),
        ("jited_prog_insns", u64), ("xlated_prog_insns", u64), ("load_time", u64),
        ("created_by_uid", u32), ("nr_map_ids", u32), ("map_ids", u64), ("name", _ObjName),
        ("ifindex", u32), ("_gpl_compatible", u32), ("netns_dev", u64), ("netns_ino", u64),
        ("nr_jited_ksyms", u32), ("nr_jited_func_lens", u32),
        ("jited_ksyms", u64), ("jited_func_lens", u64),
        ("btf_id", u32), ("func_info_rec_size", u32), ("func_info", u64),
        ("nr_func_info", u32), ("nr_line_info", u32), ("line_info", u64), ("jited_line_info", u64),
        ("nr_jited_line_info", u32), ("line_info_rec_size", u32),
        ("jited_line_info_rec_size", u32), ("nr_prog_tags", u32), ("prog_tags", u64),
        ("run_time_ns", u64), ("run_cnt", u64), ("recursion_misses", u64),
    ]


class BpfMapInfo(ctypes.Structure):
    """struct bpf_map_info through name."""

    _fields_ = [
        ("type", u32), ("id", u32), ("key_size", u32), ("value_size", u32),
        ("max_entries", u32), ("map_flags", u32), ("name", _ObjName),
    ]


class BpfLinkInfo(ctypes.Structure):
    """struct bpf_link_info before its per-link-type union."""

    _fields_ = [("type", u32), ("id", u32), ("prog_id", u32)]


# ---- statfs(2) --------------------------------------------------------------------------


class Statfs(ctypes.Structure):
    """struct statfs of the 64-bit architectures (asm-generic, every word a long): what
    statfs(2) fills; ttcp reads f_type to tell a BPF file system from anything else."""

    _fields_ = [
        ("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long), ("f_blocks", ctypes.c_long),
        ("f_bfree", ctypes.c_long), ("f_bavail", ctypes.c_long), ("f_files", ctypes.c_long),
        ("f_ffree", ctypes.c_long), ("f_fsid", ctypes.c_int * 2), ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long), ("f_flags", ctypes.c_long), ("f_spare", ctypes.c_long * 4),
    ]


# ---- file handles and inotify ------------------------------------------------------------


class FileHandle(ctypes.Structure):
    """struct file_handle before its f_handle bytes (handle_bytes of them follow):
    what open_by_handle_at(2) takes."""

    _fields_ = [("handle_bytes", u32), ("handle_type", ctypes.c_int32)]


# ---- perf_event_open(2) and the ring buffer --------------------------------------------


class PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr through config1: 64 bytes, PERF_ATTR_SIZE_VER0, the
    smallest size every kernel accepts (it zero-fills the fields past it).
    sample_period, wakeup_events and config1 are one arm of their unions;
    _flags holds the disabled/inherit/... bit-fields."""

    _fields_ = [
        ("type", u32), ("size", u32), ("config", u64), ("sample_period", u64),
        ("sample_type", u64), ("read_format", u64), ("_flags", u64),
        ("wakeup_events", u32), ("bp_type", u32), ("config1", u64),
    ]


class InotifyEvent(ctypes.Structure):
    """struct inotify_event without its name: a read(2) of an inotify fd returns these
    back to back, each followed by `len` bytes of NUL-padded name."""

    _fields_ = [("wd", ctypes.c_int32), ("mask", u32), ("cookie", u32), ("len", u32)]


class RingbufHdr(ctypes.Structure):
    """The 8-byte header before each ring buffer record (struct bpf_ringbuf_hdr);
    len carries the RingbufFlag bits (ttcp.kernel.uapi)."""

    _fields_ = [("len", u32), ("pg_off", u32)]
