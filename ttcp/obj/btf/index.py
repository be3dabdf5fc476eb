"""Where each type record of a BTF blob starts, found lazily.

Records have kind-dependent lengths, so type id N can only be found by
walking records 1..N-1. vmlinux has ~126k of them, so the walk goes only as
far as the highest id (or byte offset) asked about so far, and keeps every
STRIDE-th record offset as a checkpoint; a regular expression steps over
runs of STRIDE well-formed records in C, and Python steps only over the
records it does not spell out (vlen of REGEX_MAX_VLEN or more). On the
development VM a full vmlinux walk takes ~20 ms, compiling the regex ~5 ms.
"""

from __future__ import annotations

import re
import struct
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable
from functools import lru_cache

from ttcp.errors import FormatError
from ttcp.obj.btf.header import Blob, bad
from ttcp.obj.btf.kinds import COMMON_SIZE, KIND_MAX, KIND_NAMES, KINDS

STRIDE = 32  # records between checkpoints when the regex walker is used
REGEX_MIN_BYTES = 1 << 16  # smaller type sections are walked in Python, stride 1
REGEX_MAX_VLEN = 48  # vlen values the walk regex spells out; bigger → Python
INFO_RESERVED = 0x60FF0000  # info bits 16-23 and 29-30 must be zero

_SIZE_CACHE: dict[int, int] = {}
_Matcher = Callable[[Blob, int, int], re.Match[bytes] | None]


def record_size(info: int, type_id: int) -> int:
    """Size in bytes of the record whose info word is `info`."""
    size = _SIZE_CACHE.get(info)
    if size is not None:
        return size
    if info & INFO_RESERVED:
        raise bad(f"type [{type_id}]: reserved bits set in info 0x{info:08x}")
    number = (info >> 24) & 0x1F
    if not 0 < number <= KIND_MAX:
        raise bad(f"type [{type_id}]: unknown kind {number}")
    kind = KINDS[number]
    size = COMMON_SIZE + kind.extra + kind.entry * (info & 0xFFFF)
    if len(_SIZE_CACHE) < 1 << 16:
        _SIZE_CACHE[info] = size
    return size


def _kind_class(kinds: Iterable[int]) -> bytes:
    """Regex class matching the info word's top byte for `kinds`, kflag 0 or 1."""
    return b"[" + b"".join(re.escape(bytes([k, k | 0x80])) for k in kinds) + b"]"


@lru_cache(maxsize=1)
def _walk_regex() -> re.Pattern[bytes]:
    """A pattern matching exactly STRIDE consecutive well-formed records.

    A record is name_off, info (vlen_lo, vlen_hi, 0, kind|kflag), size/type,
    then kind-specific bytes; which bytes come where does not matter for
    length, so the extra bytes are consumed right after the kind byte. For
    each vlen below REGEX_MAX_VLEN, the kinds that may have it are grouped
    by how many bytes follow; other records do not match and the caller
    steps over them in Python.
    """
    branches = []
    for vlen in range(REGEX_MAX_VLEN):
        by_length: dict[int, list[int]] = {}
        for kind in KINDS[1:]:
            if vlen <= kind.max_vlen:
                by_length.setdefault(kind.extra + kind.entry * vlen, []).append(kind.number)
        alts = [_kind_class(kinds) + (b".{%d}" % length if length else b"")
                for length, kinds in sorted(by_length.items())]
        branches.append(re.escape(bytes([vlen])) + b"\\x00\\x00(?:" + b"|".join(alts) + b")")
    record = b".{4}(?:" + b"|".join(branches) + b").{4}"
    return re.compile(b"(?s)(?>" + record + b"){%d}" % STRIDE)


def _next_record(data: Blob, pos: int, end: int, type_id: int) -> int:
    """Offset just past the record at `pos`, checking that it fits."""
    if pos + COMMON_SIZE > end:
        raise bad(f"type [{type_id}]: header truncated at the end of the type section")
    (info,) = struct.unpack_from("<I", data, pos + 4)
    nxt = pos + record_size(info, type_id)
    if nxt > end:
        raise bad(
            f"type [{type_id}] ({KIND_NAMES[(info >> 24) & 0x1F]}, vlen {info & 0xFFFF}) "
            "runs past the end of the type section"
        )
    return nxt


class TypeIndex:
    """Type id ↔ record offset for the type section [start, end) of `data`,
    whose first record has id `first_id` (1, or the base's count for split BTF).

    A malformed record stops the walk for good: records before its chunk
    stay usable, anything after raises the same FormatError again.
    """

    def __init__(self, data: Blob, start: int, end: int, first_id: int) -> None:
        self._data = data
        self._start = start
        self._end = end
        self.first_id = first_id
        # checkpoints[j] = offset of local record j * stride; records
        # [0, walked) are known, the next one starts at _pos.
        self._checkpoints = array("q")
        self._stride = 1
        self._match: _Matcher | None = None
        if end - start >= REGEX_MIN_BYTES:
            self._stride = STRIDE
            self._match = _walk_regex().match
        self._walked = 0
        self._pos = start
        self.done = False
        self._error: FormatError | None = None

    @property
    def end_id(self) -> int:
        """The first id past the records walked so far."""
        return self.first_id + self._walked

    def count(self) -> int:
        """Number of records (walks them all on first use)."""
        if not self.done:
            self._walk()
        return self._walked

    def has(self, type_id: int) -> bool:
        """Whether local type `type_id` (>= first_id) exists, walking as needed."""
        local = type_id - self.first_id
        if local >= self._walked and not self.done:
            self._walk(index=local)
        return local < self._walked

    def _walk(self, index: int | None = None, pos: int | None = None) -> None:
        """Walk records until local record `index` is known, the walk passes
        byte `pos`, or (both None) the end; checks the framing on the way."""
        if self._error is not None:
            raise self._error
        data, end, stride, match = self._data, self._end, self._stride, self._match
        checkpoints = self._checkpoints
        at, walked = self._pos, self._walked
        try:
            while at < end:
                if index is not None and walked > index:
                    return
                if pos is not None and at > pos:
                    return
                found = match(data, at, end) if match is not None else None
                if found is not None:
                    nxt, count = found.end(), walked + stride
                else:
                    nxt, count = at, walked
                    while count < walked + stride and nxt < end:
                        nxt = _next_record(data, nxt, end, self.first_id + count)
                        count += 1
                checkpoints.append(at)
                at, walked = nxt, count
            self.done = True
        except FormatError as err:
            self._error = err
            raise
        finally:
            self._pos, self._walked = at, walked

    def offset(self, type_id: int) -> int:
        """Byte offset in the blob of the record of `type_id` (known to exist)."""
        j, steps = divmod(type_id - self.first_id, self._stride)
        pos = self._checkpoints[j]
        data = self._data
        for _ in range(steps):
            (info,) = struct.unpack_from("<I", data, pos + 4)
            pos += record_size(info, type_id)
        return pos

    def id_at(self, pos: int) -> int | None:
        """The type id whose record starts at byte `pos`, if one does."""
        if pos >= self._pos and not self.done:
            self._walk(pos=pos)
        j = bisect_right(self._checkpoints, pos) - 1
        if j < 0:
            return None
        index = j * self._stride
        cur = self._checkpoints[j]
        data = self._data
        while cur < pos and index < self._walked:
            (info,) = struct.unpack_from("<I", data, cur + 4)
            cur += record_size(info, self.first_id + index)
            index += 1
        if cur == pos and index < self._walked:
            return self.first_id + index
        return None

    def named(self, name_off: int, kinds: frozenset[int] | None) -> list[int]:
        """Ids whose record has name offset `name_off` (and a kind in `kinds`):
        one bytes.find pass over the type section, walking only as far as
        the last hit."""
        out: list[int] = []
        data, start, end = self._data, self._start, self._end
        needle = struct.pack("<I", name_off)
        pos = data.find(needle, start, end)
        while pos >= 0:
            if (pos - start) % 4 == 0 and pos + COMMON_SIZE <= end:
                (info,) = struct.unpack_from("<I", data, pos + 4)
                kind = (info >> 24) & 0x1F
                plausible = not info & INFO_RESERVED and 1 <= kind <= KIND_MAX
                if plausible and (kinds is None or kind in kinds):
                    tid = self.id_at(pos)
                    if tid is not None:
                        out.append(tid)
            pos = data.find(needle, pos + 1, end)
        return out
