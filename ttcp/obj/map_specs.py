"""Map definitions of a BPF object, read from its BTF (pure).

clang encodes each `struct { __uint(type, ...); __type(key, ...); } name
SEC(".maps")` as a VAR in the ".maps" DATASEC whose struct members carry
the values in their types: `__uint(x, N)` is `int (*x)[N]`, `__type(x, T)`
is `T *x`. Global data sections (.rodata, .data, .bss) become one-element
array maps, as libbpf does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ttcp.errors import FormatError
from ttcp.kernel.uapi import MapFlag, MapType
from ttcp.obj.btf import KIND_DATASEC, Array, Btf, Datasec, Ptr, Struct, Var
from ttcp.obj.elf import BpfObject

_INT_FIELDS = ("type", "max_entries", "map_flags", "key_size", "value_size", "numa_node", "pinning")
_MAX_MAP_ENTRIES = 1 << 32


@dataclass(frozen=True)
class MapSpec:
    """What MAP_CREATE needs for one map, plus initial data for global data."""

    name: str
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    btf_key_type_id: int = 0
    btf_value_type_id: int = 0
    initial: bytes | None = None
    freeze: bool = False

    @property
    def kernel_name(self) -> str:
        """The kernel keeps 15 characters of [A-Za-z0-9_.]."""
        clean = "".join(c if c.isalnum() or c in "_." else "_" for c in self.name)
        return clean[:15]

    def with_max_entries(self, n: int) -> MapSpec:
        if not 0 < n < _MAX_MAP_ENTRIES:
            raise FormatError("map", f"{self.name}: max_entries {n} out of range")
        return replace(self, max_entries=n)


def map_specs(obj: BpfObject, btf: Btf) -> dict[str, MapSpec]:
    """All maps of the object: BTF-defined ones, then global data."""
    specs: dict[str, MapSpec] = {}
    if obj.map_symbols:
        for name, type_id in _maps_section_vars(btf).items():
            if name not in obj.map_symbols:
                raise FormatError("BTF", f".maps variable {name!r} has no ELF symbol")
            specs[name] = _btf_map(btf, name, type_id)
        missing = set(obj.map_symbols) - set(specs)
        if missing:
            raise FormatError("BTF", f"maps {sorted(missing)} have no BTF definition "
                                     "(legacy bpf_map_def maps are not supported)")
    for sec in obj.data_sections.values():
        if sec.size == 0:
            continue
        specs[sec.name] = MapSpec(
            name=sec.name, map_type=MapType.ARRAY, key_size=4, value_size=sec.size,
            max_entries=1, flags=MapFlag.RDONLY_PROG if sec.readonly else 0,
            initial=sec.data, freeze=sec.readonly,
        )
    return specs


def _maps_section_vars(btf: Btf) -> dict[str, int]:
    """VAR name -> the VAR's type id, for every variable in DATASEC .maps."""
    ids = btf.ids_by_name(".maps", KIND_DATASEC)
    if not ids:
        raise FormatError("BTF", "object has a .maps section but no .maps DATASEC in its BTF")
    out: dict[str, int] = {}
    for var in btf.typed(ids[0], Datasec).vars:
        vt = btf.type(var.type)
        if not isinstance(vt, Var):
            raise FormatError("BTF", f".maps DATASEC entry {var.type} is not a VAR")
        out[vt.name] = vt.type
    return out


def _btf_map(btf: Btf, name: str, type_id: int) -> MapSpec:
    st = btf.type(btf.skip_mods_and_typedefs(type_id))
    if not isinstance(st, Struct):
        raise FormatError("BTF", f"map {name!r}: definition is not a struct")
    ints: dict[str, int] = {}
    key_id = value_id = 0
    for m in st.members:
        if m.name in _INT_FIELDS:
            ints[m.name] = _uint_value(btf, name, m.name, m.type)
        elif m.name in ("key", "value"):
            ptr = btf.type(m.type)
            if not isinstance(ptr, Ptr):
                raise FormatError("BTF", f"map {name!r}: {m.name} must be a pointer (__type)")
            if m.name == "key":
                key_id = ptr.type
            else:
                value_id = ptr.type
        else:
            raise FormatError("BTF", f"map {name!r}: unsupported attribute {m.name!r}")
    if "type" not in ints:
        raise FormatError("BTF", f"map {name!r}: no type")
    key_size = _sized(btf, name, "key", key_id, ints.get("key_size"))
    value_size = _sized(btf, name, "value", value_id, ints.get("value_size"))
    return MapSpec(
        name=name, map_type=ints["type"], key_size=key_size, value_size=value_size,
        max_entries=ints.get("max_entries", 0), flags=ints.get("map_flags", 0),
        btf_key_type_id=key_id, btf_value_type_id=value_id,
    )


def _uint_value(btf: Btf, name: str, field: str, type_id: int) -> int:
    """`__uint(field, N)` is encoded as a pointer to an array of N ints."""
    ptr = btf.type(type_id)
    arr = btf.type(ptr.type) if isinstance(ptr, Ptr) else None
    if not isinstance(arr, Array):
        raise FormatError("BTF", f"map {name!r}: {field} is not an __uint() value")
    return arr.nelems


def _sized(btf: Btf, name: str, what: str, type_id: int, explicit: int | None) -> int:
    if type_id:
        size = btf.resolve_size(type_id)
        if explicit is not None and explicit != size:
            raise FormatError("BTF", f"map {name!r}: {what}_size {explicit} disagrees with "
                                     f"sizeof {what} type ({size})")
        return size
    return explicit or 0
