"""Object BTF as the kernel wants it: what clang leaves unset, filled in (pure).

clang emits each DATASEC of an object with size 0 and its variables at
offset 0; the ELF section and symbol tables know the real numbers. libbpf
fills them in while loading (btf_fixup_datasec in libbpf.c, not in its BTF
parser), and so does the loader here, through fixed_for_kernel().
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from ttcp.obj.btf import KIND_DATASEC, LINKAGE_EXTERN, LINKAGE_STATIC, Btf, Datasec, Var
from ttcp.obj.btf.header import bad
from ttcp.obj.btf.kinds import COMMON_SIZE, KINDS

_U32 = 0xFFFFFFFF
_ENTRY = KINDS[KIND_DATASEC].entry  # one DATASEC entry: type, offset, size
_LINKAGE_AT = COMMON_SIZE  # a VAR's linkage word follows the common header


def fixed_for_kernel(
    btf: Btf,
    section_sizes: dict[str, int],
    symbol_offsets: dict[str, int],
    hidden_symbols: Iterable[str] = (),
) -> bytes:
    """`btf`'s blob with what clang leaves unset filled in, as libbpf does.

    For each DATASEC whose size is 0 and whose name is in `section_sizes`:
    size := the ELF section size, and each global VAR's offset := its ELF
    symbol value (`symbol_offsets`, by VAR name; static and extern VARs are
    skipped, like libbpf). VARs named in `hidden_symbols`
    (STV_HIDDEN/STV_INTERNAL) become static. Every DATASEC's entries are
    then sorted by offset (the kernel requires ascending offsets). A
    DATASEC naming a section absent from `section_sizes` (".ksyms",
    ".kconfig", or one the ELF lacks) keeps its size and offsets: libbpf
    fills extern sections elsewhere, and the kernel will report what is
    wrong with it.
    """
    out = bytearray(btf.data)
    hidden = set(hidden_symbols)
    for tid in btf.own_ids():
        if btf.kind_of(tid) == KIND_DATASEC:  # decodes only what it fixes
            _fix_datasec(btf, out, btf.typed(tid, Datasec), section_sizes, symbol_offsets,
                         hidden)
    return bytes(out)


def _fix_datasec(btf: Btf, out: bytearray, sec: Datasec, section_sizes: dict[str, int],
                 symbol_offsets: dict[str, int], hidden: set[str]) -> None:
    off = btf.record_offset(sec.id)
    entries = [list(v) for v in sec.vars]
    if sec.name in section_sizes:
        fill = sec.size == 0  # a linked object already has sizes and offsets
        if fill:
            size = section_sizes[sec.name]
            if not 0 < size <= _U32:
                raise bad(f"DATASEC '{sec.name}': ELF section size {size} invalid")
            struct.pack_into("<I", out, off + 8, size)
        for i, entry in enumerate(entries):
            _fix_var(btf, out, sec.name, i, entry, fill, symbol_offsets, hidden)
    entries.sort(key=lambda e: e[1])
    for i, (vtype, voff, vsize) in enumerate(entries):
        struct.pack_into("<III", out, off + COMMON_SIZE + _ENTRY * i, vtype, voff, vsize)


def _fix_var(btf: Btf, out: bytearray, sec_name: str, i: int, entry: list[int], fill: bool,
             symbol_offsets: dict[str, int], hidden: set[str]) -> None:
    var = btf.type(entry[0])
    if not isinstance(var, Var):
        raise bad(f"DATASEC '{sec_name}': entry #{i} is {var.describe()}, not a VAR")
    if var.linkage in (LINKAGE_STATIC, LINKAGE_EXTERN):
        return
    if fill:
        if var.name not in symbol_offsets:
            raise bad(f"DATASEC '{sec_name}': no ELF symbol for VAR '{var.name}'")
        entry[1] = symbol_offsets[var.name] & _U32
    if var.name in hidden and var.id in btf.own_ids():
        struct.pack_into("<I", out, btf.record_offset(var.id) + _LINKAGE_AT, LINKAGE_STATIC)
