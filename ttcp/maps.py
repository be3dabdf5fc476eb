"""Typed views over BPF maps and a BPF ring-buffer reader.

Pure Python over `ttcp.syscalls`: keys and values go through codecs so callers
deal in addresses and records rather than raw bytes, and kernel errors that a
caller must handle (map full, key exists) get their own exception types. The
views take maps that exist (an object's, a pinned one); the agent reads the
ring with RingBuffer.read_runs, the other two readers say what they are for.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import mmap
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Protocol, TypeVar

from ttcp import syscalls
from ttcp.errors import BpfError, FormatError
from ttcp.kernel import features
from ttcp.kernel.abi import RingbufHdr
from ttcp.kernel.uapi import MapType, RingbufFlag, UpdateFlag

if TYPE_CHECKING:  # typing.Self is 3.11+; only type checkers need it
    from typing import Self

K = TypeVar("K")
V = TypeVar("V")


class MapFullError(BpfError):
    """A hash map has max_entries elements: the kernel refuses a new key (E2BIG)."""


class KeyExistsError(BpfError):
    """`put(..., only_new=True)` for a key that is already present (EEXIST)."""


class KeyMissingError(BpfError):
    """`put(..., only_existing=True)` for a key that is absent (ENOENT)."""


# ---- codecs ------------------------------------------------------------------------


class Codec(Protocol[V]):
    """Fixed-size conversion between Python objects and map key/value bytes."""

    size: int

    def encode(self, obj: V) -> bytes: ...

    def decode(self, data: bytes) -> V: ...


class RawCodec:
    """Bytes as they are, checked for length."""

    def __init__(self, size: int) -> None:
        self.size = size

    def encode(self, obj: bytes) -> bytes:
        if len(obj) != self.size:
            raise ValueError(f"expected {self.size} bytes, got {len(obj)}")
        return bytes(obj)

    def decode(self, data: bytes) -> bytes:
        return bytes(data)


# ---- hash map ----------------------------------------------------------------------


class _MapHandle:
    """An fd to a map, closed once (if we own it); a program using the map
    keeps the map alive after we close ours."""

    def __init__(self, fd: int, name: str, owns_fd: bool) -> None:
        self._fd: int | None = fd
        self.name = name
        self._owns_fd = owns_fd

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"map {self.name or '(unnamed)'} is closed")
        return self._fd

    def close(self) -> None:
        """Release the fd (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None and self._owns_fd:
            syscalls.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HashMap(_MapHandle, Generic[K, V]):
    """A BPF_MAP_TYPE_HASH seen through key/value codecs."""

    batchable = True  # the kernel reads the whole map with BPF_MAP_LOOKUP_BATCH
    batch_type = MapType.HASH  # the map type whose batch reads decide (the hash family has them together)

    def __init__(
        self,
        fd: int,
        key_codec: Codec[K],
        value_codec: Codec[V],
        max_entries: int,
        name: str = "",
        owns_fd: bool = True,
    ) -> None:
        super().__init__(fd, name, owns_fd)
        self.key_codec = key_codec
        self.value_codec = value_codec
        self._max_entries = max_entries

    @property
    def max_entries(self) -> int:
        return self._max_entries

    def get(self, key: K) -> V | None:
        raw = syscalls.map_lookup(self.fd, self.key_codec.encode(key), self.value_codec.size, name=self.name)
        return None if raw is None else self.value_codec.decode(raw)

    def put(self, key: K, value: V, *, only_new: bool = False, only_existing: bool = False) -> None:
        """Insert or replace; `only_new`/`only_existing` make it insert-only/replace-only."""
        if only_new and only_existing:
            raise ValueError("only_new and only_existing exclude each other")
        flags = UpdateFlag.ANY
        if only_new:
            flags = UpdateFlag.NOEXIST
        elif only_existing:
            flags = UpdateFlag.EXIST
        try:
            syscalls.map_update(
                self.fd, self.key_codec.encode(key), self.value_codec.encode(value), flags, name=self.name
            )
        except BpfError as e:
            raise self._translate(e) from None

    def _translate(self, e: BpfError) -> BpfError:
        if e.errno == errno.E2BIG:
            return MapFullError(e.step, e.errno, hint=f"map is full ({self._max_entries} entries)")
        if e.errno == errno.EEXIST:
            return KeyExistsError(e.step, e.errno, hint="key already present")
        if e.errno == errno.ENOENT:
            return KeyMissingError(e.step, e.errno, hint="key not present")
        return e

    def delete(self, key: K) -> bool:
        """Remove `key`; False if it was absent."""
        return syscalls.map_delete(self.fd, self.key_codec.encode(key), name=self.name)

    def delete_many(self, keys: Iterable[K]) -> int:
        """Remove every key of `keys` that is there; returns how many were. A few
        batched calls where the kernel has BPF_MAP_DELETE_BATCH (5.6+), else one per key."""
        raw = [self.key_codec.encode(k) for k in keys]
        if not raw:
            return 0
        if self.batchable and features.batch_map_ops(self.batch_type).supported:
            return syscalls.map_delete_batch(self.fd, raw, name=self.name)
        return sum(syscalls.map_delete(self.fd, k, name=self.name) for k in raw)

    def _raw_keys(self) -> Iterator[bytes]:
        # The kernel restarts from the first key when the previous one has
        # vanished (deleted meanwhile), so remember what was yielded: each key
        # comes out once, and the walk still ends because restarts only
        # follow deletions.
        seen: set[bytes] = set()
        prev: bytes | None = None
        while True:
            nxt = syscalls.map_get_next_key(self.fd, prev, self.key_codec.size, name=self.name)
            if nxt is None:
                return
            prev = nxt
            if nxt in seen:
                continue
            seen.add(nxt)
            yield nxt

    def items(self) -> Iterator[tuple[K, V]]:
        """A snapshot of every entry: one batched walk where the kernel has
        BPF_MAP_LOOKUP_BATCH (5.6+), else key by key."""
        raw_items: Iterable[tuple[bytes, bytes]]
        if self.batchable and features.batch_map_ops(self.batch_type).supported:
            raw_items = syscalls.map_lookup_batch(self.fd, self.key_codec.size, self.value_codec.size,
                                                  min(self._max_entries, 4096), name=self.name)
        else:
            raw_items = self._items_one_by_one()
        for key, value in raw_items:
            yield self.key_codec.decode(key), self.value_codec.decode(value)

    def dump(self) -> tuple[bytes, bytes]:
        """Every entry as two blobs, the keys and the values in the same order (a reader
        of many entries unpacks them with struct.iter_unpack): one batched read of the
        whole map where the kernel has BPF_MAP_LOOKUP_BATCH, else key by key."""
        if self.batchable and features.batch_map_ops(self.batch_type).supported:
            return syscalls.map_dump(self.fd, self.key_codec.size, self.value_codec.size, self._max_entries,
                                     name=self.name)
        rows = list(self._items_one_by_one())
        return b"".join(k for k, _ in rows), b"".join(v for _, v in rows)

    def _items_one_by_one(self) -> Iterator[tuple[bytes, bytes]]:
        for raw in self._raw_keys():
            value = syscalls.map_lookup(self.fd, raw, self.value_codec.size, name=self.name)
            if value is not None:  # deleted since it was listed
                yield raw, value

    def keys(self) -> Iterator[K]:
        """A live walk: keys deleted before they are reached are not yielded."""
        for raw in self._raw_keys():
            yield self.key_codec.decode(raw)

    def __iter__(self) -> Iterator[K]:
        return self.keys()

    def __len__(self) -> int:
        return sum(1 for _ in self.items())

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]  # any object may be asked; a non-key is a codec error


class LpmTrie(HashMap[K, V]):
    """A BPF_MAP_TYPE_LPM_TRIE: keys are a u32 prefix length and the data.

    `get` is the kernel's longest-prefix match, not an exact lookup (a key
    inside a stored network finds that network); update and delete are
    exact. The kernel has no batched reads for tries.
    """

    batchable = False


# ---- arrays ------------------------------------------------------------------------


def _index_key(index: int, max_entries: int) -> bytes:
    if not 0 <= index < max_entries:
        raise IndexError(f"index {index} outside 0..{max_entries - 1}")
    return struct.pack("=I", index)


class Array(_MapHandle):
    """A BPF_MAP_TYPE_ARRAY of raw values (e.g. a program's global data)."""

    def __init__(self, fd: int, value_size: int, max_entries: int, name: str = "",
                 owns_fd: bool = True) -> None:
        super().__init__(fd, name, owns_fd)
        self.value_size = value_size
        self.max_entries = max_entries

    def get(self, index: int) -> bytes:
        raw = syscalls.map_lookup(self.fd, _index_key(index, self.max_entries), self.value_size,
                                  name=self.name)
        if raw is None:  # arrays always have every index
            raise BpfError(f"MAP_LOOKUP_ELEM {self.name}", errno.ENOENT)
        return raw

    def put(self, index: int, value: bytes) -> None:
        if len(value) != self.value_size:
            raise ValueError(f"expected {self.value_size} bytes, got {len(value)}")
        syscalls.map_update(self.fd, _index_key(index, self.max_entries), value, name=self.name)

    def values(self) -> list[bytes]:
        """Every index's value, in index order: a few batched reads where the kernel
        has them, else one lookup per index."""
        if self.max_entries > 8 and features.batch_map_ops(MapType.ARRAY).supported:
            rows = syscalls.map_lookup_batch(self.fd, 4, self.value_size, min(self.max_entries, 1024),
                                             name=self.name)
            every = {struct.unpack("=I", k)[0]: v for k, v in rows}
            return [every[i] for i in range(self.max_entries)]
        return [self.get(i) for i in range(self.max_entries)]




class PerCpuArray(_MapHandle):
    """A BPF_MAP_TYPE_PERCPU_ARRAY: one value per possible CPU per index."""

    def __init__(
        self, fd: int, value_size: int, max_entries: int, name: str = "", owns_fd: bool = True
    ) -> None:
        super().__init__(fd, name, owns_fd)
        self.value_size = value_size
        self.max_entries = max_entries

    def _key(self, index: int) -> bytes:
        return _index_key(index, self.max_entries)

    def split(self, raw: bytes) -> list[bytes]:
        """One lookup's bytes -> each CPU's value (slots are 8-byte aligned)."""
        stride = (self.value_size + 7) & ~7
        return [raw[i : i + self.value_size] for i in range(0, len(raw), stride)]

    def _raw(self, index: int) -> bytes:
        raw = syscalls.map_lookup(self.fd, self._key(index), self.value_size, percpu=True, name=self.name)
        if raw is None:  # arrays always have every index; be explicit anyway
            raise BpfError(f"MAP_LOOKUP_ELEM {self.name}", errno.ENOENT)
        return raw

    def values(self, index: int) -> list[bytes]:
        """The value of `index` on each possible CPU."""
        return self.split(self._raw(index))

    def rows_of(self, indices: Iterable[int]) -> dict[int, bytes]:
        """Every CPU's value of several indices, each index's as one piece (split()
        cuts it): the whole array in a few batched reads where the kernel has them
        (and many indices are wanted), else one lookup per index."""
        wanted = sorted(set(indices))
        every = self.rows() if len(wanted) > 8 else None
        if every is not None:
            slot = syscalls.percpu_value_size(self.value_size)
            return {i: every[i * slot:(i + 1) * slot] for i in wanted}
        return {i: self._raw(i) for i in wanted}

    def rows(self) -> bytes | None:
        """Every index's value on each CPU (rows_of's pieces) one after the other, in index
        order: the whole array as one blob in a few batched reads (a reader that only
        asks whether anything changed compares it whole). None where the kernel has no
        batched reads."""
        if not features.batch_map_ops(MapType.PERCPU_ARRAY).supported:
            return None
        slot = syscalls.percpu_value_size(self.value_size)
        _, values = syscalls.map_dump(self.fd, 4, slot, min(self.max_entries, 1024), name=self.name)
        return values if len(values) == slot * self.max_entries else None  # an array's walk: every index, in order

    def put_all(self, index: int, value: bytes) -> None:
        """Set `index` to `value` on every CPU (e.g. reset a counter)."""
        self.put_each(index, [value] * syscalls.possible_cpus())

    def put_each(self, index: int, values: list[bytes]) -> None:
        """Set `index` to one value per possible CPU, in the order values() gives them."""
        if len(values) != syscalls.possible_cpus() or any(len(v) != self.value_size for v in values):
            raise ValueError(f"expected {syscalls.possible_cpus()} values of {self.value_size} bytes")
        pad = bytes(((self.value_size + 7) & ~7) - self.value_size)
        syscalls.map_update(self.fd, self._key(index), b"".join(v + pad for v in values), name=self.name)

    def sum_u64(self, index: int) -> int:
        """Sum over CPUs of the little/native-endian u64 at the start of each value."""
        return sum(struct.unpack_from("=Q", v)[0] for v in self.values(index))


# ---- copying ------------------------------------------------------------------------------

_ARRAYS = (MapType.ARRAY, MapType.PERCPU_ARRAY)
_PERCPU = (MapType.PERCPU_ARRAY, MapType.PERCPU_HASH)


def copy_entries(src: int, dst: int, name: str = "", key_map: Callable[[bytes], bytes] | None = None) -> int:
    """Copy every entry of map `src` into map `dst`, which may differ only in
    max entries (e.g. a resized table), and in their keys when `key_map` turns
    each key of `src` into one of `dst` (a new key layout); returns how many
    were copied.

    Hash maps and tries copy every key (MapFullError when `dst` is too small);
    arrays copy the indices both have. Per-CPU values keep every CPU's value.
    """
    a, b = syscalls.map_info(src), syscalls.map_info(dst)
    same_keys = a.key_size == b.key_size or key_map is not None
    if (a.type, a.value_size, a.map_flags) != (b.type, b.value_size, b.map_flags) or not same_keys:
        raise BpfError(f"copy map {name}".rstrip(), errno.EINVAL,
                       hint="the maps differ in more than their size")
    percpu = a.type in _PERCPU
    if a.type in _ARRAYS:
        keys: Iterable[bytes] = (struct.pack("=I", i) for i in range(min(a.max_entries, b.max_entries)))
    else:
        keys = list(HashMap(src, RawCodec(a.key_size), RawCodec(a.value_size), a.max_entries, name,
                            owns_fd=False).keys())
    view = HashMap(dst, RawCodec(b.key_size), RawCodec(b.value_size), b.max_entries, name, owns_fd=False)
    copied = 0
    for key in keys:
        value = syscalls.map_lookup(src, key, a.value_size, percpu=percpu, name=name)
        if value is None:  # deleted meanwhile
            continue
        try:
            syscalls.map_update(dst, key if key_map is None else key_map(key), value, name=name)
        except BpfError as e:
            raise view._translate(e) from None
        copied += 1
    return copied


# ---- ring buffer ----------------------------------------------------------------------

# Plain ints: IntFlag arithmetic would cost every record a Python-level call.
_BUSY = int(RingbufFlag.BUSY)
_DISCARD = int(RingbufFlag.DISCARD)
_HDR = ctypes.sizeof(RingbufHdr)  # len is its first u32, read as words[off >> 2]
_NO_LIMIT = 1 << 62

RecordCallback = Callable[[bytes], Any]


def _step(size: int) -> int:
    """Bytes a record of `size` bytes takes in the ring: header, payload, 8-byte alignment."""
    return (size + _HDR + 7) & ~7


def run_layout(fields: str, size: int) -> struct.Struct:
    """The `struct` of one record of a Run: its header skipped, the payload as
    `fields` (little-endian, `size` bytes), the alignment padding skipped.
    `layout.iter_unpack(run.data)` gives each record's fields."""
    pad = _step(size) - _HDR - size
    layout = struct.Struct(f"<{_HDR}x{fields}{pad}x")
    if layout.size != _step(size):
        raise ValueError(f"fields {fields!r} are not {size} bytes")
    return layout


class Run(NamedTuple):
    """Records copied out of the ring together (RingBuffer.read_runs).

    records > 0: that many records of the size asked for, each still behind
    its ring header (unpack with run_layout). records == 0: one record of
    another size, its payload only.
    """

    data: bytes
    records: int


class RingBuffer:
    """Single consumer of a BPF_MAP_TYPE_RINGBUF.

    The kernel publishes records by advancing the producer position; we read
    each record header with one aligned 32-bit load (BUSY: not committed yet,
    stop; DISCARD: skip), hand the payload to the callback, and only then
    publish the new consumer position so the kernel cannot reuse the space
    while we still read it.
    """

    def __init__(self, map_fd: int, data_size: int | None = None) -> None:
        if data_size is None:  # the map knows its own size
            data_size = syscalls.map_info(map_fd).max_entries
        self.map_fd = map_fd
        self.data_size = data_size
        self._mask = data_size - 1
        self._cons_map, self._prod_map = syscalls.mmap_ringbuf(map_fd, data_size)
        page = mmap.PAGESIZE
        self._cons_pos = memoryview(self._cons_map).cast("Q")  # native, aligned u64 stores
        prod_view = memoryview(self._prod_map)
        self._prod_pos = prod_view[:8].cast("Q")
        self._data = prod_view[page:]  # data area, mapped twice
        self._hdr_words = self._data.cast("I")  # aligned u32 loads of headers
        self._views = [self._cons_pos, self._prod_pos, self._hdr_words, self._data, prod_view]
        self._closed = False

    def fileno(self) -> int:
        """The map fd: level-triggered readable while data is pending."""
        return self.map_fd

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("ring buffer is closed")

    def producer_pos(self) -> int:
        return self._prod_pos[0]

    def consumer_pos(self) -> int:
        return self._cons_pos[0]

    def pending_bytes(self) -> int:
        """Bytes the kernel has reserved or committed that we have not consumed."""
        self._check_open()
        return self._prod_pos[0] - self._cons_pos[0]

    def _walk(self, limit: int | None, start: int | None = None) -> Iterator[tuple[bytes | None, int]]:
        """Yield (payload copy, consumer position just past it) for each
        committed record from `start` (the consumer position), oldest first;
        payload None for a discarded one. Stops at a BUSY record, at the
        producer, or after `limit` payloads. Publishing the position is the
        caller's business."""
        data, words, mask = self._data, self._hdr_words, self._mask
        cons = self._cons_pos[0] if start is None else start
        prod = self._prod_pos[0]
        delivered = 0
        while cons < prod and (limit is None or delivered < limit):
            off = cons & mask
            length = words[off >> 2]  # one aligned 32-bit load
            if length & _BUSY:
                return
            size = length & ~(_BUSY | _DISCARD)
            step = _step(size)
            if step > prod - cons:
                raise FormatError("ring buffer", f"record of {size} bytes at {cons} passes producer {prod}")
            cons += step
            if length & _DISCARD:
                yield None, cons
            else:
                delivered += 1
                yield bytes(data[off + _HDR : off + _HDR + size]), cons
            if cons >= prod:
                prod = self._prod_pos[0]  # more may have been committed meanwhile

    def consume(self, callback: RecordCallback, limit: int | None = None) -> int:
        """Deliver every committed record (at most `limit`); returns how many.

        The general reader, one record at a time (libbpf's ring_buffer__consume):
        the agent reads runs (read_runs); the tests read ttcp's events this way,
        and it states the record protocol read_runs keeps, on which tests/kernel
        checks both.

        The consumer position moves past each record only once its callback
        has returned. If the callback raises, its record still counts as
        consumed (a record that always fails must not wedge the ring) and the
        exception propagates.
        """
        self._check_open()
        delivered = 0
        for payload, pos in self._walk(limit):
            try:
                if payload is not None:
                    delivered += 1
                    callback(payload)
            finally:
                self._cons_pos[0] = pos
        return delivered

    def read_batch(self, limit: int | None = None) -> list[bytes]:
        """Copy out every committed record (at most `limit`), then publish the
        consumer position once, with no call per record. What read_runs is
        measured against (bench/inproc.py's baseline: copying records out, and
        nothing else)."""
        self._check_open()
        out: list[bytes] = []
        pos = None
        for payload, pos in self._walk(limit):  # pos: the last one is published below
            if payload is not None:
                out.append(payload)
        if pos is not None:
            self._cons_pos[0] = pos
        return out

    def read_runs(self, size: int, limit: int | None = None) -> list[Run]:
        """Like read_batch, but a stretch of consecutive committed records of
        `size` bytes is copied out in one piece (a Run), with their headers:
        the reader's hot path when every record has one fixed size. Any other
        record (another size, a discarded one) goes through the per-record
        step, so the record protocol is the same as _walk's: stop at BUSY,
        skip DISCARD, and publish the consumer position once, after copying.

        A run never wraps: the data area is mapped twice, so the bytes from
        any offset up to one ring's length on are contiguous.
        """
        self._check_open()
        step = _step(size)
        stride = step >> 2
        data, words, mask = self._data, self._hdr_words, self._mask
        start = cons = self._cons_pos[0]
        prod = self._prod_pos[0]
        out: list[Run] = []
        left = _NO_LIMIT if limit is None else limit  # records still wanted
        while left > 0:
            if cons >= prod:
                prod = self._prod_pos[0]  # more may have been committed meanwhile
                if cons >= prod:
                    break
            off = cons & mask
            n = min((prod - cons) // step, left)
            if n:
                # Every header of the stretch in one strided read; the run ends
                # before the first that is not `size`, committed and kept.
                heads = words[off >> 2 : (off >> 2) + n * stride : stride].tolist()
                if heads.count(size) != n:
                    n = len(list(itertools.takewhile(size.__eq__, heads)))
            if n:
                out.append(Run(bytes(data[off : off + n * step]), n))
                cons += n * step
                left -= n
                continue
            at = cons  # another size, a discarded record, or BUSY: the per-record step
            for payload, pos in self._walk(1, at):
                if payload is not None:
                    out.append(Run(payload, 0))
                    left -= 1
                cons = pos
            if cons == at:
                break  # BUSY
        if cons != start:
            self._cons_pos[0] = cons
        return out

    def close(self) -> None:
        """Unmap (idempotent). The map fd belongs to the caller."""
        if self._closed:
            return
        self._closed = True
        for view in self._views:
            view.release()
        self._cons_map.close()
        self._prod_map.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
