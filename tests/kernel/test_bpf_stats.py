"""The kernel's BPF statistics as ttcp turns them on and reads them: while ttcp holds the
BPF_ENABLE_STATS fd, each of its programs' run time and run count grow with real
connections; without CAP_SYS_ADMIN --bpf-stats is refused in one line that says
what to do (CAP_BPF does not replace it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.support.cli_process import REPO, free_port
from tests.support.kernel import enable_stats, require
from tests.support.traffic import Server, connect_many
from ttcp.kernel.bpf_stats import BpfStats
from ttcp.rtt import filters as F
from ttcp.rtt.tracer import Tracer

pytestmark = pytest.mark.kernel


def test_the_programs_run_time_counts_while_the_fd_is_held(no_bpf_leaks: None) -> None:
    require(enable_stats())
    stats = BpfStats.enable()
    try:
        assert stats.held and stats.enabled()
        with Tracer(max_filters=4) as t:
            t.add_filters([F.parse("127.0.80.1")])
            t.attach("tp_btf", log=lambda msg: None)
            t.enable_sampling("tp_btf", log=lambda msg: None)
            (main, before_ns, before), (sampler, _, sampled) = t.program_stats()
            assert (main, sampler) == ("tcprtt_tp_btf", "tcprtt_sample_tp_btf")
            with Server("127.0.0.1") as srv:
                connect_many(srv, "127.0.80.1", 10)
            (_, after_ns, after), (_, _, sampled_after) = t.program_stats()
            assert after - before >= 20  # two sockets a connection (every socket runs the program)
            assert after_ns > before_ns and sampled_after > sampled
    finally:
        stats.close()
    assert not stats.held


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_without_cap_sys_admin_bpf_stats_is_one_line_saying_what_to_do() -> None:
    require(enable_stats())
    drop = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--"]
    r = subprocess.run([*drop, sys.executable, "-m", "ttcp", "--bpf-stats", "--port", str(free_port())],
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 1 and r.stdout == "", r
    assert r.stderr.startswith("ttcp: --bpf-stats: ENABLE_STATS: EPERM: ") and r.stderr.count("\n") == 1
    assert "needs CAP_SYS_ADMIN" in r.stderr and "kernel.bpf_stats_enabled=1" in r.stderr
