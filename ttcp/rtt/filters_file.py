"""The filters file (--filters-file): its format, and what a version of it changes (pure).

One filter per line in the filter language (ttcp.rtt.filters); `#` starts a
comment, on a line of its own or after a filter; blank lines and surrounding
whitespace are ignored; UTF-8 (a BOM is tolerated). A filter listed twice, or
in two spellings of one canonical text, is one filter. A version with any bad
line is refused whole (FiltersFileError names the line): a half-applied
configuration would be worse than the last good one.

Applying a version is a diff against the table (`plan`): the filters the file
manages that it no longer lists go, those it lists that the table lacks come
in, those it lists that the API added become the file's (their counters
kept), and the ones that stay are not touched, so they keep their histograms.
Filters the API added and the file does not list are left alone.
ttcp.rtt.filters_sync reads the file and performs the plan.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ttcp.errors import TtcpError
from ttcp.rtt import filters as F
from ttcp.rtt.filters import Filter, FilterError
from ttcp.rtt.table_rules import Origin

MAX_BYTES = 1 << 20  # a ConfigMap holds at most 1 MiB; 16,000 filters of the longest kind fit
DIGEST_CHARS = 12  # of the SHA-256: the version shown in GET /filters


class FiltersFileError(TtcpError):
    """A version of the file that cannot be applied; `line` is 1-based, None when the
    problem is the file as a whole (missing, unreadable, too large, too many filters)."""

    def __init__(self, line: int | None, message: str) -> None:
        self.line, self.message = line, message
        super().__init__(f"line {line}: {message}" if line is not None else message)


@dataclass(frozen=True)
class Version:
    """A good version of the file: its filters in the order listed, once each."""

    digest: str
    filters: tuple[Filter, ...]


@dataclass(frozen=True)
class Problem:
    line: int | None
    message: str
    at: float  # Unix time it was seen


@dataclass(frozen=True)
class Status:
    """What GET /filters shows of the file (ttcp.rtt.filters_sync keeps it)."""

    path: str
    version: str | None  # digest of the content in force
    applied_at: float | None  # Unix time it was applied
    filters: int  # filters it lists
    error: Problem | None  # why the file as it is now is not in force


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:DIGEST_CHARS]


def parse(raw: bytes) -> Version:
    """The filters of one version of the file; FiltersFileError at the first bad line."""
    if len(raw) > MAX_BYTES:
        raise FiltersFileError(None, f"{len(raw)} bytes, more than the {MAX_BYTES} a filters file may hold")
    found: dict[Filter, None] = {}
    selectors: dict[Filter, tuple[int, Filter]] = {}  # one filter per selector, whatever its `by`
    for number, line in enumerate(raw.removeprefix(b"\xef\xbb\xbf").split(b"\n"), 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FiltersFileError(number, f"not UTF-8 (byte {e.start + 1} of the line)") from None
        text = text.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            f = F.parse(text)
        except FilterError as e:
            raise FiltersFileError(number, str(e)) from None
        first, other = selectors.setdefault(f.selector, (number, f))
        if other != f:
            raise FiltersFileError(number, f"{f}: line {first} has {other}, which selects the same connections "
                                           "(a selector has one filter, with one breakdown or none)")
        found[f] = None
    return Version(digest(raw), tuple(found))


@dataclass(frozen=True)
class Plan:
    """What applying a version changes; nothing else in the table moves."""

    add: tuple[Filter, ...]  # listed, not in the table: added as the file's
    claim: tuple[Filter, ...]  # listed, in the table as the API's: the file takes them over
    remove: tuple[Filter, ...]  # the file's, no longer listed

    @property
    def growth(self) -> int:
        """How many more filters the table holds afterwards (negative: fewer)."""
        return len(self.add) - len(self.remove)

    def __bool__(self) -> bool:
        return bool(self.add or self.claim or self.remove)


def plan(wanted: Sequence[Filter], held: Mapping[Filter, Origin]) -> Plan:
    """The diff from the table (`held`: each filter and who added it) to a version listing `wanted`."""
    listed = set(wanted)
    return Plan(add=tuple(f for f in wanted if f not in held),
                claim=tuple(f for f in wanted if held.get(f, Origin.FILE) is not Origin.FILE),
                remove=tuple(f for f, origin in held.items() if origin is Origin.FILE and f not in listed))
