"""--filters-file against the kernel: the directory watch (inotify) decides when the
file is read again, through every way a file gets replaced, and each reload is a
diff on the table in the program's maps, so a filter that stays keeps counting
into the same histograms while real connections come and go."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.tracing import collect
from tests.support.traffic import Server, connect_many
from ttcp.rtt import filters as F
from ttcp.rtt.filters_sync import FiltersFile
from ttcp.rtt.tracer import Tracer

pytestmark = pytest.mark.kernel


@pytest.fixture
def tracer(no_bpf_leaks: None) -> Iterator[Tracer]:
    with Tracer(max_filters=16) as t:
        t.open_maps()
        t.attach("tp_btf", log=lambda msg: None)  # every kernel ttcp supports has it
        yield t


def matches(t: Tracer, text: str) -> int:
    assert t.table is not None
    return t.table.stats([F.parse(text)])[F.parse(text)].matches


def texts(t: Tracer) -> set[str]:
    assert t.table is not None
    return {str(f) for f in t.table.filters()}


@contextlib.contextmanager
def watched(path: Path, t: Tracer, content: str | None = None) -> Iterator[FiltersFile]:
    """The file (written first, given `content`) applied to t's table and watched."""
    if content is not None:
        path.write_text(content)
    assert t.table is not None
    source = FiltersFile(path, t.table)
    source.start()
    try:
        assert not source.changed()  # nothing happened since
        yield source
    finally:
        source.close()


def test_a_rewrite_is_a_diff_and_what_stays_keeps_counting(tracer: Tracer, tmp_path: Path) -> None:
    path = tmp_path / "filters"
    with watched(path, tracer, "127.0.70.1\n127.0.70.2\n") as source:
        with Server("127.0.0.1") as srv:
            connect_many(srv, "127.0.70.1", 3)
            connect_many(srv, "127.0.70.2", 2)
            collect(tracer)
            tmp = tmp_path / "filters.new"
            tmp.write_text("127.0.70.1\ndst 127.0.0.1 port 9\n")  # written beside, then renamed over
            assert source.changed()  # the CLOSE_WRITE of filters.new: read (no change to filters yet)
            os.rename(tmp, path)
            assert source.changed() and source.reload()
            assert texts(tracer) == {"127.0.70.1", "dst 127.0.0.1 port 9"}
            assert matches(tracer, "127.0.70.1") == 3  # the same slot, the same counters
            connect_many(srv, "127.0.70.1", 1)
            connect_many(srv, "127.0.70.2", 4)  # no longer selected
            collect(tracer)
        assert matches(tracer, "127.0.70.1") == 4


def test_a_configmap_update_swaps_the_data_symlink(tracer: Tracer, tmp_path: Path) -> None:
    """What kubelet does to a mounted ConfigMap: the key is a symlink through `..data`, a
    symlink to a timestamped directory; an update writes a new directory, points a new
    `..data_tmp` at it, renames that over `..data` and removes the old directory."""
    (tmp_path / "..2026_01_01_00_00_00.1").mkdir()
    (tmp_path / "..2026_01_01_00_00_00.1" / "filters").write_text("127.0.71.1\n")
    (tmp_path / "..data").symlink_to("..2026_01_01_00_00_00.1")
    (tmp_path / "filters").symlink_to("..data/filters")
    with watched(tmp_path / "filters", tracer) as source:
        assert texts(tracer) == {"127.0.71.1"}
        new = tmp_path / "..2026_01_01_00_01_00.2"
        new.mkdir()
        (new / "filters").write_text("127.0.71.1\nsrc 127.0.71.0/24 port 443\n")
        source.changed()  # the new directory's events: a read here would see the old version
        source.reload()
        assert texts(tracer) == {"127.0.71.1"}
        (tmp_path / "..data_tmp").symlink_to(new.name)
        os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
        assert source.changed() and source.reload()
        assert texts(tracer) == {"127.0.71.1", "src 127.0.71.0/24 port 443"}
        version = source.status().version
        (tmp_path / "..2026_01_01_00_00_00.1" / "filters").unlink()
        (tmp_path / "..2026_01_01_00_00_00.1").rmdir()
        assert source.changed() and source.reload()  # the old directory going: the same content
        assert source.status().version == version and source.reload_ok


def test_deleted_and_created_again(tracer: Tracer, tmp_path: Path) -> None:
    path = tmp_path / "filters"
    with watched(path, tracer, "127.0.72.1\n") as source:
        path.unlink()
        assert source.changed() and not source.reload()
        error = source.status().error
        assert error is not None and "missing" in error.message and texts(tracer) == {"127.0.72.1"}
        with open(path, "w") as f:  # created: not read while its writer may still be writing
            f.write("127.0.72.1\n")
            f.flush()
            assert not source.changed()
            f.write("127.0.72.2\n")
        assert source.changed() and source.reload()  # the writer closed it
        assert texts(tracer) == {"127.0.72.1", "127.0.72.2"} and source.reload_ok


def test_a_bad_line_written_in_place_changes_nothing(tracer: Tracer, tmp_path: Path) -> None:
    path = tmp_path / "filters"
    with watched(path, tracer, "127.0.73.1\n") as source:
        path.write_text("127.0.73.1\n127.0.73.2/24\n")
        assert source.changed() and not source.reload()
        error = source.status().error
        assert error is not None and error.line == 2 and "host bits" in error.message
        assert texts(tracer) == {"127.0.73.1"} and source.errors_total == 1


def test_the_directory_going_away_is_reported(tracer: Tracer, tmp_path: Path) -> None:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "filters").write_text("127.0.74.1\n")
    with watched(folder / "filters", tracer) as source:
        (folder / "filters").unlink()
        folder.rmdir()
        assert source.changed()
        source.reload()
        assert source.lost_watch()
        error = source.status().error
        assert error is not None and "no longer seen" in error.message
        assert texts(tracer) == {"127.0.74.1"}
