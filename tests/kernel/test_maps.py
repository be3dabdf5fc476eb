"""ttcp.maps against the real kernel: HashMap, PerCpuArray, and RingBuffer fed
by a real BPF program (hand-assembled, run with BPF_PROG_TEST_RUN)."""

from __future__ import annotations

import asyncio
import os
import random
import struct
from collections.abc import Callable, Iterator

import pytest

from tests.support import bpf_asm as asm
from tests.support.kernel import scaled
from tests.support.kernel_objects import readable
from tests.support.standalone_maps import StructCodec, new_hash, new_percpu_array
from ttcp import syscalls
from ttcp.errors import BpfError, TtcpError
from ttcp.kernel import features
from ttcp.kernel.uapi import MapType, ProgType
from ttcp.maps import (
    HashMap,
    KeyExistsError,
    KeyMissingError,
    MapFullError,
    RawCodec,
    RingBuffer,
    Run,
    run_layout,
)

pytestmark = [pytest.mark.matrix, pytest.mark.kernel, pytest.mark.usefixtures("no_bpf_leaks")]

U32 = StructCodec("<I")
U64 = StructCodec("<Q")

# ---- HashMap -----------------------------------------------------------------------


@pytest.fixture
def hmap() -> Iterator[HashMap[int, int]]:
    with new_hash(U32, U64, 8, name="t_hashmap") as m:
        yield m


def test_hashmap_basic_operations(hmap: HashMap[int, int]) -> None:
    assert len(hmap) == 0 and hmap.get(1) is None and 1 not in hmap
    for k in range(5):
        hmap.put(k, k * k)
    assert hmap.get(3) == 9
    assert 3 in hmap and 7 not in hmap
    assert len(hmap) == 5
    assert sorted(hmap.keys()) == [0, 1, 2, 3, 4]
    assert dict(hmap.items()) == {k: k * k for k in range(5)}
    hmap.put(3, 33)
    assert hmap.get(3) == 33
    assert hmap.delete(3) is True
    assert hmap.delete(3) is False
    assert sorted(hmap) == [0, 1, 2, 4]
    assert hmap.max_entries == 8
    assert syscalls.map_info(hmap.fd).name == "t_hashmap"


def test_hashmap_full_raises_map_full_error(hmap: HashMap[int, int]) -> None:
    for k in range(8):
        hmap.put(k, k)
    with pytest.raises(MapFullError) as exc:
        hmap.put(100, 1)
    assert isinstance(exc.value, BpfError) and isinstance(exc.value, TtcpError)
    assert exc.value.errno == 7  # E2BIG
    assert "8 entries" in str(exc.value)
    hmap.put(5, 55)  # replacing an existing key still works when full
    assert hmap.get(5) == 55
    hmap.delete(0)
    hmap.put(100, 1)  # room again
    assert len(hmap) == 8


def test_hashmap_only_new_and_only_existing(hmap: HashMap[int, int]) -> None:
    hmap.put(1, 10, only_new=True)
    with pytest.raises(KeyExistsError):
        hmap.put(1, 11, only_new=True)
    assert hmap.get(1) == 10
    hmap.put(1, 12, only_existing=True)
    assert hmap.get(1) == 12
    with pytest.raises(KeyMissingError):
        hmap.put(2, 20, only_existing=True)
    assert 2 not in hmap
    with pytest.raises(ValueError):
        hmap.put(1, 1, only_new=True, only_existing=True)


def test_iteration_while_deleting_each_key_yields_each_once() -> None:
    with new_hash(U32, U64, 256, name="t_iterdel") as m:
        for k in range(200):
            m.put(k, k)
        yielded = []
        walk = m.keys()
        for k in walk:
            yielded.append(k)
            assert m.delete(k)
        assert sorted(yielded) == list(range(200))
        assert len(m) == 0


def test_iteration_while_deleting_some_keys_never_repeats() -> None:
    with new_hash(U32, U64, 256, name="t_iterdel2") as m:
        for k in range(200):
            m.put(k, k)
        yielded, deleted_early = [], set()
        walk = m.keys()
        for k in walk:
            yielded.append(k)
            if k % 3 == 0:
                m.delete(k)  # the current key vanishes: the walk restarts
            partner = (k + 100) % 200
            if partner not in yielded and m.delete(partner):
                deleted_early.add(partner)  # a key not reached yet
        assert len(yielded) == len(set(yielded))
        assert set(yielded) | deleted_early == set(range(200))
        assert not set(yielded) & deleted_early


def test_items_skip_keys_deleted_meanwhile(hmap: HashMap[int, int]) -> None:
    for k in range(6):
        hmap.put(k, k + 1)
    got = {}
    for k, v in hmap.items():
        got[k] = v
        for other in range(6):
            if other not in got:
                hmap.delete(other)  # all the others vanish after the first item
                break
    assert len(got) >= 1 and all(v == k + 1 for k, v in got.items())


def test_hashmap_close_is_idempotent_and_owns_fd() -> None:
    m = new_hash(RawCodec(4), RawCodec(2), 4, name="t_close")
    fd = m.fd
    m.put(b"abcd", b"xy")
    borrowed = HashMap(fd, RawCodec(4), RawCodec(2), 4, owns_fd=False)
    borrowed.close()
    os.fstat(fd)  # the borrower did not close it
    assert m.get(b"abcd") == b"xy"
    with pytest.raises(ValueError):
        m.put(b"abc", b"xy")  # wrong key size never reaches the kernel
    m.close()
    m.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(ValueError):
        m.get(b"abcd")


# ---- PerCpuArray ---------------------------------------------------------------------


def _counter_prog(map_fd: int) -> bytes:
    """Add 1 to the u64 at index 0 of a per-CPU array (the CPU it runs on)."""
    return b"".join([
        asm.insn(0x62, asm.R10, off=-4, imm=0),  # *(u32 *)(r10 - 4) = 0
        asm.mov_reg(asm.R2, asm.R10),
        asm.add_imm(asm.R2, -4),
        asm.ld_map_fd(asm.R1, map_fd),
        asm.call(1),  # bpf_map_lookup_elem
        asm.jeq_imm(asm.R0, 0, 3),
        asm.insn(0x79, asm.R1, asm.R0, 0),  # r1 = *(u64 *)(r0 + 0)
        asm.add_imm(asm.R1, 1),
        asm.insn(0x7B, asm.R0, asm.R1, 0),  # *(u64 *)(r0 + 0) = r1
        asm.mov_imm(asm.R0, 0),
        asm.exit_(),
    ])


def test_percpu_array_counts_per_cpu() -> None:
    cpus = syscalls.online_cpus()
    with new_percpu_array(8, 1, name="t_drops") as arr:
        assert arr.values(0) == [bytes(8)] * syscalls.possible_cpus()
        prog = syscalls.prog_load(ProgType.SOCKET_FILTER, _counter_prog(arr.fd), "GPL",
                                  name="t_count")
        old = os.sched_getaffinity(0)
        try:
            for i, cpu in enumerate(cpus):
                os.sched_setaffinity(0, {cpu})
                syscalls.prog_test_run(prog, asm.packet(b"x"), repeat=i + 2)
        finally:
            os.sched_setaffinity(0, old)
            syscalls.close(prog)
        per_cpu = [struct.unpack("<Q", v)[0] for v in arr.values(0)]
        for i, cpu in enumerate(cpus):
            assert per_cpu[cpu] == i + 2
        assert arr.sum_u64(0) == sum(i + 2 for i in range(len(cpus)))
        arr.put_all(0, bytes(8))
        assert arr.sum_u64(0) == 0
        with pytest.raises(IndexError):
            arr.values(1)



def test_percpu_array_whole_reads_follow_the_per_type_probe() -> None:
    """rows() and rows_of() read a per-CPU array whole only where the kernel batches that
    map type (5.10 batches hash maps, not per-CPU arrays: ENOTSUPP), and agree with lookups."""
    batched = features.batch_map_ops(MapType.PERCPU_ARRAY).supported
    with new_percpu_array(8, 16, name="t_rows") as arr:
        for i in range(16):
            arr.put_all(i, struct.pack("<Q", i + 1))
        every = arr.rows()
        assert (every is not None) == bool(batched)
        one = [v for i in range(16) for v in arr.values(i)]
        slot = syscalls.percpu_value_size(8) // syscalls.possible_cpus()
        if every is not None:
            assert [every[k:k + 8] for k in range(0, len(every), slot)] == one
        rows = arr.rows_of(range(16))
        assert [arr.split(rows[i]) for i in range(16)] == [arr.values(i) for i in range(16)]

# ---- RingBuffer ------------------------------------------------------------------------

RING = 4096


class Ring:
    """A RINGBUF map, its reader, and programs writing fixed-size records."""

    def __init__(self) -> None:
        self.map_fd = syscalls.map_create(MapType.RINGBUF, 0, 0, RING, name="t_ring")
        self.rb = RingBuffer(self.map_fd, RING)
        self._progs: dict[int, int] = {}

    def emit(self, payload: bytes) -> int:
        """Run the writer for len(payload); returns 0 sent, 3 discarded, 1 full."""
        size = len(payload)
        if size not in self._progs:
            self._progs[size] = syscalls.prog_load(
                ProgType.SOCKET_FILTER, asm.ringbuf_writer(self.map_fd, size), "GPL",
                name=f"t_rb{size}")
        return syscalls.prog_test_run(self._progs[size], asm.packet(payload))

    def close(self) -> None:
        self.rb.close()
        for fd in self._progs.values():
            syscalls.close(fd)
        syscalls.close(self.map_fd)


@pytest.fixture
def ring() -> Iterator[Ring]:
    r = Ring()
    try:
        yield r
    finally:
        r.close()


def _payload(rng: random.Random, size: int) -> bytes:
    data = bytearray(rng.randbytes(size))
    if data[0] == ord("D"):
        data[0] = ord("d")
    return bytes(data)


def _record_step(size: int) -> int:
    return (size + 8 + 7) & ~7


def test_records_arrive_in_order_with_exact_payloads(ring: Ring) -> None:
    rng = random.Random(1)
    sent = [_payload(rng, size) for size in (1, 5, 8, 13, 100, 7, 64)]
    for p in sent:
        assert ring.emit(p) == 0
    assert ring.rb.pending_bytes() == sum(_record_step(len(p)) for p in sent)
    got: list[bytes] = []
    assert ring.rb.consume(got.append) == len(sent)
    assert got == sent
    assert ring.rb.pending_bytes() == 0
    assert ring.rb.consume(got.append) == 0


def test_discarded_records_are_skipped(ring: Ring) -> None:
    seq = [b"keep1", b"Dropp", b"keep2", b"Dxxxx", b"Dyyyy", b"keep3", b"Dlast"]
    rets = [ring.emit(p) for p in seq]
    assert rets == [3 if p.startswith(b"D") else 0 for p in seq]
    got: list[bytes] = []
    assert ring.rb.consume(got.append) == 3
    assert got == [b"keep1", b"keep2", b"keep3"]
    assert ring.rb.pending_bytes() == 0  # the trailing discard was stepped over too


def test_consumer_position_published_only_after_callback(ring: Ring) -> None:
    sent = [b"a" * 3, b"b" * 20, b"c" * 9]
    for p in sent:
        ring.emit(p)
    start = ring.rb.consumer_pos()
    seen_pos: list[int] = []
    ring.rb.consume(lambda _: seen_pos.append(ring.rb.consumer_pos()))
    steps = [_record_step(len(p)) for p in sent]
    assert seen_pos == [start, start + steps[0], start + steps[0] + steps[1]]
    assert ring.rb.consumer_pos() == ring.rb.producer_pos() == start + sum(steps)


def test_limit_and_failing_callback(ring: Ring) -> None:
    for i in range(5):
        ring.emit(bytes([ord("a") + i]) * 4)
    got: list[bytes] = []
    assert ring.rb.consume(got.append, limit=2) == 2
    assert got == [b"aaaa", b"bbbb"]

    def boom(p: bytes) -> None:
        raise RuntimeError(p)

    with pytest.raises(RuntimeError):
        ring.rb.consume(boom)
    assert ring.rb.consume(got.append) == 2  # the record that failed was consumed
    assert got[2:] == [b"dddd", b"eeee"]


def test_wraps_around_many_times(ring: Ring) -> None:
    rng = random.Random(2)
    sizes = [1, 7, 9, 100, 255, 1000, 3, 512]
    sent: list[bytes] = []
    got: list[bytes] = []
    i = 0
    while ring.rb.consumer_pos() < 25 * RING:
        for _ in range(3):
            p = _payload(rng, sizes[i % len(sizes)])
            i += 1
            assert ring.emit(p) == 0
            sent.append(p)
        ring.rb.consume(got.append)
        assert got == sent
    assert ring.rb.pending_bytes() == 0


def test_full_ring_makes_reservation_fail_until_consumed(ring: Ring) -> None:
    payload = b"p" * 100  # 112 bytes per record: 36 fit in 4096
    rets = [ring.emit(payload) for _ in range(40)]
    assert rets.count(0) == RING // _record_step(100) == 36
    assert rets[36:] == [1, 1, 1, 1]
    got: list[bytes] = []
    assert ring.rb.consume(got.append) == 36
    assert ring.emit(payload) == 0  # space is back
    assert ring.rb.consume(got.append) == 1


def test_fd_readable_reflects_pending_data(ring: Ring) -> None:
    assert readable(ring.rb, 0) is False
    ring.emit(b"hello")
    assert readable(ring.rb, 1) is True
    assert readable(ring.rb, 0) is True  # level-triggered: still pending
    ring.rb.consume(lambda _: None)
    assert readable(ring.rb, 0) is False


async def _until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + scaled(timeout)
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_event_loop_reader_delivers_every_batch(ring: Ring) -> None:
    """The agent's own way of reading: the loop watches the fd, each wakeup drains a batch."""
    got: list[bytes] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(ring.rb.fileno(), lambda: got.extend(ring.rb.read_batch()))
        try:
            for round_ in range(3):
                batch = [f"r{round_}-{i}".encode() for i in range(4)]
                for p in batch:
                    ring.emit(p)
                await _until(lambda n=(round_ + 1) * 4: len(got) == n)
        finally:
            loop.remove_reader(ring.rb.fileno())

    asyncio.run(main())
    assert got == [f"r{r}-{i}".encode() for r in range(3) for i in range(4)]
    assert ring.rb.pending_bytes() == 0


def test_ringbuffer_close_is_idempotent() -> None:
    fd = syscalls.map_create(MapType.RINGBUF, 0, 0, RING, name="t_ringclose")
    try:
        with RingBuffer(fd) as rb:  # size read from the map
            assert rb.fileno() == fd
            assert rb.data_size == RING
        rb.close()
        with pytest.raises(ValueError):
            rb.consume(lambda _: None)
    finally:
        syscalls.close(fd)


def test_batched_items_are_exact_whatever_the_batch_size() -> None:
    """BPF_MAP_LOOKUP_BATCH resumes from its token and grows past full buckets (ENOSPC)."""
    with new_hash(U32, U64, 512, name="t_batch") as m:
        for k in range(300):
            m.put(k, k * 7)
        for count in (1, 3, 512):
            raw = syscalls.map_lookup_batch(m.fd, 4, 8, count, name="t_batch")
            got = sorted((U32.decode(k), U64.decode(v)) for k, v in raw)
            assert got == [(k, k * 7) for k in range(300)]
        assert dict(m.items()) == {k: k * 7 for k in range(300)}
        assert len(m) == 300


def test_read_batch_copies_in_order_and_publishes_once(ring: Ring) -> None:
    """read_batch returns every committed record in order, skips discarded
    ones, wraps, and moves the consumer position past all of them."""
    rng = random.Random(3)
    for _ in range(6):  # several passes round the 4 KiB ring
        sent = [_payload(rng, size) for size in (1, 9, 100, 255, 33)]
        for p in sent:
            assert ring.emit(p) == 0
            assert ring.emit(b"D" + p) == 3
        assert ring.rb.read_batch(limit=2) == sent[:2]
        assert ring.rb.read_batch() == sent[2:]
        assert ring.rb.consumer_pos() == ring.rb.producer_pos()
        assert ring.rb.read_batch() == []


def _payloads(runs: list[Run], size: int) -> list[bytes]:
    """Every record's payload, runs split with their layout."""
    layout = run_layout(f"{size}s", size)
    out: list[bytes] = []
    for run in runs:
        if run.records:
            rows = [row[0] for row in layout.iter_unpack(run.data)]
            assert len(rows) == run.records
            out += rows
        else:
            out.append(run.data)
    return out


def test_read_runs_matches_the_per_record_walk(ring: Ring) -> None:
    """Runs of fixed-size records come out whole; other sizes and discarded
    records break a run and take the per-record step; wrapping round the ring
    (the data area is mapped twice) never splits a run; limit counts records."""
    rng = random.Random(4)
    size = 40  # 48 bytes a record: runs wrap at arbitrary offsets of the 4 KiB ring
    for round_ in range(40):
        sent: list[bytes] = []
        for i in range(rng.randrange(1, 60)):
            kind = rng.random()
            if kind < 0.1:
                assert ring.emit(b"D" + bytes(size - 1)) == 3  # discarded, same size
            elif kind < 0.2:
                p = _payload(rng, rng.choice((1, 39, 41, 88, 200)))  # another size
                assert ring.emit(p) == 0
                sent.append(p)
            else:
                p = _payload(rng, size)
                assert ring.emit(p) == 0
                sent.append(p)
        limit = rng.choice((None, 1, 7))
        runs = ring.rb.read_runs(size, limit=limit)
        got = _payloads(runs, size)
        assert got == sent[: len(got)]
        assert len(got) == (len(sent) if limit is None else min(limit, len(sent)))
        assert _payloads(ring.rb.read_runs(size), size) == sent[len(got):]
        assert ring.rb.consumer_pos() == ring.rb.producer_pos()
    assert ring.rb.read_runs(size) == []


def test_read_runs_copies_a_whole_stretch_at_once(ring: Ring) -> None:
    sent = [bytes([i]) * 88 for i in range(30)]
    for p in sent:
        assert ring.emit(p) == 0
    runs = ring.rb.read_runs(88)
    assert [r.records for r in runs] == [30]
    assert _payloads(runs, 88) == sent
