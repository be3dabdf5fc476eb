"""A filter table that survives restarts (issue 14): --pin DIR in-process, against the real kernel.

The loader reuses a pinned map only if it fits; the Tracer with a pin
directory reuses the table, migrates it to another size, finishes a migration
cut short between two renames, moves counter slots below a smaller size,
restamps a lost stats map, refuses a corrupt table and holds the lock
(the command's side is tests/system/test_pin_command.py's). Every test pins
into a directory of its own under /sys/fs/bpf and removes it afterwards,
whatever happened.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.support.pins import HOSTS, A, B, C, matches, pinned_id, pins, quiet, seeded, traffic
from tests.support.traffic import Server, connect_many
from tests.support.workloads import Cgroups, Netns, run_in
from ttcp import syscalls
from ttcp.elf_loader import Collection
from ttcp.kernel import lru
from ttcp.kernel.uapi import MapFlag, MapType
from ttcp.maps import PerCpuArray
from ttcp.obj.map_compat import IncompatibleMapError
from ttcp.rtt import filters as F
from ttcp.rtt import pinning
from ttcp.rtt.filter_table import STATS_HEAD, STATS_SIZE
from ttcp.rtt.histogram import HIST
from ttcp.rtt.pinning import IncompatiblePinError, PinDirError, PinLockedError, PinnedTableTooBigError
from ttcp.rtt.table_rules import CorruptTableError, text_of
from ttcp.rtt.tracer import PINNED_MAPS, Tracer, default_object
from ttcp.workloads.resolver import Resolver

pytestmark = pytest.mark.kernel
PER_FILTER = [name for name in PINNED_MAPS if name != "groups"]  # sized by --max-filters


# ---- the loader's hook ------------------------------------------------------------------------------


def test_loader_reuses_a_matching_map_and_refuses_another(no_bpf_leaks: None) -> None:
    with Collection(str(default_object())) as loader:
        spec = loader.spec.maps["hosts"]
        wrong = syscalls.map_create(MapType.HASH, 8, spec.value_size, spec.max_entries, name="wrong")
        try:
            with pytest.raises(IncompatibleMapError, match=rf"map 'hosts' .*key size 8 \(wanted {spec.key_size}\)"):
                loader.reuse_map("hosts", wrong)
        finally:
            syscalls.close(wrong)  # refused: still the caller's
        right = syscalls.map_create(spec.map_type, spec.key_size, spec.value_size, spec.max_entries,
                                    flags=spec.flags, name="right")
        right_id = syscalls.map_info(right).id
        loader.reuse_map("hosts", right)
        fds = loader.create_maps()
        assert fds["hosts"] == right and syscalls.map_info(fds["hosts"]).id == right_id
        with pytest.raises(Exception, match="already exists"):
            loader.reuse_map("hosts", right)
    # the loader closed the reused fd with the others (no_bpf_leaks checks it)


# ---- the Tracer with a pin directory ------------------------------------------------------------


def test_pins_are_reused_with_filters_and_counters(no_bpf_leaks: None, pin_dir: Path) -> None:
    before = seeded(pin_dir, 16, [A, "dst 10.0.0.0/8 port 443", "src 127.0.14.0/28"], **{A: 3, B: 2})
    ids = {name: pinned_id(pin_dir / name) for name in PINNED_MAPS}
    assert before == {A: 3, "dst 10.0.0.0/8 port 443": 0, "src 127.0.14.0/28": 2}  # a host beats a network
    assert pins(pin_dir) == sorted(PINNED_MAPS)  # the table only: no ring, no program, no .bss
    with Tracer(max_filters=16, ringbuf_size=4096, pin_dir=pin_dir) as t:
        table = t.open_maps()
        assert matches(table) == before
        assert {name: pinned_id(pin_dir / name) for name in PINNED_MAPS} == ids  # the same maps
        assert sorted(t.pins.reused if t.pins else []) == sorted(PINNED_MAPS)
        assert t.table is not None and t.table.config.get(0) != bytes(4)  # kinds recomputed for .bss
        with Server("127.0.0.1") as srv2:
            t.attach(log=quiet)
            traffic(srv2, **{A: 1})
        assert matches(table)[A] == 4


def test_another_size_migrates_entries_and_counters(no_bpf_leaks: None, pin_dir: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    before = seeded(pin_dir, 8, [A, "dst 10.0.0.0/8 port 443", "::1"], **{A: 2})
    for size in (64, 3):
        with caplog.at_level("INFO", logger="ttcp"), Tracer(max_filters=size, ringbuf_size=4096,
                                                              pin_dir=pin_dir) as t:
            table = t.open_maps()
            assert table.max_entries == size and matches(table) == before
            assert {syscalls.map_info(t.collection.map_fds[n]).max_entries for n in PER_FILTER} == {size}
            assert {pinned_id(pin_dir / n) for n in PINNED_MAPS} == {syscalls.map_info(t.collection.map_fds[n]).id
                                                                    for n in PINNED_MAPS}
        assert f"migrated group_stats, hosts, nets, stats, texts (now {size} entries)" in caplog.text
        assert "reused groups" in caplog.text  # sized by --max-groups, not --max-filters
        assert pins(pin_dir) == sorted(PINNED_MAPS)  # no staging pin left
    with pytest.raises(PinnedTableTooBigError, match="holds 3 filters, more than the 2 entries"), \
            Tracer(max_filters=2, ringbuf_size=4096, pin_dir=pin_dir) as t:
        t.open_maps()
    with Tracer(max_filters=3, ringbuf_size=4096, pin_dir=pin_dir) as t:  # the refusal changed nothing
        assert matches(t.open_maps()) == before


def test_a_migration_cut_between_two_renames_is_finished_by_the_next_start(
        no_bpf_leaks: None, pin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = seeded(pin_dir, 8, [A, "src 127.0.14.0/28", "dst ::1 port 80"], **{A: 2, B: 1})
    real_rename, renamed = os.rename, []

    def rename_once(src: Any, dst: Any) -> None:
        if renamed:
            raise KeyboardInterrupt  # as if SIGINT had struck right there
        real_rename(src, dst)
        renamed.append(dst)

    monkeypatch.setattr(pinning.os, "rename", rename_once)
    with pytest.raises(KeyboardInterrupt), Tracer(max_filters=32, ringbuf_size=4096, pin_dir=pin_dir) as t:
        t.open_maps()
    monkeypatch.undo()
    sizes = {}
    for name in PINNED_MAPS:
        fd = syscalls.obj_get(pin_dir / name)
        sizes[name] = syscalls.map_info(fd).max_entries
        syscalls.close(fd)
    assert sorted(sizes[n] for n in PER_FILTER) == [8, 8, 8, 8, 32]  # one map replaced, four not: a mixed table
    for size in (8, 32):  # either size: a consistent table, and the mix is migrated
        with Tracer(max_filters=size, ringbuf_size=4096, pin_dir=pin_dir) as t:
            assert matches(t.open_maps()) == before
        assert pins(pin_dir) == sorted(PINNED_MAPS)


def test_a_smaller_table_moves_counter_slots_down(no_bpf_leaks: None, pin_dir: Path) -> None:
    hosts = [f"127.0.14.{i}" for i in range(20, 30)]
    before = seeded(pin_dir, 16, hosts, remove=tuple(hosts[:8]),  # 28 and 29 keep slots 8 and 9
                    **{"127.0.14.28": 2, "127.0.14.29": 1})
    with Tracer(max_filters=16, ringbuf_size=4096, pin_dir=pin_dir) as t:
        assert t.open_maps().rules.slots[F.parse("127.0.14.29")].index == 9
    with Tracer(max_filters=4, ringbuf_size=4096, pin_dir=pin_dir) as t, Server("127.0.0.1") as srv:
        table = t.open_maps()
        assert matches(table) == before and all(s.index < 4 for s in table.rules.slots.values())
        t.attach(log=quiet)
        traffic(srv, **{"127.0.14.29": 1})  # the moved slot still counts
        assert matches(table)["127.0.14.29"] == 2


def test_a_lost_stats_map_is_restamped_so_filters_count_again(no_bpf_leaks: None, pin_dir: Path) -> None:
    with Tracer(max_filters=8, ringbuf_size=4096, pin_dir=pin_dir) as t:
        t.open_maps().add([F.parse(A)])
    (pin_dir / "stats").unlink()  # e.g. removed by hand, or never pinned (a crash at the first start)
    with Tracer(max_filters=8, ringbuf_size=4096, pin_dir=pin_dir) as t, Server("127.0.0.1") as srv:
        table = t.open_maps()
        slot = table.rules.slots[F.parse(A)]
        assert {STATS_HEAD.unpack_from(r)[0] for r in table.stats_map.values(slot.index)} == {slot.gen}
        t.attach(log=quiet)
        traffic(srv, **{A: 2})
        assert matches(table) == {A: 2}


def test_a_corrupt_table_is_refused(no_bpf_leaks: None, pin_dir: Path) -> None:
    with Tracer(max_filters=8, ringbuf_size=4096, pin_dir=pin_dir) as t:
        table = t.open_maps()
        table.add([F.parse(A), F.parse(B)])
        slot = table.rules.slots[F.parse(A)]
        table.hosts.put(F.host_key(F.parse(B)), F.VALUE.pack(slot.index, slot.gen, 128, 0, 0, 0))  # another writer
    with pytest.raises(CorruptTableError, match="count into the same slot"), \
            Tracer(max_filters=8, ringbuf_size=4096, pin_dir=pin_dir) as t:
        t.open_maps()


def test_incompatible_pins_are_refused_and_left_alone(no_bpf_leaks: None, pin_dir: Path) -> None:
    pin_dir.mkdir()
    foreign = syscalls.map_create(MapType.HASH, 8, 32, 1024, name="foreign")
    try:
        syscalls.obj_pin(foreign, pin_dir / "hosts")
        foreign_id = syscalls.map_info(foreign).id
    finally:
        syscalls.close(foreign)
    with pytest.raises(IncompatiblePinError) as info, Tracer(pin_dir=pin_dir, ringbuf_size=4096) as t:
        t.open_maps()
    assert (f"{pin_dir}/hosts: key size 8 (wanted {HOSTS.key_size}), value size 32 (wanted {HOSTS.value_size})"
            in str(info.value))
    assert pins(pin_dir) == ["hosts"] and pinned_id(pin_dir / "hosts") == foreign_id
    with Tracer(pin_dir=pin_dir, pin_reset=True, ringbuf_size=4096) as t:
        assert len(t.open_maps()) == 0
        assert pinned_id(pin_dir / "hosts") != foreign_id


def test_one_tracer_per_directory(no_bpf_leaks: None, pin_dir: Path) -> None:
    with Tracer(pin_dir=pin_dir, ringbuf_size=4096) as first:
        first.open_maps()
        second = Tracer(pin_dir=pin_dir, ringbuf_size=4096)
        with pytest.raises(PinLockedError, match=rf"in use by another ttcp \(pid {os.getpid()}\)"):
            second.open_maps()
        second.close()
    with Tracer(pin_dir=pin_dir, ringbuf_size=4096) as again:  # closing released the lock
        again.open_maps()


def test_directories_that_cannot_hold_pins(no_bpf_leaks: None, pin_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(PinDirError, match="is not in a BPF file system.*-v /sys/fs/bpf:/sys/fs/bpf"):
        Tracer(pin_dir=tmp_path / "ttcp", ringbuf_size=4096).open_maps()
    assert not (tmp_path / "ttcp").exists()
    pin_dir.mkdir()
    m = syscalls.map_create(MapType.ARRAY, 4, 4, 1, name="squatter")
    try:
        syscalls.obj_pin(m, pin_dir / "taken")
    finally:
        syscalls.close(m)
    with pytest.raises(PinDirError, match="taken is not a directory"):
        Tracer(pin_dir=pin_dir / "taken", ringbuf_size=4096).open_maps()
    with Tracer(pin_dir=pin_dir / "deeper" / "still", ringbuf_size=4096) as t:  # parents are made
        t.open_maps()
    assert pins(pin_dir / "deeper" / "still") == sorted(PINNED_MAPS)


# ---- the layout before workloads, and workload filters across restarts -----------------------------

# The maps a ttcp before workloads pinned (keys without a wid), written out here from that
# layout, independently of the code that migrates them: (type, key size, flags).
PREVIOUS_SHAPES = {"hosts": (MapType.HASH, 20, 0), "nets": (MapType.LPM_TRIE, 24, MapFlag.NO_PREALLOC)}


def _previous_table(pin_dir: Path, size: int) -> None:
    """A pinned table of the previous layout: A (a plain address) at slot 3 with 4
    connections counted, a network with a port at slot 5 with none."""
    pin_dir.mkdir()
    fds = {name: syscalls.map_create(kind, key, F.VALUE.size, size, flags=flags, name=name)
           for name, (kind, key, flags) in PREVIOUS_SHAPES.items()}
    fds["stats"] = syscalls.map_create(MapType.PERCPU_ARRAY, 4, STATS_SIZE, size, name="stats")
    try:
        a = F.parse(A).addr
        syscalls.map_update(fds["hosts"], struct.pack("=BxH16s", 1, 0, a), F.VALUE.pack(3, 11, 128, 0, 0, 0))
        net = F.parse("dst 10.0.0.0/8 port 443")
        syscalls.map_update(fds["nets"], struct.pack("=IB2s16sx", 24 + net.bits, 2, (443).to_bytes(2, "big"),
                                                      net.addr), F.VALUE.pack(5, 12, net.bits, 0, 0, 0))
        stats = PerCpuArray(fds["stats"], STATS_SIZE, size, "stats", owns_fd=False)
        counted = HIST.pack(4, 400, *([0] * 6 + [4] + [0] * (HIST.size // 8 - 9)))
        cpus = syscalls.possible_cpus()  # the 4 connections counted on the first CPU
        stats.put_each(3, [STATS_HEAD.pack(11, 1) + counted + bytes(HIST.size)]
                       + [STATS_HEAD.pack(11, 0) + bytes(2 * HIST.size)] * (cpus - 1))
        stats.put_all(5, STATS_HEAD.pack(12, 0) + bytes(2 * HIST.size))
        for name, fd in fds.items():
            syscalls.obj_pin(fd, pin_dir / name)
    finally:
        for fd in fds.values():
            syscalls.close(fd)


@pytest.mark.parametrize("size", [16, 64, 4])
def test_a_table_of_the_previous_layout_is_migrated_not_refused(
        no_bpf_leaks: None, pin_dir: Path, size: int, caplog: pytest.LogCaptureFixture) -> None:
    _previous_table(pin_dir, 16)
    with caplog.at_level("INFO", logger="ttcp"), Tracer(max_filters=size, ringbuf_size=4096,
                                                          pin_dir=pin_dir) as t, Server("127.0.0.1") as srv:
        table = t.open_maps()
        assert matches(table) == {A: 4, "dst 10.0.0.0/8 port 443": 0}
        assert "keys of hosts, nets rewritten for workloads" in caplog.text
        for name, (_, key, _) in PREVIOUS_SHAPES.items():
            assert syscalls.map_info(t.collection.map_fds[name]).key_size > key  # the wid is in
        texts = {i: text_of(table.texts.get(s.index)) for i, s in enumerate(table.rules.slots.values())}
        assert {entry[2] for entry in texts.values() if entry} == {A, "dst 10.0.0.0/8 port 443"}
        t.attach(log=quiet)
        traffic(srv, **{A: 2})  # the migrated filter counts on
        assert matches(table)[A] == 6
    assert pins(pin_dir) == sorted(PINNED_MAPS)
    with Tracer(max_filters=size, ringbuf_size=4096, pin_dir=pin_dir) as t:  # and is of this layout now
        assert matches(t.open_maps())[A] == 6 and t.pins is not None and not t.pins.upgraded


def test_workload_filters_survive_a_restart_and_are_resolved_again(
        no_bpf_leaks: None, pin_dir: Path, cgroups: Cgroups, netns: Netns) -> None:
    app = cgroups.make()
    texts = [f"cgroup {app}", f"cgroup {app} dst 127.0.14.1", f"netns {netns.path}", A]
    resolver = Resolver.for_host()
    try:
        with Tracer(max_filters=8, ringbuf_size=4096, pin_dir=pin_dir, resolver=resolver) as t, \
                Server("127.0.14.1") as srv:
            table = t.open_maps()
            table.add([F.parse(x) for x in texts])
            t.attach(log=quiet)
            run_in(lambda: connect_many(srv, C, 3), cgroup=cgroups.tree.dir_of(app))
            before = matches(table)
        assert before[f"cgroup {app} dst 127.0.14.1"] == 3
    finally:
        resolver.close()
    cgroups.remove(app)
    cgroups.make()  # created again while no ttcp ran: a new id
    resolver = Resolver.for_host()
    try:
        with Tracer(max_filters=8, ringbuf_size=4096, pin_dir=pin_dir, resolver=resolver) as t, \
                Server("127.0.14.1") as srv:
            table = t.open_maps()
            assert matches(table) == before and sorted(map(str, table.filters())) == sorted(
                str(F.parse(x)) for x in texts)
            state = table.workload_state(F.parse(f"cgroup {app}"))
            assert state is not None and (state.state, state.id) == ("resolved", cgroups.id_of(app))
            t.attach(log=quiet)
            run_in(lambda: connect_many(srv, C, 2), cgroup=cgroups.tree.dir_of(app))
            assert matches(table)[f"cgroup {app} dst 127.0.14.1"] == 5
    finally:
        resolver.close()


# ---- groups (a filter's breakdown) ---------------------------------------------------------------

GROUPED = "dst 127.0.15.0/28 by raddr"


def group_counts(table: Any, text: str) -> dict[str, int]:
    f = F.parse(text)
    found = table.groups([f])[f]
    return {g.key.text(found.by): g.closed.count for g in found.groups}


def seeded_groups(pin_dir: Path, size: int = 8, **kw: Any) -> None:
    """A pinned table holding GROUPED (its groups: 127.0.15.5 x2, .6 x1) and A."""
    with Tracer(max_filters=size, ringbuf_size=4096, pin_dir=pin_dir, **kw) as t, \
            Server("127.0.15.5") as s5, Server("127.0.15.6") as s6:
        table = t.open_maps()
        table.add([F.parse(GROUPED), F.parse(A)])
        t.attach(log=quiet)
        connect_many(s5, B, 2)
        connect_many(s6, B, 1)
        assert group_counts(table, GROUPED) == {"127.0.15.5": 2, "127.0.15.6": 1}


def test_groups_survive_a_restart_and_count_on(no_bpf_leaks: None, pin_dir: Path) -> None:
    seeded_groups(pin_dir)
    assert pins(pin_dir) == sorted(PINNED_MAPS)
    with Tracer(max_filters=8, ringbuf_size=4096, pin_dir=pin_dir) as t, Server("127.0.15.5") as s5:
        table = t.open_maps()
        assert sorted(map(str, table.filters())) == sorted([A, GROUPED])  # the by clause: from the key's value
        assert group_counts(table, GROUPED) == {"127.0.15.5": 2, "127.0.15.6": 1}
        t.attach(log=quiet)
        connect_many(s5, B, 3)
        assert group_counts(table, GROUPED) == {"127.0.15.5": 5, "127.0.15.6": 1}


def test_a_pinned_table_without_groups_maps_gets_them(no_bpf_leaks: None, pin_dir: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A table pinned by the ttcp before groups: its filters kept, groups maps made beside them."""
    before = seeded(pin_dir, 8, [A, "dst 10.0.0.0/8 port 443"], **{A: 2})
    for name in ("groups", "group_stats"):
        (pin_dir / name).unlink()
    with caplog.at_level("INFO", logger="ttcp"), Tracer(max_filters=8, ringbuf_size=4096, pin_dir=pin_dir) as t, \
            Server("127.0.15.5") as s5:
        table = t.open_maps()
        assert matches(table) == before
        assert "new group_stats, groups" in caplog.text
        table.add([F.parse(GROUPED)])
        t.attach(log=quiet)
        connect_many(s5, B, 2)
        assert group_counts(table, GROUPED) == {"127.0.15.5": 2}
    assert pins(pin_dir) == sorted(PINNED_MAPS)


def test_another_max_groups_migrates_the_groups(no_bpf_leaks: None, pin_dir: Path) -> None:
    seeded_groups(pin_dir)
    with Tracer(max_filters=8, max_groups=16, ringbuf_size=4096, pin_dir=pin_dir) as t:
        table = t.open_maps()
        assert syscalls.map_info(t.collection.map_fds["groups"]).max_entries == lru.entries_to_hold(16)
        assert group_counts(table, GROUPED) == {"127.0.15.5": 2, "127.0.15.6": 1}


def test_a_smaller_table_moves_groups_with_their_filter(no_bpf_leaks: None, pin_dir: Path) -> None:
    hosts = [f"127.0.14.{i}" for i in range(20, 30)]
    with Tracer(max_filters=16, ringbuf_size=4096, pin_dir=pin_dir) as t:
        t.open_maps().add([F.parse(x) for x in hosts])
    seeded_groups(pin_dir, 16)  # GROUPED takes slot 10
    with Tracer(max_filters=16, ringbuf_size=4096, pin_dir=pin_dir) as t:
        table = t.open_maps()
        assert table.rules.slots[F.parse(GROUPED)].index == 10
        table.remove([F.parse(x) for x in hosts])
    with Tracer(max_filters=4, ringbuf_size=4096, pin_dir=pin_dir) as t, Server("127.0.15.6") as s6:
        table = t.open_maps()
        assert table.rules.slots[F.parse(GROUPED)].index < 4
        assert group_counts(table, GROUPED) == {"127.0.15.5": 2, "127.0.15.6": 1}
        t.attach(log=quiet)
        connect_many(s6, B, 1)  # the moved groups count on
        assert group_counts(table, GROUPED) == {"127.0.15.5": 2, "127.0.15.6": 2}
        assert len(list(table.group_maps.groups.items())) == 2  # nothing left under the old slot
