"""--filters-file: the format and the diff (pure), what a reload does to a table, and
what the API may do to the file's filters (a real server, the in-memory table).

The reloads here are called directly; tests/kernel/test_filters_watch.py has the
directory watch decide them, on the table in the program's maps, and
tests/system/test_filters_file_command.py runs the command.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support.api import Client, counters, f, run, texts
from tests.support.memory_table import MemoryFilterTable
from ttcp.errors import TtcpError
from ttcp.rtt import filters_file
from ttcp.rtt.filters_file import FiltersFileError, Plan
from ttcp.rtt.filters_sync import FiltersFile
from ttcp.rtt.table_rules import Origin

# ---- the format (pure) -------------------------------------------------------------------------


def test_one_filter_a_line_comments_and_blanks() -> None:
    raw = (b"\xef\xbb\xbf# the database\n\n  dst 10.20.0.0/16 port 5432   # primary\r\n10.0.0.1\n"
           b"\t::ffff:10.0.0.1\nSRC 10.0.0.1\n#10.0.0.2\n")
    version = filters_file.parse(raw)
    assert [str(x) for x in version.filters] == ["dst 10.20.0.0/16 port 5432", "10.0.0.1"]
    assert version.digest == filters_file.digest(raw) and len(version.digest) == 12
    assert filters_file.parse(b"").filters == filters_file.parse(b"# nothing\n\n").filters == ()


@pytest.mark.parametrize("raw,line,words", [
    (b"10.0.0.1\n10.0.0.x\n", 2, "10.0.0.x"),
    (b"# a\n\ndst 10.0.0.1/8\n", 3, "host bits"),
    (b"10.0.0.1\n10.0.0.2 port 70000\n", 2, "70000"),
    (b"10.0.0.1\n\xff\xfe\n", 2, "not UTF-8"),
    (b"10.0.0.1 10.0.0.2\n", 1, "10.0.0.2"),
    (b"10.0.0.1\n10.0.0.1 by raddr\n", 2, "line 1 has 10.0.0.1, which selects the same connections"),
    (b"dst ::1 by rport\n10.0.0.1\ndst ::1 by RADDR\n", 3, "line 1 has dst ::1 by rport"),
])
def test_a_bad_line_is_named(raw: bytes, line: int, words: str) -> None:
    with pytest.raises(FiltersFileError) as e:
        filters_file.parse(raw)
    assert e.value.line == line and words in e.value.message and str(e.value).startswith(f"line {line}: ")


def test_a_file_too_large_is_refused_whole() -> None:
    with pytest.raises(FiltersFileError) as e:
        filters_file.parse(b"10.0.0.1\n" * (filters_file.MAX_BYTES // 9 + 1))
    assert e.value.line is None and "bytes" in e.value.message


def test_the_plan_is_a_diff_that_leaves_the_api_alone() -> None:
    held = {f("10.0.0.1"): Origin.FILE, f("10.0.0.2"): Origin.FILE, f("10.0.0.3"): Origin.API,
            f("10.0.0.4"): Origin.API}
    step = filters_file.plan([f("10.0.0.1"), f("10.0.0.4"), f("10.0.0.5")], held)
    assert step == Plan(add=(f("10.0.0.5"),), claim=(f("10.0.0.4"),), remove=(f("10.0.0.2"),))
    assert step.growth == 0 and step
    assert not filters_file.plan([f("10.0.0.1"), f("10.0.0.2")], held)  # the same set: nothing to do
    assert filters_file.plan([], held).remove == (f("10.0.0.1"), f("10.0.0.2"))  # an empty file empties its own


# ---- reloads on a table ---------------------------------------------------------------------------


class Wall:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "filters"


def started(path: Path, content: str, table: MemoryFilterTable) -> FiltersFile:
    path.write_text(content)
    source = FiltersFile(path, table, wall=Wall())
    source.start(watch=False)
    return source


def origins(table: MemoryFilterTable) -> dict[str, str]:
    return {str(x): table.origin(x).name.lower() for x in table.filters()}  # type: ignore[union-attr]


def test_a_reload_applies_the_diff_and_keeps_the_counters_of_what_stays(path: Path) -> None:
    table = MemoryFilterTable()
    source = started(path, "10.0.0.1\n10.0.0.2\n", table)
    assert origins(table) == {"10.0.0.1": "file", "10.0.0.2": "file"}
    first = source.status()
    assert first.version == filters_file.digest(b"10.0.0.1\n10.0.0.2\n") and first.filters == 2
    assert first.error is None and source.reload_ok and first.applied_at is not None
    table.set_stats(f("10.0.0.1"), counters(5, 10))
    path.write_text("10.0.0.1\ndst 10.0.0.0/8 port 53\n")  # 10.0.0.2 goes, a network comes
    assert source.reload()
    assert origins(table) == {"10.0.0.1": "file", "dst 10.0.0.0/8 port 53": "file"}
    assert table.stats([f("10.0.0.1")])[f("10.0.0.1")].matches == 5
    assert source.status().version != first.version
    path.write_text("# the same filters, spelt otherwise\nsrc 10.0.0.1\ndst 10.0.0.0/8 port 53\n")
    version = table.version
    assert source.reload() and table.version == version  # no filter changed: no write


def test_a_bad_version_keeps_the_last_good_one_and_says_so_once(path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    table = MemoryFilterTable()
    source = started(path, "10.0.0.1\n", table)
    good = source.status().version
    path.write_text("10.0.0.1\n10.0.0.2\nnot-a-filter\n")
    with caplog.at_level(logging.WARNING, logger="ttcp"):
        assert not source.reload()
        assert not source.reload()  # read again (a stray event): not counted or said again
    assert texts(table) == {"10.0.0.1"} and not source.reload_ok and source.errors_total == 1
    status = source.status()
    assert status.version == good and status.error is not None and status.error.line == 3
    assert "not-a-filter" in status.error.message
    said = (f"filters file {path} line 3: 'not-a-filter' is not an IPv4 or IPv6 address; keeping the last "
            f"good one (version {good})")
    assert [r.getMessage() for r in caplog.records] == [said]
    path.write_text("10.0.0.1\n10.0.0.3 port\n")  # another bad version: counted
    assert not source.reload() and source.errors_total == 2
    path.write_text("10.0.0.1\n")  # the good one again: the error clears, nothing else moves
    assert source.reload() and source.reload_ok and source.status().error is None


def test_a_deleted_file_keeps_the_filters_and_a_new_one_applies(path: Path) -> None:
    table = MemoryFilterTable()
    source = started(path, "10.0.0.1\n", table)
    path.unlink()
    assert not source.reload()
    error = source.status().error
    assert error is not None and error.line is None and "missing" in error.message
    assert texts(table) == {"10.0.0.1"} and source.errors_total == 1
    path.write_text("10.0.0.1\n10.0.0.9\n")
    assert source.reload() and texts(table) == {"10.0.0.1", "10.0.0.9"} and source.reload_ok


def test_api_filters_are_kept_and_the_file_takes_over_the_ones_it_lists(path: Path) -> None:
    table = MemoryFilterTable()
    table.add([f("10.0.0.7"), f("10.0.0.8")])  # the API's (or --filter's)
    table.set_stats(f("10.0.0.8"), counters(3, 10))
    source = started(path, "10.0.0.1\n10.0.0.8\n", table)
    assert origins(table) == {"10.0.0.1": "file", "10.0.0.7": "api", "10.0.0.8": "file"}
    assert table.stats([f("10.0.0.8")])[f("10.0.0.8")].matches == 3  # taken over with its counters
    path.write_text("10.0.0.1\n")
    assert source.reload()
    assert origins(table) == {"10.0.0.1": "file", "10.0.0.7": "api"}  # dropped by the file: gone


def test_a_breakdown_changed_in_the_file_replaces_its_filter_and_the_apis_is_not_taken(path: Path) -> None:
    table = MemoryFilterTable()
    table.add([f("10.0.0.7")])  # the API's
    source = started(path, "dst 10.20.0.0/16 port 5432\n", table)
    path.write_text("dst 10.20.0.0/16 port 5432 by raddr\n")  # the file's own: removed, then added with `by`
    assert source.reload() and texts(table) == {"10.0.0.7", "dst 10.20.0.0/16 port 5432 by raddr"}
    path.write_text("dst 10.20.0.0/16 port 5432 by raddr\n10.0.0.7 by rport\n")  # the API's selector
    assert not source.reload()
    error = source.status().error
    assert error is not None and error.message.startswith("10.0.0.7 by rport: the filter table holds 10.0.0.7,")
    assert texts(table) == {"10.0.0.7", "dst 10.20.0.0/16 port 5432 by raddr"}  # nothing changed


def test_a_version_that_does_not_fit_is_refused_whole(path: Path) -> None:
    table = MemoryFilterTable(max_entries=4)
    table.add([f("10.0.0.7"), f("10.0.0.8")])
    source = started(path, "10.0.0.1\n", table)
    path.write_text("10.0.0.1\n10.0.0.2\n10.0.0.3\n")
    assert not source.reload()
    error = source.status().error
    assert error is not None and "3 filters and the 2 the API added" in error.message
    assert "table of 4 (--max-filters)" in error.message
    assert texts(table) == {"10.0.0.1", "10.0.0.7", "10.0.0.8"}
    path.write_text("10.0.0.2\n10.0.0.3\n")  # swapping the file's own fits: removals count
    assert source.reload() and texts(table) == {"10.0.0.2", "10.0.0.3", "10.0.0.7", "10.0.0.8"}


def test_missing_or_bad_at_start_is_an_error(path: Path) -> None:
    with pytest.raises(TtcpError, match=f"--filters-file {path}: the file is missing"):
        FiltersFile(path, MemoryFilterTable()).start(watch=False)
    path.write_text("10.0.0.1\n\n10.0.0.0/8 port 0\n")
    table = MemoryFilterTable()
    with pytest.raises(TtcpError, match=f"--filters-file {path}: line 3: .*port"):
        FiltersFile(path, table).start(watch=False)
    assert len(table) == 0


# ---- the API and the file's filters ------------------------------------------------------------------


def test_the_api_reads_the_files_filters_and_may_not_delete_them(path: Path) -> None:
    table = MemoryFilterTable()
    source = started(path, "10.0.0.1\ndst 10.0.0.0/8 port 53\n", table)
    managed = "managed by the filters file " + str(path)

    async def scenario(c: Client) -> None:
        body = (await c.call("GET", "/filters", 200)).body
        assert [(e["filter"], e["origin"]) for e in body["filters"]] == [
            ("10.0.0.1", "file"), ("dst 10.0.0.0/8 port 53", "file")]
        assert body["filters_file"] == {"path": str(path), "version": source.status().version,
                                        "applied_at": "2023-11-14T22:13:21.000000Z", "filters": 2, "error": None}
        await c.call("PUT", "/filters/10.0.0.1", 200)  # already there: unchanged
        await c.call("PUT", "/", 204, data="10.0.0.1\n10.0.0.2\n")  # 10.0.0.2 is the API's
        assert origins(table) == {"10.0.0.1": "file", "10.0.0.2": "api", "dst 10.0.0.0/8 port 53": "file"}
        r = await c.call("DELETE", "/filters/10.0.0.1", 409)
        assert r.body["error"].startswith("10.0.0.1: " + managed)
        r = await c.call("DELETE", "/", 409, data="10.0.0.2\ndst 10.0.0.0/8 port 53\n10.0.0.1\n")
        assert r.body["error"].startswith("dst 10.0.0.0/8 port 53, 10.0.0.1: " + managed)
        await c.call("DELETE", "/filters", 409, json={"filters": ["10.0.0.1"]})
        assert len(table) == 3  # all or nothing: 10.0.0.2 is still there
        await c.call("DELETE", "/filters/10.0.0.2", 204)  # the API's own
        path.write_text("x\n")
        source.reload()
        error = (await c.call("GET", "/filters", 200)).body["filters_file"]["error"]
        assert error == {"line": 1, "message": "'x' is not an IPv4 or IPv6 address",
                         "at": "2023-11-14T22:13:22.000000Z"}

    run(table, scenario, filters_file=source.status)


def test_without_a_filters_file_the_listing_says_null() -> None:
    async def scenario(c: Client) -> None:
        assert (await c.call("GET", "/filters", 200)).body["filters_file"] is None

    run(MemoryFilterTable(), scenario)
