"""make vmtest's pure parts: kernel package resolution and the result table."""

from __future__ import annotations

import pytest

from vmtest import kernels, report

PACKAGES = [
    "linux-image-5.10.0-9-amd64", "linux-image-5.10.0-32-amd64", "linux-image-6.1.0-0.deb11.50-amd64",
    "linux-image-6.1.0-9-amd64", "linux-image-6.1.0-50-amd64", "linux-image-6.12.9+deb13-amd64",
    "linux-image-6.12.117+deb13-amd64", "linux-image-6.12.41+deb12-amd64",
]


@pytest.mark.parametrize("asked,picked", [
    ("5.10", "linux-image-5.10.0-32-amd64"),  # natural order: 32 > 9
    ("6.1", "linux-image-6.1.0-50-amd64"),
    ("6.12", "linux-image-6.12.117+deb13-amd64"),
    ("6.1.0-9", "linux-image-6.1.0-9-amd64"),
    ("linux-image-6.12.9+deb13-amd64", "linux-image-6.12.9+deb13-amd64"),
])
def test_release_resolution(asked: str, picked: str) -> None:
    assert kernels.resolve(asked, PACKAGES) == picked


@pytest.mark.parametrize("asked", ["4.19", "6.1.0-999", "latest"])
def test_unknown_release_is_a_clear_error(asked: str) -> None:
    with pytest.raises(kernels.KernelError, match="no Debian kernel package"):
        kernels.resolve(asked, PACKAGES)


def test_flavours_are_not_images_of_the_series() -> None:
    for name in ("linux-image-6.1.0-50-rt-amd64", "linux-image-6.1.0-50-cloud-amd64",
                 "linux-image-6.1-amd64", "linux-image-6.1.0-50-amd64-dbg"):
        assert not kernels._IMAGE.match(name), name


JUNIT = b"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="6">
<testcase classname="tests.test_tracer" name="test_exactly_n[fentry]"/>
<testcase classname="tests.test_tracer" name="test_exactly_n[tp_btf]"/>
<testcase classname="tests.test_tracer" name="test_exactly_n[tracepoint]">
  <failure message="assert 3 == 200">trace</failure></testcase>
<testcase classname="tests.test_tracer" name="test_fentry_rtt_is_tcp_info_at_close"/>
<testcase classname="tests.test_maps" name="test_ring">
  <skipped message="kernel feature batch_map_ops unsupported: EINVAL"/></testcase>
<testcase classname="tests.test_maps" name="test_hash"/>
</testsuite></testsuites>"""


def test_cases_sort_into_modes() -> None:
    cases = report.parse_junit(JUNIT)
    assert [c.mode for c in cases] == ["fentry", "tp_btf", "tracepoint", "fentry", None, None]
    assert [c.outcome for c in cases] == ["passed", "passed", "failed", "passed", "skipped", "passed"]
    assert cases[2].message == "assert 3 == 200"


def test_table_and_problems() -> None:
    feats = report.parse_features("kernel feature tracing_link_create unsupported: EINVAL\n"
                                  "kernel feature perf_event_link supported\n")
    r = report.KernelResult("5.10.0-32-amd64", report.parse_junit(JUNIT), feats, rc=1)
    assert r.cell("fentry") == "pass 2/2 (raw_tracepoint_open)"
    assert r.cell("tracepoint") == "FAIL 1/1"
    assert r.cell(None) == "pass 1/2, 1 skipped"
    text = report.table([r])
    assert text.splitlines()[0].split(" | ")[0].strip() == "kernel"
    assert "5.10.0-32-amd64" in text and "FAILED" in text
    found = report.problems([r])
    assert "attach mode tracepoint passed on no kernel of the matrix" in found
    assert any("test_exactly_n[tracepoint]" in p for p in found)


def test_a_guest_that_never_reported_fails_the_matrix() -> None:
    silent = report.KernelResult("linux-image-6.1.0-50-amd64", note="(killed after 1200 s)")
    assert not silent.ok
    assert "NO RESULT (killed after 1200 s)" in report.table([silent])
    assert report.problems([silent])[0].startswith("linux-image-6.1.0-50-amd64: no result")


def test_markdown_table_for_the_readme() -> None:
    feats = report.parse_features("kernel feature memcg_accounting unsupported: EINVAL\n"
                                  "kernel feature tracing_link_create supported\n")
    r = report.KernelResult("5.10.0-32-amd64", report.parse_junit(JUNIT), feats, rc=1)
    lines = report.markdown([r]).splitlines()
    assert lines[0].startswith("| kernel | fentry | tp_btf | tracepoint | other tests | memcg_accounting")
    assert lines[2].startswith("| 5.10.0-32-amd64 | pass 2/2 (link_create) |")
    assert "| no | yes | ? |" in lines[2]
