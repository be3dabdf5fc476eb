"""The container path for real: README's Docker commands against a real engine.

A private dockerd (tests/support/container/engine.py) runs ttcp's image, built from
the Dockerfile as a user would, on a local stand-in for python:3.11-slim
(tests/support/container/images.py). The seed's eight steps are played with real
containers (tests/support/container/seed.py); the least-privilege command this engine
supports, a container without privilege and one whose seccomp profile blocks
bpf(2) are checked for what they print. Everything is removed afterwards, on
failure, Ctrl-C and SIGTERM too.

Run with `make test-container` (not part of `make test`: it installs the
engine and takes a few minutes). Where it cannot run (no root, no apt, no
engine) it skips, except when TTCP_REQUIRE_KERNEL=1 or TTCP_REQUIRE_CONTAINER=1
(CI), where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import netns_scenario as scenario
from tests.support.container import images
from tests.support.container.engine import Engine, EngineError, Unavailable, ensure_packages, remove_leftovers
from tests.support.container.seed import (
    API_PORT,
    REPO,
    SERVER_PORT,
    Line,
    Plan,
    Record,
    Seed,
    TtcpContainer,
    bpf_alive,
    bpf_ids_held_by,
    curl,
    healthz,
    readme_command,
    readme_docker_commands,
    wait_proxy_idle,
)
from ttcp.rtt import events
from ttcp.rtt.tracer import PINNED_MAPS

pytestmark = [pytest.mark.container, pytest.mark.kernel]

SERVER, CLIENT = "ttcp-test-server", "ttcp-test-client"
NO_BPF_PROFILE = {"defaultAction": "SCMP_ACT_ALLOW",
                  "syscalls": [{"names": ["bpf"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}


_T0 = time.monotonic()


def say(text: str) -> None:
    """Log with the seconds since the module was imported, so slow steps show in CI's log."""
    print(f"[{time.monotonic() - _T0:6.1f}] {text}", flush=True)


def _cannot_run(reason: str) -> None:
    if "1" in (os.environ.get("TTCP_REQUIRE_KERNEL"), os.environ.get("TTCP_REQUIRE_CONTAINER")):
        pytest.fail(f"container test cannot run ({reason}) but CI requires it", pytrace=False)
    pytest.skip(f"container test: {reason}")


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    """Packages, a private dockerd, the base image and `docker build -t ttcp .`; all removed after."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        ensure_packages(say)
    except Unavailable as e:
        _cannot_run(str(e))
    timings["packages"] = time.monotonic() - t0
    with socket.socket() as probe:  # README's command publishes 127.0.0.1:8090; say so if it cannot
        if probe.connect_ex(("127.0.0.1", API_PORT)) == 0:
            pytest.fail(f"127.0.0.1:{API_PORT} is in use on this host: README's `docker run -p "
                        f"127.0.0.1:{API_PORT}:{API_PORT}` cannot publish it", pytrace=False)
    with scenario._sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C, so the cleanup runs
        remove_leftovers(say)
        teardown = scenario.Teardown(say)
        try:
            t1 = time.monotonic()
            eng = Engine(teardown, say)
            eng.start()
            timings["dockerd start"] = time.monotonic() - t1
            images.ensure_base(eng, say, timings)
            images.build_ttcp(eng, say, timings)
            eng.timings = timings
            yield eng
        finally:
            t2 = time.monotonic()
            failed = teardown.close()
            timings["cleanup"] = time.monotonic() - t2
            timings["total"] = time.monotonic() - t0
            say("container timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    assert not failed, f"cleanup incomplete: {failed}"


def _wait_http(addr: str, port: int, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        try:
            scenario.connect(addr, port)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module")
def server(engine: Engine) -> Iterator[str]:
    """`python3 -m http.server 80` in a container on the bridge; its address."""
    try:
        engine.docker("run", "-d", "--name", SERVER, images.BASE_IMAGE, "python3", "-m", "http.server",
                      str(SERVER_PORT), step="start the web server container")
        ip = engine.docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", SERVER,
                           step="the web server's address").stdout.strip()
        _wait_http(ip, SERVER_PORT)
        yield ip
    finally:
        subprocess.run([engine.client, "rm", "-f", SERVER], capture_output=True, env=engine.env, timeout=60,
                       check=False)


@pytest.fixture(scope="module")
def client(engine: Engine) -> Iterator[str]:
    """A long-lived client container (same address in steps 6 and 8); the scenario script inside."""
    try:
        engine.docker("run", "-d", "--name", CLIENT, "-v", f"{REPO / 'scripts'}:/scenario:ro",
                      images.BASE_IMAGE, "sleep", "infinity", step="start the client container")
        yield engine.docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", CLIENT,
                            step="the client's address").stdout.strip()
    finally:
        subprocess.run([engine.client, "rm", "-f", CLIENT], capture_output=True, env=engine.env, timeout=60,
                       check=False)


def _run_to_exit(engine: Engine, cmd: list[str]) -> subprocess.CompletedProcess:
    say("  $ " + " ".join(cmd))
    return subprocess.run([engine.client, *cmd[1:]], capture_output=True, text=True, env=engine.env,
                          timeout=120, check=False)


def _with_options(cmd: list[str], *options: str) -> list[str]:
    """`cmd` with `options` inserted before the image name (its last word)."""
    return [*cmd[:-1], *options, cmd[-1]]


def _least_privilege(engine: Engine) -> list[str]:
    """README's least-privilege line for this engine's version."""
    if engine.major < 23:
        return readme_command("--cap-add", "SYS_ADMIN")
    return readme_command("--cap-add", "BPF", "PERFMON")


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("ttcp: ") and "EPERM" in lines[0], lines[0]
    return lines[0]


# ---- the image ----------------------------------------------------------------------------------------


def test_image_is_the_base_plus_one_layer_of_pinned_versions(engine: Engine) -> None:
    def layers(image: str) -> list[str]:
        return json.loads(engine.docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", image,
                                        step=f"layers of {image}").stdout)

    base, ttcp = layers(images.BASE_IMAGE), layers(images.IMAGE)
    assert ttcp[:len(base)] == base and len(ttcp) == len(base) + 1  # no dead layer
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    out = engine.docker("run", "--rm", "--entrypoint", "python", images.IMAGE, "-c", code,
                        step="installed versions").stdout

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    installed = {norm(k): v for k, v in json.loads(out).items()}
    pins = {}
    for ln in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in ln and not ln.startswith("#"):
            name, version = ln.split("==")
            pins[norm(name)] = version.strip()
    assert installed.pop("ttcp") == "0.1.0"
    assert installed and all(pins.get(name) == version for name, version in installed.items()), \
        {n: (v, pins.get(n)) for n, v in installed.items() if pins.get(n) != v}


# ---- the seed's scenario, as README tells it -------------------------------------------------------------


def test_seed_scenario_with_real_containers(engine: Engine, server: str, client: str) -> None:
    cmd = readme_command("--privileged", without=("--pin",))
    assert cmd[-1] == "ttcp" and cmd[cmd.index("-p") + 1] == f"127.0.0.1:{API_PORT}:{API_PORT}"
    assert readme_docker_commands().count(cmd) >= 2  # the Docker section and the scenario's step 1
    record = Record()
    ttcp = TtcpContainer(engine, cmd, say)
    try:
        record.ready_s = ttcp.wait_ready()
        plan = Plan(host=engine.gateway, control=engine.control, server=server, client=client,
                    client_name=CLIENT, ttcp=ttcp.inspect("{{.NetworkSettings.IPAddress}}"))
        record.plan = plan
        record.bpf_held = bpf_ids_held_by(int(ttcp.inspect("{{.State.Pid}}")))
        Seed(engine, ttcp, plan, record, say).play()
        record.health = healthz()
        wait_proxy_idle(plan.ttcp)
        record.logs = engine.docker("logs", ttcp.id or "", step="docker logs").stdout.splitlines()
        say("end: docker stop -> exit 0 and the summary")
        record.exit_code = ttcp.stop()
        record.bpf_left = bpf_alive(record.bpf_held)
    finally:
        record.stdout, record.stderr = list(ttcp.stdout), list(ttcp.stderr)
        ttcp.remove()
    say(f"ttcp printed its header {record.ready_s:.2f} s after `docker run`")

    p = record.plan
    # Header first, then one line per event; `docker logs` shows the same.
    assert record.stdout[0] == events.HEADER
    lines = [Line.parse(t) for t in record.stdout[1:]]
    assert record.logs == record.stdout
    want_sources = ([p.control] + [p.host, p.host, p.control] + [p.host, p.control] + [p.control] * 4
                    + [p.client, p.control])
    assert [ln.saddr for ln in lines] == want_sources
    assert record.steps[3].lines[0].saddr == p.host and record.steps[3].lines[0].daddr == p.server
    assert record.steps[8].lines[0].saddr == p.client and record.steps[8].lines[0].daddr == p.server
    for n in (1, 4, 5, 6, 7):
        assert record.steps[n].lines == []
    assert record.health["events"] == len(lines) and record.health["dropped"] == 0
    assert record.health["filters"] == 2 and record.health["attach_mode"] in ("fentry", "tp_btf", "tracepoint")
    assert record.exit_code == 0
    assert record.stderr[-1] == f"ttcp: {len(lines)} events printed, 0 dropped", record.stderr
    assert not any("Traceback" in ln for ln in record.stderr)
    # ttcp's programs, maps and links were in the kernel while it ran, and are gone now.
    assert {kind for kind, _ in record.bpf_held} >= {"prog", "map"}, record.bpf_held
    assert record.bpf_left == set()


# ---- privileges ------------------------------------------------------------------------------------------


def test_least_privilege_command_of_this_engine(engine: Engine, server: str) -> None:
    cmd = _least_privilege(engine)
    assert "--privileged" not in cmd
    if engine.major < 23:  # why README gives two commands: this engine does not know CAP_BPF
        refused = _run_to_exit(engine, readme_command("--cap-add", "BPF", "PERFMON"))
        assert refused.returncode == 125 and 'unknown capability: "CAP_BPF"' in refused.stderr, refused
    ttcp = TtcpContainer(engine, cmd, say)
    try:
        ttcp.wait_ready()
        ttcp_ip = ttcp.inspect("{{.NetworkSettings.IPAddress}}")
        status = engine.docker("exec", ttcp.id or "", "grep", "-E", "^(CapEff|Seccomp):", "/proc/1/status",
                               step="ttcp's privileges").stdout
        assert re.search(r"^Seccomp:\s+2$", status, re.MULTILINE), status  # the default profile is on
        assert curl("PUT", engine.control)[0] == 204
        wait_proxy_idle(ttcp_ip)
        control = scenario.connect(server, SERVER_PORT, source=engine.control)
        line = Line.parse(ttcp.next_text())
        assert (line.saddr, line.sport, line.daddr) == (engine.control, control["sport"], server)
        assert healthz()["events"] == 1
        assert ttcp.stop() == 0
    finally:
        ttcp.remove()
    assert ttcp.stderr[-1] == "ttcp: 1 events printed, 0 dropped", ttcp.stderr


# ---- the filter table across a container restart (--pin) ----------------------------------------------


def _filters(ttcp_ip: str) -> dict[str, int]:
    status, body = curl("GET", path="/filters")
    wait_proxy_idle(ttcp_ip)
    assert status == 200, body
    return {f["filter"]: f["matches"] for f in json.loads(body)["filters"]}


def _one_control_line(engine: Engine, ttcp: TtcpContainer, server: str) -> None:
    control = scenario.connect(server, SERVER_PORT, source=engine.control)
    line = Line.parse(ttcp.next_text())
    assert (line.saddr, line.sport, line.daddr) == (engine.control, control["sport"], server)


def test_pinned_filter_table_survives_a_container_restart(engine: Engine, server: str) -> None:
    """README's --pin line: the host's bpffs mounted into the container; after `docker stop`
    a new container on the same directory has the filters and their counters."""
    readme = readme_command("--pin")
    assert "/sys/fs/bpf:/sys/fs/bpf" in readme and readme[-2:] == ["--pin", "/sys/fs/bpf/ttcp"]
    pin_dir = Path(f"/sys/fs/bpf/ttcp-container-test-{os.getpid()}")  # the host's bpffs is shared: our own dir
    cmd = [*readme[:-1], str(pin_dir)]
    try:
        first = TtcpContainer(engine, cmd, say)
        try:
            first.wait_ready()
            ttcp_ip = first.inspect("{{.NetworkSettings.IPAddress}}")
            assert curl("PUT", engine.control)[0] == 204
            wait_proxy_idle(ttcp_ip)
            for _ in range(3):
                _one_control_line(engine, first, server)
            before = _filters(ttcp_ip)
            assert before == {engine.control: 3}
            assert first.stop() == 0
        finally:
            first.remove()
        assert sorted(os.listdir(pin_dir)) == sorted(PINNED_MAPS)  # on the host, after the container
        second = TtcpContainer(engine, cmd, say)
        try:
            second.wait_ready()
            ttcp_ip = second.inspect("{{.NetworkSettings.IPAddress}}")
            assert _filters(ttcp_ip) == before
            _one_control_line(engine, second, server)  # still filtered: no PUT this time
            assert _filters(ttcp_ip) == {engine.control: 4}
            assert second.stop() == 0
        finally:
            second.remove()
        reused = next((ln.split(": reused ", 1)[1] for ln in second.stderr if ": reused " in ln), "")
        assert sorted(reused.split(", ")) == sorted(PINNED_MAPS), second.stderr  # every pinned map, groups too
    finally:
        shutil.rmtree(pin_dir, ignore_errors=True)
    assert not pin_dir.exists()


def test_pin_without_the_bpffs_volume_says_what_to_mount(engine: Engine) -> None:
    cmd = [w for w in readme_command("--pin") if w != "/sys/fs/bpf:/sys/fs/bpf"]
    cmd.remove("-v")
    done = _run_to_exit(engine, cmd)
    assert done.returncode == 1 and done.stdout == "", done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "/sys/fs/bpf/ttcp is not in a BPF file system" in lines[0] and "-v /sys/fs/bpf:/sys/fs/bpf" in lines[0]


def test_without_privilege_one_line_naming_the_capabilities(engine: Engine) -> None:
    cmd = [w for w in readme_command("--privileged", without=("--pin",)) if w != "--privileged"]
    line = _one_error_line(_run_to_exit(engine, cmd))
    assert "lacks CAP_BPF and CAP_PERFMON" in line and "--cap-add SYS_ADMIN" in line, line


def test_seccomp_blocking_bpf_is_named_not_capabilities(engine: Engine, tmp_path: Path) -> None:
    profile = tmp_path / "no-bpf.json"
    profile.write_text(json.dumps(NO_BPF_PROFILE))
    cmd = _with_options(_least_privilege(engine), "--security-opt", f"seccomp={profile}")
    line = _one_error_line(_run_to_exit(engine, cmd))
    assert re.search(r"although this process has CAP_\w+( and CAP_\w+)?: a seccomp filter", line), line
    assert "grant" not in line


def test_engine_failure_names_its_step(engine: Engine) -> None:
    with pytest.raises(EngineError, match=r"^inspect a missing image: .* exited 1"):
        engine.docker("image", "inspect", "ttcp-test/absent:never", step="inspect a missing image")
