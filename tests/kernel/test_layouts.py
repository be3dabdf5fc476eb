"""ttcp's kernel layouts and numbers against the kernel's own BTF; the event ABI
against the shipped object's BTF.

Every field of ttcp.kernel.abi and every number of ttcp.kernel.uapi that the
running kernel describes in /sys/kernel/btf/vmlinux is compared with it,
read with ttcp's own BTF reader (no root needed), so an offset is checked by
the kernel's description rather than only by the kernel accepting it. A field
or enumerator newer than the oldest kernel ttcp supports (5.8) may be missing
there and is listed in NEWER; anything else missing fails. Numbers the kernel
keeps as #defines never reach BTF: NOT_IN_BTF says which.

The records ttcp decodes (struct event) and the filter values it reads and
writes (struct filter_stats) are compared with the BTF clang wrote into the
shipped object, item by item of their `struct` formats.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from collections.abc import Callable, Iterator
from enum import Enum, IntEnum, IntFlag

import pytest

from tests.support.btf_layout import Field, fields, format_items, shipped_struct, struct_id
from tests.support.kernel import kernel_btf
from ttcp.kernel import abi as kt
from ttcp.kernel import uapi
from ttcp.kernel.btf import VMLINUX_BTF
from ttcp.kernel.features import Probe
from ttcp.kernel.uapi import (
    AttachType,
    Cmd,
    Helper,
    LinkType,
    MapFlag,
    MapType,
    ProgType,
    RingbufFlag,
    StatsType,
)
from ttcp.obj.btf import KIND_ENUM, KIND_ENUM64, KIND_UNION, Btf
from ttcp.rtt import events, filter_table, filters, groups, histogram, table_rules

OLDEST_KERNEL = "5.8"  # ring buffers (README)

# Fields and enumerators that arrived after OLDEST_KERNEL, with the release
# that brought them: the only ones allowed to be missing from the kernel's BTF.
NEWER: dict[tuple[type, str], str] = {
    (kt.ProgLoadAttr, "attach_btf_obj_fd"): "5.11",
    (kt.ProgLoadAttr, "fd_array"): "5.14",
    (kt.ProgLoadAttr, "core_relo_cnt"): "5.17",
    (kt.ProgLoadAttr, "core_relos"): "5.17",
    (kt.ProgLoadAttr, "core_relo_rec_size"): "5.17",
    (kt.ProgLoadAttr, "log_true_size"): "6.4",
    (kt.BtfLoadAttr, "btf_log_true_size"): "6.4",
    (kt.ProgTestRunAttr, "flags"): "5.10",
    (kt.ProgTestRunAttr, "cpu"): "5.10",
    (kt.LinkCreateAttr, "target_btf_id"): "5.10",
    (kt.BpfProgInfo, "recursion_misses"): "5.12",
    (AttachType, "PERF_EVENT"): "5.15",
    (LinkType, "PERF_EVENT"): "5.15",
    (Helper, "KTIME_GET_COARSE_NS"): "5.11",
    (Helper, "LOOP"): "5.17",
    # #defines until the UAPI turned them into anonymous enums (5.10)
    **{(uapi.UpdateFlag, name): "5.10" for name in uapi.UpdateFlag.__members__},
    **{(MapFlag, name): "5.10" for name in MapFlag.__members__},
}

# ttcp.kernel.uapi numbers the kernel has as #defines or ioctl macros: BTF cannot check them.
NOT_IN_BTF = ("PseudoSrc", "PSEUDO_CALL", "PERF_FLAG_FD_CLOEXEC", "PERF_EVENT_IOC_ENABLE",
              "PERF_EVENT_IOC_SET_BPF", "BPF_OBJ_NAME_LEN", "BPF_LOG_STATS",
              "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE", "CAP_PERFMON", "CAP_BPF",  # linux/capability.h
              "BPF_FS_MAGIC",  # linux/magic.h
              "Inotify",  # linux/inotify.h
              "NS_GET_NSTYPE", "CLONE_NEWNET")  # linux/nsfs.h, linux/sched.h
# BPF_OBJ_NAME_LEN is still checked: it is the size of map_name, prog_name and the info names.

# Each bpf_attr layout and the member of union bpf_attr it describes: the
# member's name, or its first field names where the member is anonymous.
ATTR_MEMBER: dict[type[ctypes.Structure], str | tuple[str, ...]] = {
    kt.MapCreateAttr: ("map_type", "key_size"),
    kt.MapElemAttr: ("map_fd", "key", "value"),
    kt.MapBatchAttr: "batch",
    kt.ProgLoadAttr: ("prog_type", "insn_cnt"),
    kt.ObjPinAttr: ("pathname", "bpf_fd"),
    kt.ProgTestRunAttr: "test",
    kt.ObjIdAttr: ("start_id", "prog_id"),
    kt.ObjInfoAttr: "info",
    kt.RawTracepointOpenAttr: "raw_tracepoint",
    kt.BtfLoadAttr: ("btf", "btf_log_buf"),
    kt.LinkCreateAttr: "link_create",
    kt.EnableStatsAttr: "enable_stats",
}
OTHER_STRUCTS: dict[type[ctypes.Structure], str] = {
    kt.BpfProgInfo: "bpf_prog_info",
    kt.BpfMapInfo: "bpf_map_info",
    kt.BpfLinkInfo: "bpf_link_info",
    kt.PerfEventAttr: "perf_event_attr",
    kt.Statfs: "statfs",
    kt.FileHandle: "file_handle",
    kt.InotifyEvent: "inotify_event",
}

# ttcp enum -> (kernel enum, None for an anonymous one; the kernel's name of a member)
ENUMS: dict[type[IntEnum | IntFlag], tuple[str | None, Callable[[str], str]]] = {
    Cmd: ("bpf_cmd", "BPF_{}".format),
    MapType: ("bpf_map_type", "BPF_MAP_TYPE_{}".format),
    ProgType: ("bpf_prog_type", "BPF_PROG_TYPE_{}".format),
    AttachType: ("bpf_attach_type", lambda n: "BPF_CGROUP_INET_INGRESS" if n == "NONE" else f"BPF_{n}"),
    LinkType: ("bpf_link_type", "BPF_LINK_TYPE_{}".format),
    StatsType: ("bpf_stats_type", "BPF_STATS_{}".format),
    Helper: ("bpf_func_id", lambda n: f"BPF_FUNC_{n.lower()}"),
    uapi.FidType: ("fid_type", "FILEID_{}".format),
    uapi.UpdateFlag: (None, "BPF_{}".format),
    MapFlag: (None, "BPF_F_{}".format),
    RingbufFlag: (None, "BPF_RINGBUF_{}_BIT".format),
}


# ---- ttcp's side ----------------------------------------------------------------------------


def ttcp_fields(layout: type[ctypes.Structure | ctypes.Union]) -> Iterator[tuple[str, int, int]]:
    """(name, offset, size) of each field, the arms of anonymous unions included."""
    anonymous = getattr(layout, "_anonymous_", ())
    for name, ctype, *_ in layout._fields_:
        if name in anonymous:
            assert issubclass(ctype, ctypes.Union)
            for arm, *_ in ctype._fields_:
                yield arm, getattr(layout, arm).offset, getattr(layout, arm).size
        else:
            yield name, getattr(layout, name).offset, getattr(layout, name).size


def layout_problems(layout: type[ctypes.Structure], kernel: dict[str, Field]) -> list[str]:
    """Every disagreement between a ttcp layout and the kernel's struct.

    A named field must exist with the same byte offset and size (unless it is
    in NEWER and this kernel predates it). A "_" field stands for kernel
    members ttcp leaves at zero (bit-fields): each kernel member it touches
    must lie wholly inside it, and it must cover at least one.
    """
    problems = []
    for name, offset, size in ttcp_fields(layout):
        where = f"{layout.__name__}.{name} @{offset} size {size}"
        if name.startswith("_"):
            lo, hi = offset * 8, (offset + size) * 8
            touching = {n: f for n, f in kernel.items() if f.bit_offset < hi and f.bit_offset + f.bit_size > lo}
            if not touching:
                problems.append(f"{where}: no kernel member there")
            problems += [f"{where}: kernel member {n} {describe(f)} crosses its edge"
                         for n, f in touching.items() if f.bit_offset < lo or f.bit_offset + f.bit_size > hi]
        elif name not in kernel:
            if (layout, name) not in NEWER:
                problems.append(f"{where}: the kernel has no such field (and NEWER says {OLDEST_KERNEL} has it)")
        elif kernel[name].byte_range != (offset, size):
            problems.append(f"{where}: the kernel's is {describe(kernel[name])}")
    return problems


def describe(f: Field) -> str:
    if f.byte_range is None:
        return f"@bit {f.bit_offset} ({f.bit_size} bits)"
    return "@{} size {}".format(*f.byte_range)


def agree(problems: list[str]) -> None:
    assert not problems, "\n" + "\n".join(problems)


# ---- the kernel's side -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def kbtf() -> Btf:
    if not VMLINUX_BTF.exists():
        pytest.skip(Probe("vmlinux_btf", False, f"{VMLINUX_BTF} is missing").reason)
    return kernel_btf()


def attr_members(btf: Btf) -> list[tuple[str, dict[str, Field]]]:
    """(name, fields) of each member of union bpf_attr, in order."""
    (union,) = btf.ids_by_name("bpf_attr", KIND_UNION)
    return [(m.name, fields(btf, m.type)) for m in btf.type(union).members]


def kernel_attr(btf: Btf, layout: type[ctypes.Structure]) -> dict[str, Field]:
    """The fields of the bpf_attr member `layout` describes (exactly one must match)."""
    key = ATTR_MEMBER[layout]
    found = [f for name, f in attr_members(btf)
             if (name == key if isinstance(key, str) else not name and tuple(f)[:len(key)] == key)]
    assert len(found) == 1, f"{len(found)} members of union bpf_attr match {key} ({layout.__name__})"
    return found[0]


def enumerators(btf: Btf, tid: int) -> dict[str, int]:
    """An enum's values as unsigned numbers of its size (BTF may store them signed)."""
    t = btf.type(tid)
    return {v.name: v.value & ((1 << 8 * t.size) - 1) for v in t.values}


def kernel_enum(btf: Btf, name: str) -> dict[str, int]:
    for kind in (KIND_ENUM, KIND_ENUM64):
        for tid in btf.ids_by_name(name, kind):
            return enumerators(btf, tid)
    raise AssertionError(f"the kernel's BTF has no enum {name}")


@functools.cache
def anonymous_enumerators(btf: Btf) -> dict[str, int]:
    """Enumerators of the kernel's anonymous enums (the UAPI's flags): no name
    leads to them, so this walks every type once (~1.5 s for vmlinux)."""
    found: dict[str, int] = {}
    for tid in range(1, len(btf)):
        if btf.kind_of(tid) in (KIND_ENUM, KIND_ENUM64) and not btf.type(tid).name:
            found.update(enumerators(btf, tid))
    return found


# ---- bpf(2) and perf_event_open(2) layouts -----------------------------------------------------


@pytest.mark.matrix
@pytest.mark.parametrize("layout", list(ATTR_MEMBER), ids=lambda c: c.__name__)
def test_bpf_attr_layouts_match_the_kernel(kbtf: Btf, layout: type[ctypes.Structure]) -> None:
    agree(layout_problems(layout, kernel_attr(kbtf, layout)))


@pytest.mark.matrix
@pytest.mark.parametrize("layout", list(OTHER_STRUCTS), ids=lambda c: c.__name__)
def test_info_and_perf_layouts_match_the_kernel(kbtf: Btf, layout: type[ctypes.Structure]) -> None:
    tid = struct_id(kbtf, OTHER_STRUCTS[layout])
    assert tid is not None, f"the kernel's BTF has no struct {OTHER_STRUCTS[layout]}"
    agree(layout_problems(layout, fields(kbtf, tid)))


def test_ring_buffer_header_matches_the_kernel(kbtf: Btf) -> None:
    assert ctypes.sizeof(kt.RingbufHdr) == anonymous_enumerators(kbtf)["BPF_RINGBUF_HDR_SZ"]
    tid = struct_id(kbtf, "bpf_ringbuf_hdr")  # kernel-internal (kernel/bpf/ringbuf.c)
    if tid is None:
        pytest.skip(Probe("bpf_ringbuf_hdr_btf", False, "struct bpf_ringbuf_hdr is not in this kernel's "
                          "BTF (its size was checked against BPF_RINGBUF_HDR_SZ)").reason)
    agree(layout_problems(kt.RingbufHdr, fields(kbtf, tid)))


def test_every_command_has_a_layout_and_no_layout_has_a_dead_tail() -> None:
    assert set(kt.LAST_FIELD) == set(Cmd)
    assert set(ATTR_MEMBER) == {layout for layout, _ in kt.LAST_FIELD.values()}
    for layout in ATTR_MEMBER:
        last = {field for lay, field in kt.LAST_FIELD.values() if lay is layout}
        assert list(ttcp_fields(layout))[-1][0] in last, f"{layout.__name__}: fields past every command's end"


def test_attr_sizes_end_at_the_last_field() -> None:
    """Spot checks that tie the derived sizes to the kernel's LAST_FIELD rule."""
    assert kt.ATTR_SIZE[Cmd.MAP_LOOKUP_ELEM] == 32
    assert kt.ATTR_SIZE[Cmd.MAP_GET_NEXT_KEY] == 24  # next_key, not flags
    assert kt.ATTR_SIZE[Cmd.MAP_FREEZE] == 4
    assert kt.ATTR_SIZE[Cmd.PROG_LOAD] == 144  # through log_true_size (6.4)
    assert kt.ATTR_SIZE[Cmd.RAW_TRACEPOINT_OPEN] == 12  # not sizeof(): no tail padding


def test_newer_list_names_real_fields_and_members() -> None:
    for owner, name in NEWER:
        if issubclass(owner, ctypes.Structure):
            assert name in {n for n, *_ in ttcp_fields(owner)}, (owner, name)
        else:
            assert issubclass(owner, Enum) and name in owner.__members__, (owner, name)


# ---- numbers ---------------------------------------------------------------------------------------


# In the kernel matrix only the named enums: the anonymous ones (flags) take a walk
# over every type, minutes under emulation, and UAPI numbers never change between
# kernels; the host's run checks them all.
@pytest.mark.parametrize("enum", [pytest.param(e, marks=pytest.mark.matrix) if kernel is not None else e
                                  for e, (kernel, _) in ENUMS.items()], ids=lambda e: e.__name__)
def test_uapi_numbers_match_the_kernel(kbtf: Btf, enum: type[IntEnum | IntFlag]) -> None:
    kernel_name, member_name = ENUMS[enum]
    kernel = anonymous_enumerators(kbtf) if kernel_name is None else kernel_enum(kbtf, kernel_name)
    checked = 0
    for member in enum:
        assert member.name is not None
        name = member_name(member.name)
        if name not in kernel:
            assert (enum, member.name) in NEWER, f"{enum.__name__}.{member.name}: the kernel has no {name}"
            continue
        assert kernel[name] == member.value, f"{enum.__name__}.{member.name} vs {name}"
        checked += 1
    assert checked or all((enum, m.name) in NEWER for m in enum)


@pytest.mark.matrix
def test_perf_type_id_matches_the_kernel(kbtf: Btf) -> None:
    assert kernel_enum(kbtf, "perf_type_id")["PERF_TYPE_TRACEPOINT"] == uapi.PERF_TYPE_TRACEPOINT


def test_uapi_numbers_outside_btf_are_the_listed_ones() -> None:
    """Whatever ttcp.kernel.uapi defines is either checked above or listed in NOT_IN_BTF."""
    checked = {e.__name__ for e in ENUMS} | {"PERF_TYPE_TRACEPOINT"}
    public = {n for n in vars(uapi) if n[0].isupper() and n not in ("IntEnum", "IntFlag")}
    assert public - checked == set(NOT_IN_BTF)


# ---- the event ABI (the shipped object's BTF) ---------------------------------------------------


def format_problems(fmt: str, size: int, c_fields: dict[str, Field]) -> list[str]:
    """Every disagreement between a `struct` format and a C struct: each member
    has an item at its offset of its size (a pad member an "x"), each item a
    member, integers agree on signedness, and the sizes agree."""
    problems = [] if struct.calcsize(fmt) == size else [f"{fmt!r} is {struct.calcsize(fmt)} bytes, not {size}"]
    items = {offset: (isize, code) for offset, isize, code in format_items(fmt)}
    members = {f.byte_range for f in c_fields.values()}
    for name, f in c_fields.items():
        if f.byte_range is None or f.byte_range[0] not in items:
            problems.append(f"member {name} {describe(f)} has no item at its offset in {fmt!r}")
            continue
        isize, code = items[f.byte_range[0]]
        if isize != f.byte_range[1]:
            problems.append(f"member {name} @{f.byte_range[0]} is {f.byte_range[1]} bytes, the item {code!r} {isize}")
        elif f.signed is not None and code != "x" and code.islower() != f.signed:
            problems.append(f"member {name} is {'' if f.signed else 'un'}signed, the item {code!r} is not")
    problems += [f"item {code!r} @{offset} is no member" for offset, (isize, code) in items.items()
                 if (offset, isize) not in members and code != "x"]
    return problems


def test_event_format_matches_struct_event() -> None:
    size, c_fields = shipped_struct("event")
    agree(format_problems(events._EVENT.format, size, c_fields))
    assert events.EVENT_SIZE == size


@pytest.mark.parametrize("c_struct,fmt", [
    ("host_key", filters.HOST_KEY.format),
    ("net_key", filters.NET_KEY.format),
    ("filter_value", filters.VALUE.format),
    ("workload", filters.WORKLOAD.format),
    ("filter_text", table_rules.TEXT.format),
    ("hist", histogram.HIST.format),
    ("config", table_rules.CONFIG.format),
    # struct filter_stats: its head, then two struct hist (compared above, whole here)
    ("filter_stats", f"{filter_table.STATS_HEAD.format}{histogram.HIST.size}s{histogram.HIST.size}s"),
    ("group_key", groups.GROUP_KEY.format),
    ("group", f"{groups.GROUP_HEAD.format}{histogram.HIST.size}s{histogram.HIST.size}s"),
    ("group_stat", groups.GROUP_STAT.format),
])
def test_table_formats_match_the_program_structs(c_struct: str, fmt: str) -> None:
    size, c_fields = shipped_struct(c_struct)
    agree(format_problems(fmt, size, c_fields))


def test_stats_offsets_follow_struct_filter_stats() -> None:
    size, c_fields = shipped_struct("filter_stats")
    assert filter_table.STATS_SIZE == size
    assert c_fields["closed"].byte_range == (filter_table._CLOSED_AT, histogram.HIST.size)
    assert c_fields["sampled"].byte_range == (filter_table._SAMPLED_AT, histogram.HIST.size)
    assert shipped_struct("hist")[1]["buckets"].byte_range[1] == 8 * histogram.BUCKETS


def test_group_offsets_follow_struct_group() -> None:
    size, c_fields = shipped_struct("group")
    assert groups.GROUP_SIZE == size
    assert c_fields["closed"].byte_range == (groups.GROUP_CLOSED_AT, histogram.HIST.size)
    assert c_fields["sampled"].byte_range == (groups.GROUP_SAMPLED_AT, histogram.HIST.size)
