"""The CI rule itself: under TTCP_REQUIRE_KERNEL=1 only a kernel-feature skip may pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.kernel import SKIP_PREFIX
from tests.support.paths import REPO

SAMPLE = f"""
import pytest

def test_tool_missing():
    pytest.skip("curl not installed")

def test_kernel_lacks_it():
    pytest.skip("{SKIP_PREFIX}fentry unsupported: PROG_LOAD: EPERM")
"""


def _run(tmp_path: Path, strict: bool) -> str:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = dict(os.environ, PYTHONPATH=str(REPO), TTCP_REQUIRE_KERNEL="1" if strict else "0")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                        str(tmp_path / "test_sample.py")], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120, check=False)
    return r.stdout.strip().splitlines()[-1]


def test_strict_mode_fails_every_skip_but_a_kernel_feature_one(tmp_path: Path) -> None:
    summary = _run(tmp_path, strict=True)
    assert "1 failed" in summary and "1 skipped" in summary, summary


def test_without_the_flag_both_skip(tmp_path: Path) -> None:
    summary = _run(tmp_path, strict=False)
    assert "2 skipped" in summary and "failed" not in summary, summary
