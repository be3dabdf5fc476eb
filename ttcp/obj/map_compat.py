"""Whether an existing map can stand in for a map spec (pure).

A pinned map outlives the ttcp that created it, so the next one must check it
before use, the way cilium/ebpf's MapSpec.Compatible does: type, key size,
value size, flags and max entries must all be what the spec asks. A map that
differs only in max entries holds data of the right shape (its entries can
move to a map of the new size); any other difference means another program
or another ttcp version made it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

from ttcp.errors import TtcpError
from ttcp.kernel.uapi import MapFlag, MapType
from ttcp.obj.map_specs import MapSpec


class MapInfoLike(Protocol):
    """What the kernel says of a map (syscalls.MapInfo)."""

    @property
    def type(self) -> int: ...

    @property
    def key_size(self) -> int: ...

    @property
    def value_size(self) -> int: ...

    @property
    def map_flags(self) -> int: ...

    @property
    def max_entries(self) -> int: ...


@dataclass(frozen=True)
class MapShape:
    """What MAP_CREATE fixes for good and OBJ_GET_INFO_BY_FD reports back."""

    map_type: int
    key_size: int
    value_size: int
    flags: int
    max_entries: int

    @classmethod
    def of(cls, spec: MapSpec) -> MapShape:
        return cls(spec.map_type, spec.key_size, spec.value_size, spec.flags, spec.max_entries)

    @classmethod
    def of_info(cls, info: MapInfoLike) -> MapShape:
        return cls(info.type, info.key_size, info.value_size, info.map_flags, info.max_entries)


_LABELS = {"map_type": "type", "key_size": "key size", "value_size": "value size", "flags": "flags",
           "max_entries": "max entries"}


def _show(field: str, value: int) -> str:
    if field == "map_type":
        return MapType(value).name if value in MapType._value2member_map_ else str(value)
    if field == "flags":
        names = [f.name for f in MapFlag if value & f and f.name]
        unknown = value & ~sum(MapFlag)
        return "|".join(names + ([hex(unknown)] if unknown else [])) or "0"
    return str(value)


@dataclass(frozen=True)
class Difference:
    """One property in which a map is not what the spec asks."""

    field: str  # a MapShape field
    wanted: int
    found: int

    def __str__(self) -> str:
        return (f"{_LABELS[self.field]} {_show(self.field, self.found)} "
                f"(wanted {_show(self.field, self.wanted)})")


def differences(wanted: MapShape, found: MapShape) -> list[Difference]:
    """Every property that differs, in MapShape's order (max entries last)."""
    return [Difference(f.name, getattr(wanted, f.name), getattr(found, f.name)) for f in fields(MapShape)
            if getattr(wanted, f.name) != getattr(found, f.name)]


def only_size_differs(diffs: list[Difference]) -> bool:
    """True when the map holds data of the wanted shape in a table of another size."""
    return bool(diffs) and all(d.field == "max_entries" for d in diffs)


class IncompatibleMapError(TtcpError):
    """An existing map offered for a spec it does not fit."""

    def __init__(self, what: str, diffs: list[Difference]) -> None:
        self.what, self.diffs = what, diffs
        super().__init__(f"{what} differs from what ttcp needs: " + ", ".join(map(str, diffs)))
