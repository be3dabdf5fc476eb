"""ttcp.obj.btf on the running kernel's BTF: the structs ttcp reads, found and
walked (the pure cases are tests/unit/test_btf.py's)."""

from __future__ import annotations

import os
import time

import pytest

from ttcp.obj import btf as B
from ttcp.obj.btf import Btf

VMLINUX = "/sys/kernel/btf/vmlinux"


@pytest.mark.skipif(not os.path.exists(VMLINUX), reason="no kernel BTF")
def test_vmlinux_lookups_and_timing() -> None:
    start = time.perf_counter()
    with open(VMLINUX, "rb") as f:
        data = f.read()
    btf = Btf.parse(data)
    names = ["sock", "sock_common", "tcp_sock", "inet_sock", "inet_connection_sock",
             "task_struct", "sk_buff", "in6_addr", "socket", "file", "net", "tcphdr",
             "iphdr", "request_sock", "minmax"]
    members = 0
    for name in names:
        (tid,) = btf.ids_by_name(name, B.KIND_STRUCT)
        for m in btf.type(tid).members:
            btf.type(btf.skip_mods_and_typedefs(m.type))
            members += 1
    elapsed = time.perf_counter() - start
    (sc,) = btf.ids_by_name("sock_common", B.KIND_STRUCT)
    family = next(m for m in btf.type(sc).members if m.name == "skc_family")
    assert family.bit_offset == 16 * 8
    assert btf.resolve_size(family.type) == 2
    (td,) = btf.ids_by_name("btf_trace_tcp_destroy_sock", B.KIND_TYPEDEF)
    assert btf.type(btf.type(td).type).kind == B.KIND_PTR
    assert btf.func_by_name("tcp_close") is not None
    print(f"\nvmlinux: read+parse+{len(names)} struct lookups+{members} members: "
          f"{elapsed * 1000:.1f} ms; {len(btf)} types")
