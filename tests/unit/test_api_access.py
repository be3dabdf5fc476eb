"""Who may call the API: the bearer token and the Host check (issue 14), on every route.

Every route and method of ttcp/data/openapi.json is called without a token,
with the right one, with hostile Authorization headers and with forged Host
headers, against a real listening server (the in-memory table; the kernel
table's behaviour behind the guards is tests/unit/test_server.py's). Answers
are checked against the document: a status it does not list fails. The token
file, the names the API answers to. The `ttcp` command's side of the same
options is tests/system/test_api_command.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.api import AUTH, OPENAPI, TOKEN, health, mono_to_wall, token_file
from tests.support.cli_process import REPO
from tests.support.kernel import scaled
from tests.support.memory_table import MemoryFilterTable
from ttcp import server
from ttcp.api import metrics
from ttcp.api.event_stream import EventHub
from ttcp.api.host_names import host_allowed, is_loopback, normalize_name
from ttcp.api.token import Token, TokenFileError, read_token_file

ADDR = "127.0.14.1"  # this file's filter address (never sent to: only written into tables)
FORGED_HOSTS = ["attacker.example", "attacker.example:8090", "localhost.attacker.example", "127.0.0.1.nip.io",
                "[::1].attacker.example", "xn--80ak6aa92e.com", "ttcp", "LOCALHOST.evil:80", "127.0.0.1:80:80",
                "[::1", "[not-an-ip]:8090", "::1", "2130706433", "0x7f.1", "127.1", "localhost:http",
                "127.0.0.1:99999", "\u0661\u0662\u0667.0.0.1", "local host"]


def _routes() -> list[tuple[str, str]]:
    """(METHOD, concrete path) of every documented operation."""
    out = []
    for path, ops in OPENAPI["paths"].items():
        for method in ops:
            if method not in ("parameters", "description"):
                out.append((method.upper(), path.replace("{filter}", ADDR)))
    return out


ROUTES = _routes()
UNDOCUMENTED = [("GET", "/nope"), ("POST", "/"), ("DELETE", "/healthz"), ("PATCH", f"/filters/{ADDR}"),
                ("GET", "/healthz/"), ("GET", "/HEALTHZ")]


def _operation(method: str, path: str) -> dict[str, Any] | None:
    if path.startswith("/filters/"):
        path = "/filters/{filter}"
    op: dict[str, Any] | None = OPENAPI["paths"].get(path, {}).get(method.lower())
    return op


def _body(method: str, path: str) -> bytes | None:
    if method != "PUT" and method != "DELETE" or path.startswith("/filters/"):
        return None
    return b"on" if path == "/sampling" else ADDR.encode()


# ---- the server, with a full agent ------------------------------------------------------------


def _hooks() -> server.ApiHooks:
    state = {"enabled": False}

    def snapshot() -> metrics.Snapshot:
        return metrics.Snapshot([], events_total=0, dropped={}, filters_max=64, attach_mode="tp_btf",
                                version="test", sampling=state["enabled"])

    def set_sampling(on: bool) -> dict[str, Any]:
        state["enabled"] = on
        return dict(state)

    return server.ApiHooks(health=health, mono_to_wall=mono_to_wall, metrics=snapshot,
                        sampling=lambda: dict(state), set_sampling=set_sampling, events=EventHub(16))


@dataclass
class Api:
    port: int
    session: aiohttp.ClientSession
    table: MemoryFilterTable

    async def call(self, method: str, path: str, headers: dict[str, str] | None = None,
                   body: bytes | None = None) -> tuple[int, Any, Any]:
        """(status, headers, JSON body or None); /events is left after its headers."""
        data = body if body is not None else _body(method, path)
        async with self.session.request(method, path, headers=headers, data=data) as r:
            if path == "/events" and r.status == 200:
                return r.status, r.headers, None
            raw = await r.read()
            return r.status, r.headers, json.loads(raw) if r.content_type == "application/json" and raw else None

    async def raw(self, head: bytes) -> tuple[int, dict[str, str], bytes]:
        """One request written byte for byte (headers no client library would send)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(head)
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), timeout=scaled(10))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        header, _, body = data.partition(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        return int(lines[0].split()[1]), fields, body


@contextlib.asynccontextmanager
async def serving(token: str | None = TOKEN, allowed_hosts: tuple[str, ...] = ()) -> AsyncIterator[Api]:
    table = MemoryFilterTable()
    app = server.create_app(table, _hooks(), token=Token(token.encode()) if token else None,
                            allowed_hosts=allowed_hosts)
    runner = await server.start(app, "127.0.0.1", 0)
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            yield Api(port, session, table)
    finally:
        await server.stop(runner)


def run(scenario: Callable[[Api], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        async with serving(**kw) as api:
            await scenario(api)

    asyncio.run(main())


def assert_refused(status: int, headers: Any, body: Any, expect: int, method: str, path: str) -> None:
    assert status == expect, (method, path, status, body)
    assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str)
    assert TOKEN not in body["error"]
    op = _operation(method, path)
    if op is not None:
        assert str(expect) in op["responses"], f"{method} {path} -> {expect} is not in openapi.json"
    if expect == 401:
        assert headers["WWW-Authenticate"].startswith("Bearer")


# ---- the token ------------------------------------------------------------------------------------


def test_every_route_but_healthz_needs_the_token() -> None:
    async def scenario(api: Api) -> None:
        for method, path in ROUTES:
            status, headers, body = await api.call(method, path)
            if (method, path) == ("GET", "/healthz"):
                assert status == 200 and body == health()
                continue
            assert_refused(status, headers, body, 401, method, path)
            assert "Bearer" in body["error"]
        assert len(api.table) == 0  # no refused write got through

    run(scenario)


def test_the_right_token_opens_every_route() -> None:
    async def scenario(api: Api) -> None:
        for method, path in ROUTES:
            for auth in (AUTH, {"Authorization": f"bearer   {TOKEN}  "}):  # the scheme is case-insensitive
                status, _, body = await api.call(method, path, headers=auth)
                op = _operation(method, path)
                assert op is not None and str(status) in op["responses"], (method, path, status, body)
                assert status < 500 and status not in (401, 421), (method, path, status, body)
        assert [str(f) for f in api.table.filters()] == []  # PUT then DELETE, twice

    run(scenario)


def test_without_a_token_every_route_is_open() -> None:
    async def scenario(api: Api) -> None:
        for method, path in ROUTES:
            status, _, body = await api.call(method, path)
            assert status < 500 and status not in (401, 421), (method, path, status, body)
            status, _, body = await api.call(method, path, headers={"Authorization": "Bearer whatever"})
            assert status not in (401, 421), (method, path, status, body)

    run(scenario, token=None)


def test_unknown_paths_and_methods_need_the_token_first() -> None:
    async def scenario(api: Api) -> None:
        for method, path in UNDOCUMENTED:
            status, headers, body = await api.call(method, path)
            assert_refused(status, headers, body, 401, method, path)
            status, _, _ = await api.call(method, path, headers=AUTH)
            assert status in (404, 405), (method, path, status)
        for path in (b"//healthz", b"/./healthz", b"/%68ealthz"):  # only GET /healthz itself is open
            status, headers, raw = await api.raw(b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                 b"Connection: close\r\n\r\n")
            assert status in (200, 401), (path, status)
            if status == 200:  # what aiohttp normalizes to /healthz is /healthz
                assert json.loads(raw) == health()

    run(scenario)


HOSTILE_AUTHORIZATION: list[bytes] = [
    b"Bearer",
    b"Bearer ",
    b"Bearer  \t ",
    b"bearer",
    b"Bearer" + TOKEN.encode(),  # no space
    b"Bearer\t" + TOKEN.encode(),
    b"Basic " + __import__("base64").b64encode(b"ttcp:" + TOKEN.encode()),
    b"Token " + TOKEN.encode(),
    b"Bearer " + TOKEN[:-1].encode(),  # a prefix
    b"Bearer " + TOKEN.encode() + b"x",  # longer
    b"Bearer " + TOKEN.upper().encode(),
    b"Bearer " + TOKEN.encode() + b" extra",
    b"Bearer \"" + TOKEN.encode() + b"\"",
    b"Bearer " + "t\u00f6k\u00e9n-\u2603".encode(),  # UTF-8
    b"Bearer \xff\xfe\x80" + TOKEN.encode(),  # not UTF-8
    b"Bearer " + TOKEN.encode()[:-1] + b"\xe9",  # the right length, one byte off
    b"\xf0\x9f\x94\x91 " + TOKEN.encode(),
    b"Bearer " + b"A" * 7000,  # long, within aiohttp's header limit
    b"Bearer " + b"A" * 20000,  # past it: aiohttp's parser refuses the request (400)
    b"",
    b" ",
    b"Bearer \x01" + TOKEN.encode(),
]


def test_hostile_authorization_headers_are_401_never_5xx() -> None:
    async def scenario(api: Api) -> None:
        for method, path in (("PUT", "/"), ("GET", "/metrics"), ("GET", "/openapi.json"), ("DELETE", "/filters")):
            body = _body(method, path) or b""
            for value in HOSTILE_AUTHORIZATION:
                head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                        f"Content-Length: {len(body)}\r\n").encode() + b"Authorization: " + value + b"\r\n\r\n" + body
                status, headers, raw = await api.raw(head)
                assert status < 500, (value[:40], status, raw[:200])
                if len(value) > 8000 or re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value):
                    assert status == 400, (value[:40], status, raw[:200])  # aiohttp's parser refuses it
                    continue
                assert_refused(status, headers, json.loads(raw), 401, method, path)
                assert TOKEN.encode() not in raw and (len(value) < 8 or value[7:] not in raw)
            two = [AUTH["Authorization"].encode(), b"Bearer wrong"]
            for pair in (two, two[::-1], [two[0], two[0]]):  # two headers: refused whichever order, even twice right
                head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                        f"Content-Length: {len(body)}\r\n").encode()
                head += b"".join(b"Authorization: " + v + b"\r\n" for v in pair) + b"\r\n" + body
                status, headers, raw = await api.raw(head)
                assert_refused(status, headers, json.loads(raw), 401, method, path)
                assert "one Authorization header" in json.loads(raw)["error"]
        assert len(api.table) == 0

    run(scenario)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.binary(max_size=300).filter(lambda b: not set(b) & {0, 10, 13}))
def test_any_authorization_bytes_are_answered_without_5xx(value: bytes) -> None:
    async def scenario(api: Api) -> None:
        head = (b"GET /filters HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: " + value
                + b"\r\n\r\n")
        status, _, raw = await api.raw(head)
        assert status in (400, 401), (value, status, raw[:200])

    run(scenario)


def test_the_token_is_compared_with_compare_digest_on_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr("ttcp.api.token.hmac.compare_digest", spy)

    async def scenario(api: Api) -> None:
        assert (await api.call("GET", "/", headers={"Authorization": "Bearer nope"}))[0] == 401
        assert (await api.call("GET", "/", headers=AUTH))[0] == 200

    run(scenario)
    assert seen == [(b"nope", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


def test_token_object_does_not_show_its_value() -> None:
    t = Token(TOKEN.encode())
    assert TOKEN not in repr(t) and TOKEN not in str(t) and TOKEN not in f"{t!r} {t}"
    assert t.matches(TOKEN.encode()) and not t.matches(b"") and len(t) == len(TOKEN)
    for bad in (b"", b"has space", b"tab\there", "n\u00e9".encode()):
        with pytest.raises(ValueError):
            Token(bad)


# ---- the Host check -----------------------------------------------------------------------------


def test_forged_host_is_421_on_every_route_with_or_without_a_token() -> None:
    async def check(api: Api, auth: dict[str, str]) -> None:
        for method, path in ROUTES + UNDOCUMENTED:
            for host in FORGED_HOSTS:
                status, headers, body = await api.call(method, path, headers={"Host": host, **auth})
                assert_refused(status, headers, body, 421, method, path)
                assert "DNS rebinding" in body["error"] and "--allowed-host" in body["error"]
        assert len(api.table) == 0

    async def with_token(api: Api) -> None:
        await check(api, {})
        await check(api, AUTH)

    async def without(api: Api) -> None:
        await check(api, {})

    run(with_token)
    run(without, token=None)


def test_names_the_api_answers_to() -> None:
    async def scenario(api: Api) -> None:
        for host in ("127.0.0.1", "127.0.0.1:8090", "10.244.3.7:8090", "[::1]", "[::1]:8090",
                     "[2001:db8::7]:80", "[fe80::1%25eth0]:8090", "localhost", "LocalHost:8090", "localhost.",
                     "ttcp.example.com", "TTCP.Example.COM.:443", "ttcp-metrics.monitoring.svc:8090",
                     "127.0.0.1:"):
            status, _, body = await api.call("GET", "/healthz", headers={"Host": host})
            assert status == 200, (host, body)
            status, _, body = await api.call("GET", "/", headers={"Host": host, **AUTH})
            assert status == 200, (host, body)
        raw_status, _, _ = await api.raw(b"GET /healthz HTTP/1.0\r\n\r\n")  # no Host: no browser's request
        assert raw_status == 200

    run(scenario, allowed_hosts=("ttcp.example.com", "ttcp-metrics.monitoring.svc"))


@pytest.mark.parametrize("host,ok", [
    ("127.0.0.1", True), ("127.0.0.1:1", True), ("0.0.0.0", True), ("[::]:8090", True), ("[::ffff:10.0.0.1]", True),
    ("localhost:65535", True), ("allowed.example", True), ("Allowed.Example.", True),
    ("[127.0.0.1]", False), ("[::1]x", False), ("::1", False), ("127.0.0.1:65536", False), ("127.0.0.1:-1", False),
    ("127.0.0.1:8a", False), ("allowed.example.evil", False), ("evil.allowed.example", False), ("", False),
    ("localhost:8090:1", False), ("l\u043ecalhost", False), ("01.2.3.4", False), ("1.2.3", False),
])
def test_host_allowed(host: str, ok: bool) -> None:
    assert host_allowed(host, frozenset({"allowed.example"})) is ok


def test_normalize_name() -> None:
    assert normalize_name("TTCP.Example.com.") == "ttcp.example.com"
    assert normalize_name("ttcp") == "ttcp"
    for bad, needle in (("ttcp.example.com:8090", "port"), ("http://ttcp", "scheme"), ("*.example.com", "wildcard"),
                        ("-bad.example", "not a DNS name"), ("a..b", "not a DNS name"), ("", "not a DNS name"),
                        ("n\u00e9.example", "not a DNS name"), ("a" * 64 + ".example", "not a DNS name")):
        with pytest.raises(ValueError, match=needle):
            normalize_name(bad)


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True),
                                           ("localhost", True), ("0.0.0.0", False), ("::", False),
                                           ("10.0.0.1", False), ("ttcp.example.com", False), ("", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# ---- token files ------------------------------------------------------------------------------------


def test_token_file_is_read_and_trimmed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ttcp"):
        token = read_token_file(token_file(tmp_path, TOKEN.encode() + b"\n"))
    assert token.matches(TOKEN.encode()) and caplog.records == []
    link = tmp_path / "link"  # Kubernetes mounts Secret keys as symlinks
    link.symlink_to(tmp_path / "token")
    assert read_token_file(link).matches(TOKEN.encode())


@pytest.mark.parametrize("content,needle", [
    (b"", "is empty"), (b" \n\n", "is empty"), (b"two words", "printable ASCII without spaces"),
    (b"line1\nline2", "printable ASCII"), ("t\u00f6ken".encode(), "printable ASCII"), (b"x" * 5000, "larger than"),
])
def test_bad_token_file_contents(tmp_path: Path, content: bytes, needle: str) -> None:
    with pytest.raises(TokenFileError, match=needle) as info:
        read_token_file(token_file(tmp_path, content))
    assert "\n" not in str(info.value) and "line1" not in str(info.value)


def test_unusable_token_paths(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="does not exist"):
        read_token_file(tmp_path / "missing")
    with pytest.raises(TokenFileError, match="is a directory"):
        read_token_file(tmp_path)
    with pytest.raises(TokenFileError, match="not a regular file"):
        read_token_file("/dev/null")


def test_unreadable_token_file(tmp_path: Path) -> None:
    path = token_file(tmp_path, TOKEN.encode(), 0o000)
    if os.geteuid() == 0:  # root reads anything: use a directory it cannot search instead
        locked = tmp_path / "locked"
        locked.mkdir()
        (locked / "token").write_bytes(TOKEN.encode())
        path = locked / "token"
        if subprocess.run(["setpriv", "--help"], capture_output=True, check=False).returncode != 0:
            pytest.skip("setpriv (util-linux) is not installed")
        locked.chmod(0o700)
        code = f"from ttcp.api.token import read_token_file; read_token_file({str(path)!r})"
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                            code], cwd=REPO, capture_output=True, text=True, check=False,
                           env=dict(os.environ, PYTHONPATH=REPO))
        assert "TokenFileError: cannot read token file" in r.stderr and "Permission denied" in r.stderr, r.stderr
        return
    with pytest.raises(TokenFileError, match="cannot read token file .*Permission denied"):
        read_token_file(path)


def test_loose_permissions_and_short_tokens_draw_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ttcp"):
        read_token_file(token_file(tmp_path, TOKEN.encode(), 0o644))
        read_token_file(token_file(tmp_path, b"short", 0o600))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "mode 0644" in messages[0] and "chmod 600" in messages[0]
    assert "only 5 characters" in messages[1]
    assert not any(TOKEN in m or "short" in m.split(":")[0] for m in messages)
