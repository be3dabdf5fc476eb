"""The API's bearer token and the file it comes from (no aiohttp, no kernel calls).

The token comes from a file (`--token-file`, or the file named by
TTCP_TOKEN_FILE): a file keeps it out of argv, which `ps` and
/proc/PID/cmdline show to every user, and out of the environment, which
`docker inspect` shows; Kubernetes Secrets mount as files. It is kept as
bytes, compared in constant time (ttcp.api.guards), and never logged, echoed
or put in an error.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
from pathlib import Path

from ttcp.errors import TtcpError

log = logging.getLogger("ttcp")

TOKEN_FILE_ENV = "TTCP_TOKEN_FILE"
MAX_TOKEN_FILE = 4096  # bytes; anything larger is not a token file
SHORT_TOKEN = 16  # characters; fewer draws a warning


class TokenFileError(TtcpError):
    """A token file ttcp cannot use (the message never includes its content)."""


class InvalidTokenError(TtcpError, ValueError):
    """Bytes that cannot be a token (empty, or not printable ASCII without spaces)."""


class Token:
    """The API's secret; its repr and str do not show it."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if not value or not all(0x21 <= b <= 0x7E for b in value):
            raise InvalidTokenError("a token is one or more printable ASCII characters without spaces")
        self._value = value

    def matches(self, offered: bytes) -> bool:
        return hmac.compare_digest(offered, self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return "Token(<hidden>)"

    __str__ = __repr__


def read_token_file(path: str | os.PathLike[str]) -> Token:
    """The token in `path`: one line of printable ASCII (surrounding whitespace,
    such as the newline `echo` adds, is dropped). A file group or others can
    read, or a short token, is used with a warning."""
    where = Path(path)
    try:
        with open(where, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise TokenFileError(f"token file {where} is not a regular file")
            raw = f.read(MAX_TOKEN_FILE + 1)
    except FileNotFoundError:
        raise TokenFileError(f"token file {where} does not exist") from None
    except IsADirectoryError:
        raise TokenFileError(f"token file {where} is a directory") from None
    except OSError as e:
        raise TokenFileError(f"cannot read token file {where}: {e.strerror}") from None
    if len(raw) > MAX_TOKEN_FILE:
        raise TokenFileError(f"token file {where} is larger than {MAX_TOKEN_FILE} bytes: not a token")
    try:
        token = Token(raw.strip(b" \t\r\n"))
    except InvalidTokenError:
        what = "is empty" if not raw.strip() else "must hold one token of printable ASCII without spaces"
        raise TokenFileError(f"token file {where} {what}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("token file %s can be read by group or others (mode %04o): chmod 600 it", where,
                    stat.S_IMODE(mode))
    if len(token) < SHORT_TOKEN:
        log.warning("the token in %s has only %d characters: use %d or more random ones "
                    "(e.g. openssl rand -hex 32)", where, len(token), 2 * SHORT_TOKEN)
    return token
