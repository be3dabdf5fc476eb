"""The feature-probe cache (ttcp.kernel.features): an answer is kept per probe and
arguments, and an inconclusive one is never kept (cilium/ebpf's FeatureCache)."""

from __future__ import annotations

import errno
import resource
import subprocess
import sys
from pathlib import Path

from ttcp.errors import BpfError
from ttcp.kernel import features
from ttcp.kernel.features import Probe


class Counted:
    """A probe that answers `supported` and counts how often it ran."""

    def __init__(self, feature: str, supported: bool | None) -> None:
        self.feature, self.supported, self.runs = feature, supported, 0

    def __call__(self) -> Probe:
        self.runs += 1
        return Probe(self.feature, self.supported, f"run {self.runs}")


def test_a_conclusive_answer_is_kept_per_arguments() -> None:
    probe = Counted("test_kept", True)
    first = features._once("test_kept", (1, "tcp_close"), probe)
    assert features._once("test_kept", (1, "tcp_close"), probe) is first and probe.runs == 1
    other = features._once("test_kept", (2, "tcp_rcv_established"), probe)  # other arguments: asked again
    assert probe.runs == 2 and other.detail == "run 2" and first.detail == "run 1"


def test_an_unknown_answer_is_asked_again() -> None:
    probe = Counted("test_unknown", None)
    assert features._once("test_unknown", (), probe).supported is None
    assert features._once("test_unknown", (), probe).detail == "run 2"
    probe.supported = False  # the probe can run now (e.g. privilege granted): that answer is kept
    assert features._once("test_unknown", (), probe).supported is False
    assert features._once("test_unknown", (), probe).detail == "run 3" and probe.runs == 3


def test_a_probe_that_cannot_be_set_up_is_unknown_and_not_kept() -> None:
    runs = []

    def refused() -> Probe:
        runs.append(1)
        raise BpfError("PROG_LOAD ttcp_probe", errno.EPERM)

    for _ in range(2):
        found = features._once("test_refused", (), refused)
        assert found.supported is None and found.detail.startswith("PROG_LOAD ttcp_probe: EPERM")
    assert len(runs) == 2


def test_sysfs_btf_mmap_answers_for_the_path_asked(tmp_path: Path) -> None:
    empty, full = tmp_path / "empty", tmp_path / "full"
    empty.write_bytes(b"")
    full.write_bytes(b"BTF" * 100)
    assert features.sysfs_btf_mmap(empty).supported is False  # nothing to map
    assert features.sysfs_btf_mmap(full).supported is True  # not the first path's answer
    assert features.sysfs_btf_mmap(empty).supported is False


def test_the_open_files_soft_limit_is_raised_to_the_hard_one() -> None:
    code = ("import resource; from ttcp.kernel.rlimit import raise_nofile; "
            "print(raise_nofile(), resource.getrlimit(resource.RLIMIT_NOFILE))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                               (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard > 256 and out.stdout.strip() == f"(256, {hard}) ({hard}, {hard})"
