"""Maps made outside any object, and a struct codec, for the tests of ttcp.maps.

The product's maps come from its object (ttcp.elf_loader.Collection) and take
raw bytes; only the tests make maps of their own and read them as numbers.
"""

from __future__ import annotations

import struct
from typing import Any, TypeVar

from ttcp import syscalls
from ttcp.kernel.uapi import MapType
from ttcp.maps import Codec, HashMap, PerCpuArray

K = TypeVar("K")
V = TypeVar("V")


class StructCodec:
    """A `struct` format; one-field formats encode/decode a bare value."""

    def __init__(self, fmt: str) -> None:
        self._struct = struct.Struct(fmt)
        self.format = fmt
        self.size = self._struct.size
        self._single = len(self._struct.unpack(bytes(self.size))) == 1

    def encode(self, obj: Any) -> bytes:
        return self._struct.pack(obj) if self._single else self._struct.pack(*obj)

    def decode(self, data: bytes) -> Any:
        fields = self._struct.unpack(data)
        return fields[0] if self._single else fields


def new_hash(key_codec: Codec[K], value_codec: Codec[V], max_entries: int, name: str = "", *,
             flags: int = 0) -> HashMap[K, V]:
    """A new BPF_MAP_TYPE_HASH, owned by the view (closing it closes the map)."""
    fd = syscalls.map_create(MapType.HASH, key_codec.size, value_codec.size, max_entries, flags=flags, name=name)
    return HashMap(fd, key_codec, value_codec, max_entries, name)


def new_percpu_array(value_size: int, max_entries: int, name: str = "") -> PerCpuArray:
    """A new BPF_MAP_TYPE_PERCPU_ARRAY, owned by the view."""
    fd = syscalls.map_create(MapType.PERCPU_ARRAY, 4, value_size, max_entries, name=name)
    return PerCpuArray(fd, value_size, max_entries, name)
