"""The `ttcp` command's API options (issue 14): --token-file and TTCP_TOKEN_FILE,
the token kept out of argv, logs and /healthz, the warning for a non-loopback
API without a token, and one-line errors for a bad token file or
--allowed-host. What the API does with them is tests/unit/test_api_access.py's.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.api import AUTH, TOKEN, token_file
from tests.support.cli_process import REPO, TtcpProcess, free_port
from tests.support.kernel import scaled

ADDR = "127.0.14.1"  # this file's filter address (never sent to: only written into tables)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ttcp", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=scaled(30), check=False, env=dict(os.environ, PYTHONPATH=REPO, **(env or {})))


@pytest.mark.kernel
def test_command_with_token_file_and_the_token_kept_out_of_sight(tmp_path: Path) -> None:
    path = token_file(tmp_path, TOKEN.encode() + b"\n")
    with TtcpProcess("--token-file", str(path), "--filter", ADDR) as t:
        assert t.api("GET", "/")[0] == 401
        status, body = t.api("GET", "/", headers=AUTH)
        assert status == 200 and json.loads(body) == [ADDR]
        status, body = t.api("GET", "/healthz")
        assert status == 200 and TOKEN not in body.decode()
        status, body = t.api("GET", "/metrics", headers={"Authorization": "Bearer wrong"})
        assert status == 401 and TOKEN not in body.decode()
        assert t.api("GET", "/metrics", headers=AUTH)[0] == 200
        assert t.api("GET", "/healthz", headers={"Host": "attacker.example:8090"})[0] == 421
        for bad in (b"Bearer " + TOKEN.encode() + b"\x01", b"Bearer " + TOKEN.encode() * 300):
            with socket.create_connection(("127.0.0.1", t.port), timeout=scaled(5)) as s:  # aiohttp refuses these
                s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + bad + b"\r\n\r\n")
                assert s.recv(100).split(b" ")[1] == b"400", bad[:20]
        cmdline = Path(f"/proc/{t.proc.pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{t.proc.pid}/environ").read_bytes()
        assert TOKEN.encode() not in cmdline and str(path).encode() in cmdline
        assert TOKEN.encode() not in environ
        assert t.stop() == 0
    assert TOKEN not in t.stderr and "no token" not in t.stderr and "Traceback" not in t.stderr
    assert "\n".join(t.lines_until_quiet(0.2)).find(TOKEN) < 0


@pytest.mark.kernel
def test_command_takes_the_token_file_from_the_environment(tmp_path: Path) -> None:
    path = token_file(tmp_path, TOKEN.encode())
    with TtcpProcess("--no-api", env={"TTCP_TOKEN_FILE": "/nonexistent"}) as t:  # no API: no token needed
        assert t.stop() == 0
    with TtcpProcess(env={"TTCP_TOKEN_FILE": str(path)}) as t:
        assert t.api("GET", "/")[0] == 401
        assert t.api("GET", "/", headers=AUTH)[0] == 200
        assert t.stop() == 0
    other = token_file(tmp_path, b"another-token-0123456789abcdef", name="other")
    with TtcpProcess("--token-file", str(other), env={"TTCP_TOKEN_FILE": str(path)}) as t:  # the option wins
        assert t.api("GET", "/", headers=AUTH)[0] == 401
        assert t.api("GET", "/", headers={"Authorization": "Bearer another-token-0123456789abcdef"})[0] == 200
        assert t.stop() == 0


@pytest.mark.kernel
@pytest.mark.parametrize("with_token", [False, True])
def test_non_loopback_api_without_a_token_warns_once(tmp_path: Path, with_token: bool) -> None:
    extra = ["--token-file", str(token_file(tmp_path, TOKEN.encode()))] if with_token else []
    with TtcpProcess("--host", "0.0.0.0", *extra) as t:
        assert t.stop() == 0
    warnings = [line for line in t.stderr.splitlines() if "no token" in line]
    if with_token:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warnings[0].startswith("ttcp: the API on 0.0.0.0 has no token")
        assert "--token-file" in warnings[0] and "TTCP_TOKEN_FILE" in warnings[0]


@pytest.mark.kernel
def test_no_warning_without_an_api_or_on_loopback() -> None:
    for args in (("--host", "0.0.0.0", "--no-api"), ("--host", "127.0.0.1"), ("--host", "localhost")):
        with TtcpProcess(*args) as t:
            assert t.stop() == 0
        assert "no token" not in t.stderr, args


@pytest.mark.parametrize("content,needle", [(None, "does not exist"), (b"", "is empty"), (b"a b", "printable")])
def test_command_refuses_a_bad_token_file_in_one_line(tmp_path: Path, content: bytes | None, needle: str) -> None:
    path = tmp_path / "missing" if content is None else token_file(tmp_path, content)
    for r in (_cli("--port", str(free_port()), "--token-file", str(path)),
              _cli("--port", str(free_port()), env={"TTCP_TOKEN_FILE": str(path)})):
        assert r.returncode == 1 and r.stdout == ""
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ttcp: token file") and needle in lines[0], r.stderr


def test_command_refuses_a_bad_allowed_host_in_one_line() -> None:
    for bad, needle in (("ttcp:8090", "port"), ("*.example.com", "wildcard"), ("bad name", "not a DNS name")):
        r = _cli("--allowed-host", bad)
        assert r.returncode == 2 and r.stdout == ""
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "--allowed-host" in lines[0] and needle in lines[0], r.stderr


def test_help_explains_the_fleet_options() -> None:
    r = _cli("--help")
    assert r.returncode == 0
    for needle in ("--pin DIR", "--pin-reset", "--token-file PATH", "TTCP_TOKEN_FILE", "--allowed-host NAME",
                   "Authorization: Bearer", "421", "/sys/fs/bpf", "-v /sys/fs/bpf:/sys/fs/bpf", "SIGKILL",
                   "--max-filters"):
        assert needle in r.stdout, needle
    assert re.search(r"GET /healthz", r.stdout)
