"""The string section of a BTF blob: names by offset, and prefix searches.

A split BTF's offsets continue after its base's string section; offsets
below that are the base's strings.
"""

from __future__ import annotations

from ttcp.obj.btf.header import Blob, bad


class StringTable:
    """NUL-terminated strings at [start, end) of `data`, decoded on demand."""

    def __init__(self, data: Blob, start: int, end: int, base: StringTable | None) -> None:
        self._data = data
        self._start = start
        self._end = end
        self.base = base
        self._first = base.size if base is not None else 0  # offset of our first byte
        self._cache: dict[int, str] = {}
        if start == end:
            if base is None:
                raise bad("empty string section")
            return
        if data[end - 1] != 0:
            raise bad("string section does not end with a NUL byte")
        if base is None and data[start] != 0:
            raise bad("string section does not start with the empty string")

    @property
    def size(self) -> int:
        """Bytes of strings, the base's included: the first offset past them."""
        return self._first + (self._end - self._start)

    def get(self, offset: int) -> str:
        """The string at `offset`; invalid UTF-8 comes back backslash-escaped."""
        cached = self._cache.get(offset)
        if cached is not None:
            return cached
        if offset < self._first and self.base is not None:
            return self.base.get(offset)
        local = offset - self._first
        if not 0 <= local < self._end - self._start:
            raise bad(f"string offset {offset} past the end of the string section "
                      f"({self.size} bytes)")
        start = self._start + local
        end = self._data.find(b"\0", start, self._end)
        if end < 0:  # unreachable after the NUL check; kept for mmap edits
            raise bad(f"string at offset {offset} is not NUL-terminated")
        text = bytes(self._data[start:end]).decode("utf-8", "backslashreplace")
        self._cache[offset] = text
        return text

    def starting_with(self, prefix: bytes) -> list[tuple[int, bytes]]:
        """(offset, next 3 bytes) of every string, base's first, that starts with
        `prefix`: one bytes.find pass per section. The 3 bytes ("\\0" when
        the string ends there) tell a whole match from a "___flavor"."""
        out = self.base.starting_with(prefix) if self.base is not None else []
        data, start, end = self._data, self._start, self._end
        n = len(prefix)
        if data[start:start + n] == prefix:
            out.append((self._first, self._tail(start + n)))
        needle = b"\0" + prefix
        pos = data.find(needle, start, end)
        while pos >= 0:
            out.append((pos + 1 - start + self._first, self._tail(pos + 1 + n)))
            pos = data.find(needle, pos + 1, end)
        return out

    def _tail(self, pos: int) -> bytes:
        tail = bytes(self._data[pos:min(pos + 3, self._end)])
        return b"\0" if tail[:1] == b"\0" else tail
