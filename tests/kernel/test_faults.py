"""Faults in-process: a full ring with a paused reader, failures midway through
loading, a crashing API handler, no privilege (the command's faults, signals
and SIGKILL included, are tests/system/test_command_faults.py's).

Everything runs the real program on the real kernel with loopback traffic
from 127.0.6.0/24 only. The guarantees checked: every event is either
delivered or counted as dropped (consumed + dropped == generated, exactly);
the reader recovers; and whatever fails — a refused program or map, a
handler exception — no BPF program, link or map of ours is left in the kernel.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.support import hostile as H
from tests.support.cli_process import REPO
from tests.support.kernel import scaled, settle, wait_matches
from tests.support.kernel_objects import readable
from tests.support.traffic import Server, connect_many
from ttcp import server, syscalls
from ttcp.elf_loader import Collection
from ttcp.errors import BpfError, FormatError
from ttcp.obj import asm
from ttcp.rtt import clock, events
from ttcp.rtt import filters as F
from ttcp.rtt.tracer import Tracer

pytestmark = pytest.mark.kernel


def quiet(msg: str) -> None:
    """Attach log sink: the tests read the report, not the prose."""


def tracer_matches(t: Tracer, addr: str) -> Callable[[], int]:
    f = F.parse(addr)
    assert t.table is not None
    table = t.table
    return lambda: table.stats([f])[f].matches


def drain(tracer: Tracer, into: list[events.Event] | None = None, quiet: float = 0.2) -> int:
    """Consume until nothing new arrived for `quiet` seconds; returns how many."""
    assert tracer.ring is not None and tracer.table is not None
    names = tracer.table.names
    n = 0
    while readable(tracer.ring, settle(quiet)):
        n += tracer.ring.consume(lambda raw: into.append(events.decode(raw, names)) if into is not None else None)
    return n


# ---- ring buffer: printed + dropped == generated ------------------------------------------------

N_GENERATED = 300


@pytest.mark.matrix
def test_small_ring_with_paused_reader_loses_nothing_unaccounted(no_bpf_leaks: None) -> None:
    src, dst = "127.0.6.1", "127.0.6.2"
    with Tracer(ringbuf_size=4096) as t:
        t.open_maps()
        t.add_filters([F.parse(src)])
        t.attach("auto", log=quiet)
        assert t.table is not None and t.ring is not None
        with Server(dst) as srv:
            connect_many(srv, src, N_GENERATED)  # nobody reads meanwhile
            wait_matches(tracer_matches(t, src), N_GENERATED)
            got: list[events.Event] = []
            consumed = t.ring.consume(lambda raw: got.append(events.decode(raw, t.table.names)))
            dropped = t.drops()
            assert consumed + dropped == N_GENERATED, (consumed, dropped)
            assert dropped > 0 and consumed > 0
            assert {e.saddr for e in got} == {src}
            assert drain(t) == 0  # the first consume emptied the ring
            # The reader recovers: new traffic all arrives, no new drops.
            conns = connect_many(srv, src, 30)
            wait_matches(tracer_matches(t, src), N_GENERATED + 30)
            later: list[events.Event] = []
            drain(t, later)
        assert sorted(e.sport for e in later) == sorted(c.sport for c in conns)
        assert t.drops() == dropped


# ---- failures midway through loading ----------------------------------------------------------


def broken_program(data: bytes, section: str) -> bytes:
    """The object with `section`'s final instruction (an exit or a jump) made a
    `mov r0, 0`: the verifier refuses it ("last insn is not an exit or jmp");
    everything else is intact."""
    off, size = H.sections_of(data)[section]
    last = off + size - 8
    assert data[last] & 0x07 == asm.CLASS_JMP, "expected the program to end in an exit or a jump"
    out = bytearray(data)
    out[last:last + 8] = asm.mov_imm(asm.R0, 0)
    return bytes(out)


def write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def test_corrupted_object_fails_before_the_kernel_sees_anything(
        tmp_path: Path, no_bpf_leaks: None) -> None:
    for name, blob in (("truncated.o", H.shipped()[:5000]), ("empty.o", b""),
                       ("elf-bss.o", (H.CORPUS / "elf" / "bss-claims-2GiB.o").read_bytes())):
        with pytest.raises(FormatError, match=r"ELF|BTF"):
            Tracer(write(tmp_path, name, blob))


@pytest.mark.matrix
def test_second_program_refused_by_the_verifier_releases_the_first(no_bpf_leaks: None) -> None:
    blob = broken_program(H.shipped(), "tracepoint/sock/inet_sock_set_state")
    with Collection(blob) as loader:
        first = loader.load_program("tcprtt_tp_btf")
        assert syscalls.prog_info(first.fd).id in syscalls.prog_ids()
        with pytest.raises(BpfError) as info:
            loader.load_program("tcprtt_tracepoint")
        assert info.value.errno == errno.EINVAL and "last insn" in str(info.value)
        assert set(loader.map_fds) == {"hosts", "nets", "stats", "texts", "cgroups", "netns", "events", "drops",
                                           ".bss", "groups", "group_stats", "group_new"}


@pytest.mark.matrix
def test_every_mode_refused_leaves_nothing(tmp_path: Path, no_bpf_leaks: None) -> None:
    blob = H.shipped()
    for section in ("fentry/tcp_close", "tp_btf/tcp_destroy_sock", "tracepoint/sock/inet_sock_set_state"):
        blob = broken_program(blob, section)
    with Tracer(write(tmp_path, "broken.o", blob), ringbuf_size=8192) as t:
        t.open_maps()
        t.add_filters([F.parse("127.0.6.10")])
        with pytest.raises(BpfError) as info:
            t.attach("auto", log=quiet)
        assert "PROG_LOAD tcprtt_tracepoint" in str(info.value)
        assert [m for m, _ in t.report.skipped] == ["fentry", "tp_btf", "tracepoint"]


@pytest.mark.matrix
def test_map_refused_midway_releases_the_maps_already_made(no_bpf_leaks: None) -> None:
    with Collection(str(H.SHIPPED)) as loader:
        names = list(loader.spec.maps)
        loader.spec.set_max_entries("events", 4097)  # not a power of two: MAP_CREATE refuses
        with pytest.raises(BpfError, match="MAP_CREATE"):
            loader.create_maps()
        made = set(loader.map_fds)
        assert made == set(names[:names.index("events")]) and made, made


# ---- an API handler crashes -------------------------------------------------------------------


def test_handler_exception_is_500_and_the_agent_keeps_working(
        no_bpf_leaks: None, caplog: pytest.LogCaptureFixture) -> None:
    src, dst = "127.0.6.11", "127.0.6.12"
    crash = {"on": True}

    def health() -> dict:
        if crash["on"]:
            raise RuntimeError("probe exploded")
        return {"status": "ok"}

    async def scenario(t: Tracer) -> None:
        assert t.table is not None
        app = server.create_app(t.table, server.ApiHooks(health=health, mono_to_wall=clock.monotonic_to_wall))
        runner = await server.start(app, "127.0.0.1", 0)
        try:
            port = runner.addresses[0][1]
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as s:
                for _ in range(3):
                    async with s.get("/healthz") as r:
                        assert r.status == 500
                        assert "probe exploded" not in (await r.json())["error"]
                async with s.put("/", data=src) as r:
                    assert r.status == 204
                crash["on"] = False
                async with s.get("/healthz") as r:
                    assert r.status == 200
                async with s.get("/") as r:
                    assert await r.json() == [src]
        finally:
            await server.stop(runner)

    with caplog.at_level(logging.ERROR, logger="ttcp.server"), Tracer(ringbuf_size=8192) as t:
        t.attach("auto", log=quiet)
        asyncio.run(scenario(t))
        with Server(dst) as srv:
            conns = connect_many(srv, src, 5)
        got: list[events.Event] = []
        deadline = time.monotonic() + 10
        while len(got) < 5 and time.monotonic() < deadline:
            drain(t, got)
        assert sorted(e.sport for e in got) == sorted(c.sport for c in conns)
    assert sum("probe exploded" in str(r.exc_info[1]) for r in caplog.records if r.exc_info) == 3


# ---- privileges -------------------------------------------------------------------------------------


def test_tracer_without_privilege_raises_ttcp_error_only(no_bpf_leaks: None) -> None:
    """The same through the Python API, in a child that dropped to user nobody."""
    code = (
        "import os, sys\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "from ttcp.rtt.tracer import Tracer\n"
        "from ttcp.errors import TtcpError\n"
        "try:\n"
        "    with Tracer() as t:\n"
        "        t.attach('auto', log=lambda m: None)\n"
        "except TtcpError as e:\n"
        "    print(type(e).__name__, e.errno if hasattr(e, 'errno') else '', file=sys.stderr)\n"
        "    sys.exit(3)\n"
    )
    # The interpreter may live where nobody cannot read (/root): import first, then drop.
    r = subprocess.run([sys.executable, "-c", "import ttcp.rtt.tracer, ttcp.errors\n" + code],
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                       text=True, timeout=scaled(60), check=False)
    assert r.returncode == 3, r.stderr
    assert r.stderr.startswith("BpfError 1"), r.stderr
    assert "Traceback" not in r.stderr

