"""The filter table's rules on their own (ttcp.rtt.table_rules): slots and their
reuse, generations, the counts of kinds and host bits behind cfg, the bound on
stale host bits, all-or-nothing planning, a corrupt table refused, and the
moves that fit a table into fewer slots. No maps, no root: what the rules
decide is what KernelFilterTable writes (tests/kernel/test_filter_kinds.py
reads the kernel's cfg through the same changes)."""

from __future__ import annotations

import struct

import pytest

from ttcp.rtt import filters as F
from ttcp.rtt.filters import Filter
from ttcp.rtt.table_rules import (
    CONFIG,
    LINGER_S,
    STALE_HOST_BITS,
    Config,
    CorruptTableError,
    NotInTableError,
    Resolution,
    SelectorHeldError,
    Slot,
    TableFullError,
    TableRules,
    WorkloadState,
    Write,
    plan_compaction,
)


def f(text: str) -> Filter:
    return F.parse(text)


def add(rules: TableRules, *texts: str) -> list[tuple[Filter, Slot]]:
    """Plan and apply an add, as a table does once its writes succeeded."""
    planned = rules.plan_add([f(t) for t in texts])
    for flt, slot in planned:
        rules.added(flt, slot)
    rules.changed()
    return planned


def remove(rules: TableRules, *texts: str) -> list[Slot]:
    slots = [rules.removed(flt) for flt in rules.plan_remove([f(t) for t in texts])]
    rules.changed()
    return slots


def write(rules: TableRules, adding: tuple[str, ...] = ()) -> Config | None:
    """What a table writes to cfg now (None: nothing), as KernelFilterTable._write_config does."""
    cfg = rules.config_to_write([f(t) for t in adding])
    if cfg is not None:
        rules.config_written(cfg)
    return cfg


def hosts(n: int, side: str = "src") -> list[str]:
    """n exact addresses of distinct host bits."""
    out: list[str] = []
    bits: set[int] = set()
    for i in range(1, 1 << 16):
        addr = f"10.{i >> 8}.{i & 0xFF}.1"
        bit = F.host_bit(f(addr).addr)
        if bit not in bits:
            bits.add(bit)
            out.append(f"{side} {addr}")
            if len(out) == n:
                return out
    raise AssertionError("not enough distinct host bits")


# ---- slots and generations ------------------------------------------------------------------


def test_slots_lowest_first_and_the_last_freed_reused_first() -> None:
    rules = TableRules(8, 8)
    planned = add(rules, "10.0.0.1", "10.0.0.2", "dst 10.9.0.0/16")
    assert [s for _, s in planned] == [Slot(0, 1), Slot(1, 2), Slot(2, 3)]
    assert remove(rules, "10.0.0.2", "10.0.0.1") == [Slot(1, 2), Slot(0, 1)]
    assert [s for _, s in add(rules, "10.0.0.3", "10.0.0.4", "10.0.0.5")] == [Slot(0, 4), Slot(1, 5), Slot(3, 6)]


def test_a_readded_filter_gets_a_new_generation() -> None:
    rules = TableRules(4, 4)
    (_, first), = add(rules, "10.0.0.1")
    remove(rules, "10.0.0.1")
    (_, again), = add(rules, "10.0.0.1")
    assert again.index == first.index and again.gen > first.gen  # its old counters never count again


def test_generations_go_on_from_a_held_table() -> None:
    held = {f("10.0.0.1"): Slot(3, 17), f("dst 10.0.0.0/8"): Slot(0, 40)}
    rules = TableRules(8, 8, held)
    assert len(rules) == 2 and dict(rules.slots) == held
    assert [s for _, s in add(rules, "10.0.0.2", "10.0.0.3")] == [Slot(1, 41), Slot(2, 42)]


def test_a_planned_slot_must_be_taken_in_order() -> None:
    rules = TableRules(4, 4)
    (a, sa), (b, sb) = rules.plan_add([f("10.0.0.1"), f("10.0.0.2")])
    with pytest.raises(ValueError, match="not planned"):
        rules.added(b, sb)
    rules.added(a, sa)
    with pytest.raises(ValueError, match="not planned"):
        rules.added(a, sa)


# ---- all or nothing --------------------------------------------------------------------------


def test_a_request_that_does_not_fit_changes_nothing() -> None:
    rules = TableRules(3, 8)
    add(rules, "10.0.0.1", "10.0.0.2")
    version, listed = rules.version, rules.filters()
    with pytest.raises(TableFullError, match=r"holds 3 entries \(2 in use, this request adds 2\)"):
        rules.plan_add([f("10.0.0.3"), f("10.0.0.4"), f("10.0.0.1")])
    assert rules.version == version and rules.filters() == listed
    assert [s for _, s in add(rules, "10.0.0.3")] == [Slot(2, 3)]  # the slots were not taken


def test_fewer_slots_than_entries_bound_the_table_too() -> None:
    rules = TableRules(8, 2)
    with pytest.raises(TableFullError):
        rules.plan_add([f(f"10.0.0.{i}") for i in range(1, 4)])


def test_present_filters_and_repeats_are_planned_once() -> None:
    rules = TableRules(4, 4)
    add(rules, "10.0.0.1")
    planned = rules.plan_add([f("10.0.0.2"), f("10.0.0.1"), f("::ffff:10.0.0.2"), f("10.0.0.3")])
    assert [str(x) for x, _ in planned] == ["10.0.0.2", "10.0.0.3"]
    assert rules.plan_add([f("10.0.0.1"), f("src 10.0.0.1")]) == []


def test_a_removal_naming_an_absent_filter_changes_nothing() -> None:
    rules = TableRules(4, 4)
    add(rules, "10.0.0.1", "10.0.0.2")
    with pytest.raises(NotInTableError) as info:
        rules.plan_remove([f("10.0.0.1"), f("10.0.0.9"), f("dst 10.0.0.2")])
    assert [str(x) for x in info.value.missing] == ["10.0.0.9", "dst 10.0.0.2"]
    assert len(rules) == 2 and rules.plan_remove([f("10.0.0.2"), f("10.0.0.2")]) == [f("10.0.0.2")]


def test_the_version_and_listing_follow_completed_changes() -> None:
    rules = TableRules(8, 8)
    assert rules.version == 0
    add(rules, "dst 10.20.0.0/16 port 5432", "2001:db8::1", "10.178.0.5")
    assert rules.version == 1
    assert [str(x) for x in rules.filters()] == ["10.178.0.5", "2001:db8::1", "dst 10.20.0.0/16 port 5432"]
    (flt, slot), = rules.plan_add([f("10.0.0.1")])
    rules.added(flt, slot)
    rules.removed(flt)  # rolled back: no change
    assert rules.version == 1 and f("10.0.0.1") not in rules


# ---- cfg: kinds and host bits ----------------------------------------------------------------


def test_kinds_are_counted_and_always_exact() -> None:
    rules = TableRules(16, 16)
    src_host, dst_net = f("10.0.0.1"), f("dst 10.0.0.0/8 port 80")
    texts = ("10.0.0.1", "10.0.0.2", "dst 10.0.0.0/8 port 80")
    cfg = write(rules, texts)
    assert cfg is not None and cfg.kinds == src_host.kind_bit | dst_net.kind_bit
    add(rules, *texts)
    assert write(rules) is None  # the pre-add cfg already had them
    remove(rules, "10.0.0.1")
    assert write(rules) is None  # another src host keeps the kind
    remove(rules, "dst 10.0.0.0/8 port 80")
    cfg = write(rules)
    assert cfg is not None and cfg.kinds == src_host.kind_bit  # the last of a kind: written at once
    remove(rules, "10.0.0.2")
    assert write(rules) == Config(0, (0, 0))  # kinds changed: the stale bits go too


def test_host_bits_are_set_before_an_add_and_kept_while_a_filter_needs_them() -> None:
    rules = TableRules(16, 16)
    a, b = f("10.0.0.1"), f("dst 10.0.0.1")
    cfg = write(rules, ("10.0.0.1", "dst 10.0.0.1"))
    assert cfg is not None
    assert cfg.host_bits == (1 << F.host_bit(a.addr), 1 << F.host_bit(b.addr))  # one bitmap a side
    add(rules, "10.0.0.1", "dst 10.0.0.1", "src 10.0.0.0/8")
    assert write(rules) is not None  # a new kind (the network)
    assert rules.config().host_bits == cfg.host_bits  # a network sets no host bit


def test_removed_addresses_leave_at_most_the_stale_bound_of_bits() -> None:
    rules = TableRules(512, 512)
    texts = hosts(STALE_HOST_BITS + 10)  # the last ten keep the kind in use
    assert write(rules, tuple(texts)) is not None
    add(rules, *texts)
    assert write(rules) is None
    written = rules.config()
    for i, text in enumerate(texts):
        remove(rules, text)
        cfg = write(rules)
        if i < STALE_HOST_BITS:
            assert cfg is None, i  # a stale bit only costs a lookup that misses
        else:
            assert cfg == rules.config() and cfg != written  # past the bound: written exact
            break
    else:
        raise AssertionError("the bound was never reached")


def test_a_missing_bit_is_always_written() -> None:
    rules = TableRules(8, 8)
    held, new = hosts(2)  # of distinct bits
    add(rules, held)
    write(rules)
    remove(rules, held)
    assert write(rules) is not None  # the kind went
    add(rules, held)
    assert write(rules) is not None  # the kind is back
    cfg = write(rules, (new,))
    assert cfg is not None and cfg.host_bits[0] == 1 << F.host_bit(f(held).addr) | 1 << F.host_bit(f(new).addr)


def test_config_packs_as_struct_config() -> None:
    cfg = Config(0b101, (1 << 0 | 1 << 2047, 1 << 8), wkinds=1 << 5, cgroup_levels=1 << 3)
    raw = cfg.pack()
    assert len(raw) == CONFIG.size == 3 * 4 + 2 * 256
    kinds, wkinds, levels, bits = CONFIG.unpack(raw)
    assert kinds == 0b101 and bits[0] == 1 and bits[255] == 0x80 and bits[256 + 1] == 1
    assert (wkinds, levels) == (1 << 5, 1 << 3)
    assert Config.unpack(raw) == cfg


# ---- workloads -------------------------------------------------------------------------------


def cg(path: str, cgroup_id: int | None) -> Resolution:
    return Resolution.cgroup(path, cgroup_id)


def add_w(rules: TableRules, resolutions: dict[str, Resolution]) -> list[Write]:
    """Plan and apply an add of filters with workloads (text -> its resolution); the writes."""
    planned = rules.plan_add([f(t) for t in resolutions])
    for flt, slot in planned:
        rules.added(flt, slot, resolutions[str(flt)] if flt.workload is not None else None)
    rules.changed()
    return rules.workload_writes()


def remove_w(rules: TableRules, *texts: str) -> list[Write]:
    for flt in rules.plan_remove([f(t) for t in texts]):
        rules.removed(flt)
    rules.changed()
    return rules.workload_writes()


def entry(rules: TableRules, text: str, up: int = 0, own: str | None = None) -> bytes:
    """The struct workload of the selector of filter `text`, with filter `own` as its own."""
    flt = f(text)
    sel = rules.workloads.selector(flt)
    assert sel is not None
    own_value = rules.values()[f(own)] if own is not None else bytes(F.VALUE.size)
    return F.WORKLOAD.pack(up, rules.workloads.wid(sel), own_value)


def test_a_workload_alone_is_one_entry_with_its_own_filter() -> None:
    rules = TableRules(16, 16)
    writes = add_w(rules, {"cgroup /a": cg("/a", 10)})
    assert writes == [Write("cgroups", struct.pack("=Q", 10), entry(rules, "cgroup /a", own="cgroup /a"))]
    value = rules.values()[f("cgroup /a")]
    assert F.VALUE.unpack(value)[2] == 0  # no address: prefix 0


def test_a_workloads_address_filters_are_keys_under_its_wid_before_its_entry() -> None:
    rules = TableRules(16, 16)
    writes = add_w(rules, {"cgroup /a dst 10.0.0.0/8 port 80": cg("/a", 10), "cgroup /a 10.1.1.1": cg("/a", 10)})
    wid = rules.workloads.wid(("cgroup", "/a"))
    assert wid == 1
    assert [w.map for w in writes] == ["nets", "nets", "cgroups"]  # reachable only once all are in
    assert writes[0] == Write("nets", F.net_key(f("dst 10.0.0.0/8 port 80"), wid),
                              rules.values()[f("cgroup /a dst 10.0.0.0/8 port 80")])
    assert writes[2].value == entry(rules, "cgroup /a 10.1.1.1")  # no own filter: gen 0
    assert remove_w(rules, "cgroup /a 10.1.1.1") == [Write("nets", F.net_key(f("10.1.1.1"), wid), None)]
    writes = remove_w(rules, "cgroup /a dst 10.0.0.0/8 port 80")
    assert [(w.map, w.value) for w in writes] == [("cgroups", None), ("nets", None)]  # unreachable first


def test_wids_are_shared_by_a_workloads_filters_and_reused() -> None:
    rules = TableRules(16, 16)
    add_w(rules, {"cgroup /a": cg("/a", 10), "cgroup /a dst ::1": cg("/a", 10), "netns 99": Resolution.netns(99)})
    assert rules.workloads.wid(("cgroup", "/a")) == 1 and rules.workloads.wid(("netns", "99")) == 2
    remove_w(rules, "cgroup /a", "cgroup /a dst ::1")
    assert not rules.workloads.holds(("cgroup", "/a")) and not rules.in_use(f("cgroup /a").workload)
    add_w(rules, {"cgroup /b": cg("/b", 11)})
    assert rules.workloads.wid(("cgroup", "/b")) == 1  # the lowest free wid again


def test_a_pending_cgroup_has_its_keys_and_gets_its_entry_when_it_appears() -> None:
    rules = TableRules(16, 16)
    writes = add_w(rules, {"cgroup /a dst 10.0.0.1": cg("/a", None), "cgroup /a": cg("/a", None)})
    assert [w.map for w in writes] == ["nets"]  # ready, unreachable
    assert rules.workloads.state(f("cgroup /a")).state == "pending"
    assert rules.workloads.resolved(("cgroup", "/a"), 40)
    assert rules.workload_writes() == [Write("cgroups", struct.pack("=Q", 40),
                                             entry(rules, "cgroup /a", own="cgroup /a"))]
    assert rules.workloads.state(f("cgroup /a")) == WorkloadState("cgroup", "/a", "resolved", 40)
    assert not rules.workloads.resolved(("cgroup", "/a"), 40)  # no change, nothing to write
    assert rules.workloads.resolved(("cgroup", "/a"), 41, now=100.0)  # removed and created again
    writes = rules.workload_writes()
    value = entry(rules, "cgroup /a", own="cgroup /a")
    assert writes == [Write("cgroups", struct.pack("=Q", 41), value)]  # the old id lingers: its sockets
    assert rules.workloads.next_expiry() == 100.0 + LINGER_S
    assert rules.workloads.resolved(("cgroup", "/a"), None, now=105.0)  # removed again, for now
    assert rules.workload_writes() == []  # both ids linger
    assert not rules.workloads.expire(100.0 + LINGER_S - 1)
    assert rules.workloads.expire(100.0 + LINGER_S)
    assert rules.workload_writes() == [Write("cgroups", struct.pack("=Q", 40), None)]
    assert rules.workloads.expire(105.0 + LINGER_S)
    assert rules.workload_writes() == [Write("cgroups", struct.pack("=Q", 41), None)]
    assert rules.workloads.next_expiry() is None and rules.workloads.state(f("cgroup /a")).state == "pending"


def test_a_removed_filter_takes_its_lingering_ids_with_it() -> None:
    rules = TableRules(16, 16)
    add_w(rules, {"cgroup /a": cg("/a", 40)})
    rules.workloads.resolved(("cgroup", "/a"), 41, now=0.0)
    rules.workload_writes()
    writes = remove_w(rules, "cgroup /a")
    assert sorted(w.key for w in writes) == [struct.pack("=Q", 40), struct.pack("=Q", 41)]
    assert all(w.value is None for w in writes) and rules.workloads.next_expiry() is None


def test_a_cgroup_entry_points_up_to_the_nearest_cgroup_with_filters() -> None:
    rules = TableRules(16, 16)
    add_w(rules, {"cgroup /a": cg("/a", 10), "cgroup /a/b/c": cg("/a/b/c", 30), "cgroup /x": cg("/x", 50)})
    key30 = struct.pack("=Q", 30)
    assert rules.workloads.desired(("cgroup", "/a/b/c"), rules.values())["cgroups", key30] == \
        entry(rules, "cgroup /a/b/c", up=10, own="cgroup /a/b/c")
    writes = add_w(rules, {"cgroup /a/b dst 10.0.0.0/8": cg("/a/b", 20)})
    assert Write("cgroups", key30, entry(rules, "cgroup /a/b/c", up=20, own="cgroup /a/b/c")) in writes
    writes = remove_w(rules, "cgroup /a/b dst 10.0.0.0/8")
    assert Write("cgroups", key30, entry(rules, "cgroup /a/b/c", up=10, own="cgroup /a/b/c")) in writes
    assert rules.workloads.resolved(("cgroup", "/a"), 11)  # /a created again: those below point at it
    writes = rules.workload_writes()
    assert Write("cgroups", key30, entry(rules, "cgroup /a/b/c", up=11, own="cgroup /a/b/c")) in writes
    assert all(w.key != struct.pack("=Q", 50) for w in writes)  # /x is not below /a
    assert rules.workloads.resolved(("cgroup", "/a"), None)  # pending: skipped over
    writes = rules.workload_writes()
    assert Write("cgroups", key30, entry(rules, "cgroup /a/b/c", up=0, own="cgroup /a/b/c")) in writes


def test_two_names_of_one_namespace_share_it_and_one_is_shadowed() -> None:
    rules = TableRules(16, 16)
    ns = Resolution.netns(4026532325)
    writes = add_w(rules, {"netns /run/netns/web": ns, "netns 4026532325": ns,
                           "netns 4026532325 dst 10.0.0.1": ns, "netns /run/netns/web dst 10.0.0.1": ns,
                           "netns /run/netns/web dst 10.0.0.2": ns})
    assert rules.workloads.state(f("netns /run/netns/web")).state == "resolved"
    shadowed = rules.workloads.state(f("netns 4026532325"))
    assert shadowed == WorkloadState("netns", "4026532325", "shadowed", 4026532325, "netns /run/netns/web")
    assert rules.workloads.state(f("netns /run/netns/web dst 10.0.0.1")).state == "shadowed"
    assert rules.workloads.state(f("netns /run/netns/web dst 10.0.0.2")).state == "resolved"  # its key is its own
    key = struct.pack("=I", 4026532325)
    assert [w.map for w in writes] == ["nets", "nets", "netns"]
    assert writes[-1] == Write("netns", key, entry(rules, "netns /run/netns/web", own="netns /run/netns/web"))
    writes = remove_w(rules, "netns /run/netns/web", "netns 4026532325 dst 10.0.0.1")
    wid = rules.workloads.wid(("netns", "4026532325"))
    assert writes == [  # the shadowed ones take over, each with one write in place
        Write("nets", F.net_key(f("dst 10.0.0.1"), wid), rules.values()[f("netns /run/netns/web dst 10.0.0.1")]),
        Write("netns", key, entry(rules, "netns 4026532325", own="netns 4026532325"))]
    assert rules.workloads.state(f("netns 4026532325")).state == "resolved"


def test_workloads_in_cfg_kinds_and_levels() -> None:
    rules = TableRules(16, 16)
    cfg = write(rules, ("cgroup /a/b dst 10.0.0.0/8", "netns 7", "10.0.0.1"))
    assert cfg is not None
    assert cfg.kinds == F.KIND_CGROUP | F.KIND_NETNS | f("10.0.0.1").kind_bit
    assert cfg.wkinds == f("cgroup /a/b dst 10.0.0.0/8").kind_bit == f("dst 10.0.0.0/8").kind_bit
    assert cfg.cgroup_levels == 1 << 2
    assert cfg.host_bits == (1 << F.host_bit(f("10.0.0.1").addr), 0)  # a workload's exact address sets no bit
    add_w(rules, {"cgroup /a/b dst 10.0.0.0/8": cg("/a/b", None), "netns 7": Resolution.netns(7),
                  "cgroup /": cg("/", 1), "cgroup /a dst 10.0.0.5 port 9": cg("/a", 2)})
    cfg = rules.config()
    assert cfg.cgroup_levels == 1 << 0 | 1 << 1 | 1 << 2  # a pending cgroup's level too
    assert cfg.wkinds == f("dst 10.0.0.0/8").kind_bit | f("cgroup /a dst 10.0.0.5 port 9").kind_bit
    assert f("cgroup /a dst 10.0.0.5 port 9").kind_bit == f("dst 10.0.0.0/8 port 9").kind_bit  # a net kind
    remove_w(rules, "cgroup /a/b dst 10.0.0.0/8", "cgroup /a dst 10.0.0.5 port 9", "netns 7")
    assert rules.config() == Config(F.KIND_CGROUP, (0, 0), 0, 1)


def test_a_workload_part_is_resolved_once_while_filters_name_it() -> None:
    rules = TableRules(16, 16)
    add_w(rules, {"cgroup /a": cg("/a", 10), "cgroup /a dst 10.0.0.1": cg("/a", 10)})
    w = f("cgroup /a").workload
    assert rules.in_use(w) and rules.workloads.resolution_of(w) == cg("/a", 10)
    remove_w(rules, "cgroup /a")
    assert rules.in_use(w)
    remove_w(rules, "cgroup /a dst 10.0.0.1")
    assert not rules.in_use(w) and rules.workloads.resolution_of(w) is None


def test_a_workload_filter_needs_its_resolution() -> None:
    rules = TableRules(16, 16)
    (flt, slot), = rules.plan_add([f("cgroup /a")])
    with pytest.raises(ValueError, match="a resolution goes with a workload"):
        rules.added(flt, slot)
    (flt, slot), = rules.plan_add([f("10.0.0.1")])
    with pytest.raises(ValueError, match="a resolution goes with a workload"):
        rules.added(flt, slot, cg("/a", 1))


# ---- a held table, and fewer slots -------------------------------------------------------------


def test_a_corrupt_held_table_is_refused() -> None:
    with pytest.raises(CorruptTableError, match="count into the same slot"):
        TableRules(8, 8, {f("10.0.0.1"): Slot(2, 1), f("10.0.0.2"): Slot(2, 5)})
    with pytest.raises(CorruptTableError, match="slot 9, past the 8 slots"):
        TableRules(8, 8, {f("10.0.0.1"): Slot(9, 1)})


def test_compaction_moves_only_slots_past_the_limit_to_the_lowest_free() -> None:
    held = {f("10.0.0.1"): Slot(0, 1), f("10.0.0.2"): Slot(9, 2), f("10.0.0.3"): Slot(5, 3),
            f("10.0.0.4"): Slot(2, 4)}
    moves = plan_compaction(held, 4)
    assert [(str(x), old.index, new) for x, old, new in moves] == [("10.0.0.3", 5, 1), ("10.0.0.2", 9, 3)]
    assert all(old.gen == held[x].gen for x, old, _ in moves)  # counters move with their generation
    assert plan_compaction(held, 10) == []
    with pytest.raises(TableFullError):
        plan_compaction(held, 3)


# ---- breakdowns: one filter per selector ----------------------------------------------------


def test_a_selector_held_with_another_breakdown_is_refused_naming_the_holder() -> None:
    rules = TableRules(8, 8)
    add(rules, "dst 10.20.0.0/16 port 5432")
    for text in ("dst 10.20.0.0/16 port 5432 by raddr", "dst 10.20.0.0/16 port 5432 by rport"):
        with pytest.raises(SelectorHeldError, match="holds dst 10.20.0.0/16 port 5432,") as e:
            rules.plan_add([f(text)])
        assert e.value.held == f("dst 10.20.0.0/16 port 5432")
    assert rules.holder(f("dst 10.20.0.0/16 port 5432 by raddr")) == f("dst 10.20.0.0/16 port 5432")
    remove(rules, "dst 10.20.0.0/16 port 5432")
    add(rules, "dst 10.20.0.0/16 port 5432 by raddr")  # once it is gone, with a breakdown
    with pytest.raises(SelectorHeldError):
        rules.plan_add([f("dst 10.20.0.0/16 port 5432")])
    assert rules.plan_add([f("dst 10.20.0.0/16 port 5432 by raddr")]) == []  # itself: held, nothing to do


def test_one_request_cannot_name_a_selector_twice() -> None:
    rules = TableRules(8, 8)
    with pytest.raises(SelectorHeldError, match="10.0.0.1 by rport: the filter table holds 10.0.0.1 by raddr"):
        rules.plan_add([f("10.0.0.1 by raddr"), f("10.0.0.1 by rport")])
    assert rules.plan_add([f("10.0.0.1 by raddr"), f("10.0.0.1 by raddr")]) == [(f("10.0.0.1 by raddr"), Slot(0, 1))]


def test_a_breakdowns_value_and_its_kinds() -> None:
    rules = TableRules(8, 8)
    add(rules, "dst 10.0.0.0/8 by raddr/24", "src 10.1.0.0/16 by netns")
    values = rules.values()
    assert F.VALUE.unpack(values[f("dst 10.0.0.0/8 by raddr/24")])[2:] == (104, 1, 120, 24)
    assert F.VALUE.unpack(values[f("src 10.1.0.0/16 by netns")])[2:] == (112, 6, 0, 0)
    # the kinds do not change with a breakdown: the same lookups
    assert rules.config().kinds == f("dst 10.0.0.0/8").kind_bit | f("src 10.1.0.0/16").kind_bit


def test_a_held_table_with_two_filters_of_one_selector_is_corrupt() -> None:
    with pytest.raises(CorruptTableError, match="one kernel key"):
        TableRules(8, 8, {f("10.0.0.1 by raddr"): Slot(0, 1), f("10.0.0.1"): Slot(1, 2)})
