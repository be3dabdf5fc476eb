"""Who may call the API: two aiohttp middlewares that run before any handler (no kernel calls).

- `check_host`: the Host header must name the API as it is really reached
  (ttcp.api.host_names: an IP literal, localhost, or an --allowed-host name),
  else 421 Misdirected Request: a guard against DNS rebinding, on every
  route. A request without Host (HTTP/1.0) is no browser's and passes.
- `bearer_auth`: with a token (ttcp.api.token), every request but
  `GET /healthz` (what liveness and readiness probes call; it changes nothing
  and tells nothing secret) must carry `Authorization: Bearer TOKEN`, else 401
  with `WWW-Authenticate: Bearer`. It runs before routing, so unknown paths
  and methods tell an unauthenticated caller nothing either.

Both answer with a JSON error like every other refusal of the API, and never
quote a credential a client sent.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ttcp.api.host_names import host_allowed, normalize_name
from ttcp.api.token import Token

OPEN_ROUTES = frozenset({("GET", "/healthz")})
_CHALLENGE = 'Bearer realm="ttcp"'
_SHOWN = 80  # characters of a refused Host quoted back


def check_host(allowed: Iterable[str] = ()) -> Middleware:
    """The middleware: 421 unless Host is an IP literal, localhost or one of `allowed`."""
    names = frozenset(normalize_name(n) for n in allowed)

    @web.middleware
    async def require_known_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if host is not None and not host_allowed(host, names):
            shown = host if len(host) <= _SHOWN else host[:_SHOWN] + "..."
            return web.json_response({"error": (
                f"Host {shown!r} is not a name of this API (a guard against DNS rebinding): call it by "
                "IP address or localhost, or start ttcp with --allowed-host NAME")}, status=421)
        return await handler(request)

    return require_known_host


def _refusal(headers: list[str], token: Token) -> tuple[str, str] | None:
    """(error, WWW-Authenticate) when the Authorization headers do not carry the token."""
    if not headers:
        return "this API needs a token: send Authorization: Bearer <token>", _CHALLENGE
    invalid = _CHALLENGE + ', error="invalid_request"'
    if len(headers) > 1:
        return f"send one Authorization header, not {len(headers)}", invalid
    scheme, _, credentials = headers[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        return "Authorization must use the Bearer scheme: Authorization: Bearer <token>", invalid
    offered = credentials.strip()
    if not offered:
        return "Authorization: Bearer carries no token", invalid
    try:
        raw = offered.encode("utf-8", "surrogateescape")  # aiohttp's own decoding, undone
    except UnicodeEncodeError:
        raw = b""
    if not token.matches(raw):
        return "wrong bearer token", _CHALLENGE + ', error="invalid_token"'
    return None


def bearer_auth(token: Token) -> Middleware:
    """The middleware: 401 unless the request carries `token` (GET /healthz is open)."""

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.method, request.path) not in OPEN_ROUTES:
            refused = _refusal(request.headers.getall("Authorization", []), token)
            if refused is not None:
                error, challenge = refused
                return web.json_response({"error": error}, status=401,
                                         headers={"WWW-Authenticate": challenge})
        return await handler(request)

    return require_token
