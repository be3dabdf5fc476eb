"""A filter table that survives restarts (issue 14): --pin DIR against the real kernel.

In-process tests drive ttcp.rtt.tracer.Tracer with a pin directory (reuse,
migration to another size, a migration cut short between two renames,
counter slots moved below a smaller size, a stats map lost, a corrupt table,
the lock); command tests run `ttcp --pin` in a subprocess with real loopback
traffic (127.0.14.0/24) and restart it after SIGTERM and after SIGKILL.
Every test pins into a directory of its own under /sys/fs/bpf and removes it
afterwards, whatever happened.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cli_process import REPO, TtcpProcess, free_port
from tests.kernel import scaled
from tests.kernel_objects import held_ids
from tests.traffic import Server, connect_many
from ttcp import syscalls
from ttcp.elf_loader import ObjectLoader
from ttcp.errors import BpfError
from ttcp.kernel.uapi import MapFlag, MapType
from ttcp.obj.map_compat import Difference, IncompatibleMapError, MapShape, differences, only_size_differs
from ttcp.rtt import filters as F
from ttcp.rtt import pinning
from ttcp.rtt.filter_table import STATS_HEAD, CorruptTableError, KernelFilterTable
from ttcp.rtt.pinning import IncompatiblePinError, PinDirError, PinLockedError, PinnedTableTooBigError
from ttcp.rtt.tracer import TABLE_MAPS, Tracer, default_object

pytestmark = pytest.mark.kernel

A, B, C = "127.0.14.2", "127.0.14.3", "127.0.14.4"  # this file's client addresses
HOSTS = ObjectLoader(str(default_object())).maps["hosts"]  # the spec a pinned hosts map must meet


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    """A directory of this test's own in bpffs (bpffs refuses dots in names), removed afterwards."""
    path = Path("/sys/fs/bpf") / f"ttcp-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        assert not path.exists(), f"{path} is left behind"


def pins(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def pinned_id(path: Path) -> int:
    fd = syscalls.obj_get(path)
    try:
        return syscalls.map_info(fd).id
    finally:
        syscalls.close(fd)


def matches(table: KernelFilterTable) -> dict[str, int]:
    return {str(f): s.matches for f, s in table.stats(table.filters()).items()}


def traffic(srv: Server, **per_source: int) -> None:
    for src, n in per_source.items():
        connect_many(srv, src, n)


def quiet(message: str) -> None:
    pass


def seeded(pin_dir: Path, size: int, texts: list[str], remove: tuple[str, ...] = (), **conns: int) -> dict[str, int]:
    """A pinned table of `size` with the filters of `texts` (less `remove`), counting `conns`
    loopback connections per source; their counters, once that ttcp is gone."""
    with Tracer(max_filters=size, ringbuf_size=4096, pin_dir=pin_dir) as t, Server("127.0.0.1") as srv:
        table = t.open_maps()
        table.add([F.parse(x) for x in texts])
        if remove:
            table.remove([F.parse(x) for x in remove])
        t.attach(log=quiet)
        traffic(srv, **conns)
        return matches(table)


# ---- pure: the spec comparison ------------------------------------------------------------------


def test_differences_name_each_property() -> None:
    want = MapShape(MapType.HASH, 16, 16, 0, 1024)
    assert differences(want, want) == []
    found = MapShape(MapType.LPM_TRIE, 8, 16, MapFlag.NO_PREALLOC, 64)
    diffs = differences(want, found)
    assert [d.field for d in diffs] == ["map_type", "key_size", "flags", "max_entries"]
    assert [str(d) for d in diffs] == ["type LPM_TRIE (wanted HASH)", "key size 8 (wanted 16)",
                                       "flags NO_PREALLOC (wanted 0)", "max entries 64 (wanted 1024)"]
    assert str(Difference("flags", 0, 1 << 20 | 1)) == "flags NO_PREALLOC|0x100000 (wanted 0)"
    assert str(Difference("map_type", 1, 999)) == "type 999 (wanted HASH)"
    assert only_size_differs(differences(want, MapShape(MapType.HASH, 16, 16, 0, 8)))
    assert not only_size_differs(diffs) and not only_size_differs([])


# ---- the loader's hook ------------------------------------------------------------------------------


def test_loader_reuses_a_matching_map_and_refuses_another(no_bpf_leaks: None) -> None:
    with ObjectLoader(str(default_object())) as loader:
        spec = loader.maps["hosts"]
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
    ids = {name: pinned_id(pin_dir / name) for name in TABLE_MAPS}
    assert before == {A: 3, "dst 10.0.0.0/8 port 443": 0, "src 127.0.14.0/28": 2}  # a host beats a network
    assert pins(pin_dir) == sorted(TABLE_MAPS)  # the table only: no ring, no program, no .bss
    with Tracer(max_filters=16, ringbuf_size=4096, pin_dir=pin_dir) as t:
        table = t.open_maps()
        assert matches(table) == before
        assert {name: pinned_id(pin_dir / name) for name in TABLE_MAPS} == ids  # the same maps
        assert sorted(t.pins.reused if t.pins else []) == sorted(TABLE_MAPS)
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
            assert {syscalls.map_info(t.loader.map_fds[n]).max_entries for n in TABLE_MAPS} == {size}
            assert {pinned_id(pin_dir / n) for n in TABLE_MAPS} == {syscalls.map_info(t.loader.map_fds[n]).id
                                                                    for n in TABLE_MAPS}
        assert f"migrated hosts, nets, stats (now {size} entries)" in caplog.text
        assert pins(pin_dir) == sorted(TABLE_MAPS)  # no staging pin left
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
    for name in TABLE_MAPS:
        fd = syscalls.obj_get(pin_dir / name)
        sizes[name] = syscalls.map_info(fd).max_entries
        syscalls.close(fd)
    assert sorted(sizes.values()) == [8, 8, 32]  # one map replaced, two not: a mixed table
    for size in (8, 32):  # either size: a consistent table, and the mix is migrated
        with Tracer(max_filters=size, ringbuf_size=4096, pin_dir=pin_dir) as t:
            assert matches(t.open_maps()) == before
        assert pins(pin_dir) == sorted(TABLE_MAPS)


def test_a_smaller_table_moves_counter_slots_down(no_bpf_leaks: None, pin_dir: Path) -> None:
    hosts = [f"127.0.14.{i}" for i in range(20, 30)]
    before = seeded(pin_dir, 16, hosts, remove=tuple(hosts[:8]),  # 28 and 29 keep slots 8 and 9
                    **{"127.0.14.28": 2, "127.0.14.29": 1})
    with Tracer(max_filters=16, ringbuf_size=4096, pin_dir=pin_dir) as t:
        assert t.open_maps()._slots[F.parse("127.0.14.29")].index == 9
    with Tracer(max_filters=4, ringbuf_size=4096, pin_dir=pin_dir) as t, Server("127.0.0.1") as srv:
        table = t.open_maps()
        assert matches(table) == before and all(s.index < 4 for s in table._slots.values())
        t.attach(log=quiet)
        traffic(srv, **{"127.0.14.29": 1})  # the moved slot still counts
        assert matches(table)["127.0.14.29"] == 2


def test_a_lost_stats_map_is_restamped_so_filters_count_again(no_bpf_leaks: None, pin_dir: Path) -> None:
    with Tracer(max_filters=8, ringbuf_size=4096, pin_dir=pin_dir) as t:
        t.open_maps().add([F.parse(A)])
    (pin_dir / "stats").unlink()  # e.g. removed by hand, or never pinned (a crash at the first start)
    with Tracer(max_filters=8, ringbuf_size=4096, pin_dir=pin_dir) as t, Server("127.0.0.1") as srv:
        table = t.open_maps()
        slot = table._slots[F.parse(A)]
        assert {STATS_HEAD.unpack_from(r)[0] for r in table.stats_map.values(slot.index)} == {slot.gen}
        t.attach(log=quiet)
        traffic(srv, **{A: 2})
        assert matches(table) == {A: 2}


def test_a_corrupt_table_is_refused(no_bpf_leaks: None, pin_dir: Path) -> None:
    with Tracer(max_filters=8, ringbuf_size=4096, pin_dir=pin_dir) as t:
        table = t.open_maps()
        table.add([F.parse(A), F.parse(B)])
        slot = table._slots[F.parse(A)]
        table.hosts.put(F.host_key(F.parse(B)), F.VALUE.pack(slot.index, slot.gen, 128))  # another writer
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
    assert pins(pin_dir / "deeper" / "still") == sorted(TABLE_MAPS)


# ---- the command ----------------------------------------------------------------------------------


def api_json(t: TtcpProcess, path: str) -> Any:
    status, body = t.api("GET", path)
    assert status == 200, (path, status, body)
    return json.loads(body)


@dataclass(frozen=True)
class Shown:
    """One filter as the API shows it: matches, the closed histogram's count, the last match."""

    matches: int
    closed: int
    last_match_unix: float | None

    def __eq__(self, other: object) -> bool:  # the wall time of a kernel stamp is exact to a few µs
        return (isinstance(other, Shown) and (self.matches, self.closed) == (other.matches, other.closed)
                and (self.last_match_unix is None) == (other.last_match_unix is None)
                and abs((self.last_match_unix or 0) - (other.last_match_unix or 0)) < 0.005)


def filter_state(t: TtcpProcess) -> dict[str, Shown]:
    out = {}
    for entry in api_json(t, "/filters")["filters"]:
        one = api_json(t, "/filters/" + entry["filter"].replace(" ", "%20"))
        out[entry["filter"]] = Shown(entry["matches"], one["histograms"]["closed"]["count"],
                                     entry["last_match_unix"])
    return out


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ttcp", "--port", str(free_port()), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=scaled(30), check=False,
                          env=dict(os.environ, PYTHONPATH=REPO))


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert r.returncode == 1 and r.stdout == "", r
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and lines[-1].startswith("ttcp: "), r.stderr
    for needle in needles:
        assert needle in lines[-1], (needle, r.stderr)
    return lines[-1]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_filters_and_counters_survive_a_restart(pin_dir: Path, stop: int) -> None:
    with Server("127.0.0.1") as srv:
        with TtcpProcess("--pin", str(pin_dir), "--filter", A) as t:
            assert t.wait_stderr(f"filter table pinned in {pin_dir}: new hosts, nets, stats"), t.stderr
            assert t.api("PUT", "/filters", b"src 127.0.14.0/30\n")[0] == 204
            traffic(srv, **{A: 3, B: 2, C: 1})
            assert len(t.lines_until_quiet()) == 5  # C is outside both filters
            before = filter_state(t)
            if stop == signal.SIGKILL:
                t.proc.kill()
                t.proc.wait(10)
            else:
                assert t.stop(stop) == 0
        net = "src 127.0.14.0/30"
        assert [(x.matches, x.closed) for x in before.values()] == [(3, 3), (2, 2)]  # a host beats a network
        assert pins(pin_dir) == sorted(TABLE_MAPS)
        with TtcpProcess("--pin", str(pin_dir)) as t:  # at once: the lock went with the process
            assert t.wait_stderr("reused hosts, nets, stats"), t.stderr
            assert filter_state(t) == before
            assert json.loads(t.api("GET", "/")[1]) == [A, "src 127.0.14.0/30"]
            traffic(srv, **{A: 1})
            assert len(t.lines_until_quiet()) == 1  # the restored filters select again
            after = filter_state(t)
            assert after[net] == before[net] and after[A].matches == after[A].closed == 4
            assert (after[A].last_match_unix or 0) > (before[A].last_match_unix or 0)
            assert t.stop() == 0


def test_another_max_filters_migrates(pin_dir: Path) -> None:
    with Server("127.0.0.1") as srv:
        with TtcpProcess("--pin", str(pin_dir), "--max-filters", "8", "--filter", A, "--filter", B) as t:
            traffic(srv, **{A: 2, B: 1})
            t.lines_until_quiet()
            before = filter_state(t)
            assert t.stop() == 0
        for size in ("100", "2"):
            with TtcpProcess("--pin", str(pin_dir), "--max-filters", size) as t:
                assert t.wait_stderr(f"migrated hosts, nets, stats (now {size} entries)"), t.stderr
                assert filter_state(t) == before
                assert api_json(t, "/filters")["max_entries"] == int(size)
                assert t.stop() == 0
    line = one_line_error(run_cli("--pin", str(pin_dir), "--max-filters", "1"), "holds 2 filters",
                          "--max-filters 2 or more")
    assert str(pin_dir) in line
    assert pins(pin_dir) == sorted(TABLE_MAPS)


def test_an_incompatible_pin_is_one_line_naming_the_way_out(pin_dir: Path) -> None:
    pin_dir.mkdir()
    foreign = syscalls.map_create(MapType.HASH, 8, HOSTS.value_size, 1024, name="foreign")
    try:
        syscalls.obj_pin(foreign, pin_dir / "hosts")
    finally:
        syscalls.close(foreign)
    line = one_line_error(run_cli("--pin", str(pin_dir)), f"{pin_dir}/hosts: key size 8 (wanted {HOSTS.key_size})",
                          "--pin-reset", f"rm -r {pin_dir}")
    assert len(line) < 400
    assert pins(pin_dir) == ["hosts"]  # nothing changed
    with TtcpProcess("--pin", str(pin_dir), "--pin-reset", "--filter", A) as t:
        assert t.wait_stderr(f"removed the pinned filter table in {pin_dir} (hosts)"), t.stderr
        assert json.loads(t.api("GET", "/")[1]) == [A]
        assert t.stop() == 0
    assert pinned_id(pin_dir / "hosts") > 0 and pins(pin_dir) == sorted(TABLE_MAPS)


def test_a_second_ttcp_on_the_directory_refuses(pin_dir: Path) -> None:
    with TtcpProcess("--pin", str(pin_dir), "--filter", A) as first:
        one_line_error(run_cli("--pin", str(pin_dir), "--filter", B),
                       f"{pin_dir} is in use by another ttcp (pid {first.proc.pid})", "another --pin")
        assert json.loads(first.api("GET", "/")[1]) == [A]  # the first one is untouched
        first.proc.kill()
        first.proc.wait(10)
    with TtcpProcess("--pin", str(pin_dir), "--filter", B) as t:
        assert json.loads(t.api("GET", "/")[1]) == [A, B]
        assert t.stop() == 0


def _bpffs_map_ids(root: Path = Path("/sys/fs/bpf")) -> dict[int, str]:
    """Map id -> path of every map pinned in bpffs (other objects skipped)."""
    found = {}
    for entry in root.rglob("*"):
        if entry.is_dir():
            continue
        try:
            fd = syscalls.obj_get(entry)
        except BpfError as e:  # gone meanwhile, or a file the kernel made (maps.debug)
            if e.errno not in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EINVAL):
                raise
            continue
        try:
            found[syscalls.map_info(fd).id] = str(entry)
        except BpfError as e:  # a program or link
            if e.errno != errno.EINVAL:
                raise
        finally:
            syscalls.close(fd)
    return found


def test_without_pin_nothing_is_left_in_bpffs() -> None:
    before = _bpffs_map_ids()
    with TtcpProcess("--filter", A) as t:
        held = held_ids(t.proc.pid)["map"]
        assert len(held) >= 5  # hosts, nets, stats, events, drops, .bss
        assert t.stop() == 0
    pinned = _bpffs_map_ids()
    assert not held & set(pinned), {i: pinned[i] for i in held & set(pinned)}
    assert not [p for i, p in pinned.items() if i not in before and re.search(r"/(hosts|nets|stats)$", p)]


def _on_read_only_bpffs(mnt: Path, pin: Path) -> subprocess.CompletedProcess[str]:
    """`ttcp --pin PIN` with a read-only bpffs of its own at MNT, in a private mount
    namespace (the mount goes with the process)."""
    script = (f"mount -t bpf -o ro bpf {mnt} && exec {sys.executable} -m ttcp --port {free_port()} "
              f"--pin {pin}")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], cwd=REPO,
                          capture_output=True, text=True, timeout=scaled(30), check=False,
                          env=dict(os.environ, PYTHONPATH=REPO))


def test_pin_outside_bpffs_or_read_only_is_one_line(tmp_path: Path) -> None:
    one_line_error(run_cli("--pin", str(tmp_path / "ttcp")), "is not in a BPF file system",
                   "mount -t bpf bpf /sys/fs/bpf", "-v /sys/fs/bpf:/sys/fs/bpf")
    mnt = tmp_path / "bpffs"
    mnt.mkdir()
    one_line_error(_on_read_only_bpffs(mnt, mnt / "ttcp"), f"cannot create {mnt}/ttcp", "read-write")
    one_line_error(_on_read_only_bpffs(mnt, mnt), f"{mnt} is not writable", "read-write")
    assert not os.path.ismount(mnt)


def test_pin_reset_needs_pin() -> None:
    r = run_cli("--pin-reset")
    assert r.returncode == 2 and "--pin-reset needs --pin DIR" in r.stderr
