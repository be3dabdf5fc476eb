"""The BTF header: magic, version and where the type and string sections lie.

.BTF.ext starts with the same magic/version/flags/hdr_len prefix, so its
reader shares check_header().
"""

from __future__ import annotations

import mmap
import struct
from typing import NamedTuple

from ttcp.errors import FormatError

BTF_MAGIC = 0xEB9F
HEADER_SIZE = 24

_WHAT = "BTF"
_PREFIX = struct.Struct("<HBBI")  # magic, version, flags, hdr_len

Blob = bytes | bytearray | mmap.mmap  # a blob is kept as passed, an mmap included


def bad(message: str) -> FormatError:
    """The error every malformed BTF blob raises."""
    return FormatError(_WHAT, message)


def check_header(data: Blob, min_hdr_len: int, what: str, unit: str) -> int:
    """Validate the magic/version/flags/hdr_len prefix that .BTF and .BTF.ext
    share; returns hdr_len. The caller has checked that 8 bytes exist."""
    magic, version, flags, hdr_len = _PREFIX.unpack_from(data, 0)
    if magic == 0x9FEB:
        raise FormatError(what, f"big-endian {what} is not supported")
    if magic != BTF_MAGIC:
        raise FormatError(what, f"bad magic 0x{magic:04x}, expected 0x{BTF_MAGIC:04x}")
    if version != 1:
        raise FormatError(what, f"unsupported version {version}")
    if flags:
        raise FormatError(what, f"unsupported flags 0x{flags:02x}")
    if hdr_len < min_hdr_len or hdr_len > len(data):
        raise FormatError(what, f"header length {hdr_len} invalid for a {len(data)}-byte {unit}")
    return int(hdr_len)


class Layout(NamedTuple):
    """Byte ranges [start, end) of the two sections within the blob."""

    types_start: int
    types_end: int
    strings_start: int
    strings_end: int


def read_header(data: Blob) -> Layout:
    """Check a BTF header and locate its sections (their contents are the
    string table's and the type index's to check)."""
    if len(data) < HEADER_SIZE:
        raise bad(f"truncated header: {len(data)} bytes, need {HEADER_SIZE}")
    _, _, _, hdr_len, type_off, type_len, str_off, str_len = (
        struct.unpack_from("<HBBIIIII", data, 0)
    )
    check_header(data, HEADER_SIZE, _WHAT, "blob")
    if type_off % 4 or type_len % 4:
        raise bad(f"type section (off {type_off}, len {type_len}) not 4-byte aligned")
    if type_off + type_len > str_off:
        raise bad(
            f"type section (off {type_off}, len {type_len}) overlaps the string "
            f"section at {str_off}"
        )
    if hdr_len + str_off + str_len > len(data):
        raise bad(
            f"string section (off {str_off}, len {str_len}) ends past the end of "
            f"the {len(data)}-byte blob"
        )
    types_start = hdr_len + type_off
    strings_start = hdr_len + str_off
    return Layout(types_start, types_start + type_len, strings_start, strings_start + str_len)
