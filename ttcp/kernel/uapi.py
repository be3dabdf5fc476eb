"""Kernel UAPI numbers ttcp uses, each defined once (linux/bpf.h, perf_event.h, inotify.h).

IntEnums rather than bare ints so that an error message or a debugger shows
`ProgType.TRACING`, not 26. Values are fixed by the kernel ABI; the enum
members that have a counterpart in the kernel's BTF (`enum bpf_cmd`,
`enum bpf_prog_type`, ...) are checked against it by tests/kernel/test_layouts.py.
Pure: nothing here talks to the kernel.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag


class Cmd(IntEnum):
    """enum bpf_cmd: the first argument of bpf(2)."""

    MAP_CREATE = 0
    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    MAP_GET_NEXT_KEY = 4
    PROG_LOAD = 5
    OBJ_PIN = 6
    OBJ_GET = 7
    PROG_TEST_RUN = 10
    PROG_GET_NEXT_ID = 11
    MAP_GET_NEXT_ID = 12
    PROG_GET_FD_BY_ID = 13
    MAP_GET_FD_BY_ID = 14
    OBJ_GET_INFO_BY_FD = 15
    RAW_TRACEPOINT_OPEN = 17
    BTF_LOAD = 18
    MAP_FREEZE = 22
    MAP_LOOKUP_BATCH = 24
    MAP_DELETE_BATCH = 27
    LINK_CREATE = 28
    LINK_GET_FD_BY_ID = 30
    LINK_GET_NEXT_ID = 31
    ENABLE_STATS = 32


class MapType(IntEnum):
    """enum bpf_map_type."""

    HASH = 1
    ARRAY = 2
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    LRU_HASH = 9
    LPM_TRIE = 11
    RINGBUF = 27


class ProgType(IntEnum):
    """enum bpf_prog_type."""

    SOCKET_FILTER = 1
    KPROBE = 2
    TRACEPOINT = 5
    RAW_TRACEPOINT = 17
    TRACING = 26


class AttachType(IntEnum):
    """enum bpf_attach_type (expected_attach_type at load, attach_type at LINK_CREATE)."""

    NONE = 0  # BPF_CGROUP_INET_INGRESS: what "no attach type" reads as
    TRACE_RAW_TP = 23
    TRACE_FENTRY = 24
    TRACE_FEXIT = 25
    PERF_EVENT = 41


class LinkType(IntEnum):
    """enum bpf_link_type (bpf_link_info.type)."""

    RAW_TRACEPOINT = 1
    TRACING = 2
    PERF_EVENT = 7


class UpdateFlag(IntEnum):
    """MAP_UPDATE_ELEM flags."""

    ANY = 0
    NOEXIST = 1
    EXIST = 2


class MapFlag(IntFlag):
    """MAP_CREATE map_flags."""

    NO_PREALLOC = 1 << 0
    RDONLY_PROG = 1 << 7
    MMAPABLE = 1 << 10


class PseudoSrc(IntEnum):
    """The src register of an ldimm64 or call that the kernel resolves itself."""

    MAP_FD = 1  # ldimm64: imm is a map fd (also BPF_PSEUDO_CALL on a call)
    MAP_VALUE = 2  # ldimm64: map fd + offset into its value
    FUNC = 4  # ldimm64: address of a subprogram (callbacks)


PSEUDO_CALL = 1  # call: imm is a relative instruction offset to a subprogram


class RingbufFlag(IntFlag):
    """Bits of a ring buffer record header's len (BPF_RINGBUF_BUSY_BIT, BPF_RINGBUF_DISCARD_BIT)."""

    BUSY = 1 << 31  # reserved but not committed yet: the reader stops there
    DISCARD = 1 << 30  # committed as discarded: the reader skips it


class StatsType(IntEnum):
    RUN_TIME = 0


class Helper(IntEnum):
    """BPF helper ids (enum bpf_func_id) that ttcp's own code emits."""

    KTIME_GET_NS = 5
    SKB_LOAD_BYTES = 26
    RINGBUF_OUTPUT = 130
    RINGBUF_RESERVE = 131
    RINGBUF_SUBMIT = 132
    RINGBUF_DISCARD = 133
    KTIME_GET_COARSE_NS = 160
    LOOP = 181


class FidType(IntEnum):
    """enum fid_type (include/linux/exportfs.h): a file handle's type."""

    KERNFS = 0xFE  # a kernfs node by its 64-bit id: a cgroup by its cgroup id


NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3): the CLONE_NEW* type of a namespace file (linux/nsfs.h)
CLONE_NEWNET = 0x40000000

# perf_event_open(2)
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400  # _IO('$', 0)
PERF_EVENT_IOC_SET_BPF = 0x40042408  # _IOW('$', 8, __u32)

# linux/capability.h: the bits of CapEff in /proc/PID/status
CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24
CAP_PERFMON = 38
CAP_BPF = 39

BPF_OBJ_NAME_LEN = 16  # including the terminating NUL
BPF_LOG_STATS = 4  # log_level bit: the verifier's statistics ("processed N insns")

# linux/magic.h: statfs(2)'s f_type of a BPF file system (where OBJ_PIN can pin)
BPF_FS_MAGIC = 0xCAFE4A11

# linux/inotify.h: the events of a directory watch (the filters file)


class Inotify(IntFlag):
    """inotify event masks (#defines: BTF does not know them)."""

    ATTRIB = 0x4  # metadata changed (a chmod can make the file readable)
    CLOSE_WRITE = 0x8  # a writer closed it: a plain write is complete
    MOVED_FROM = 0x40
    MOVED_TO = 0x80  # renamed into the directory (`mv`, a ConfigMap's `..data` swap)
    CREATE = 0x100
    DELETE = 0x200
    DELETE_SELF = 0x400  # the watched directory itself
    MOVE_SELF = 0x800
    Q_OVERFLOW = 0x4000  # events were lost: look again
    IGNORED = 0x8000  # the watch is gone (its directory was removed)
    ONLYDIR = 0x01000000
    ISDIR = 0x40000000  # the entry an event names is a directory
