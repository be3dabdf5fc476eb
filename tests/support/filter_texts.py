"""Filters as a user writes them, for generators (hypothesis strategies): both address
families, hosts and networks with their host bits cleared, any side, port, breakdown
(`by`) and keyword case, any inner whitespace. Every text drawn parses; `broken=True`
draws networks whose host bits may be set, which the language refuses (a negative
control)."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

_SPACE = st.sampled_from([" ", "  ", "\t", " \t "])


def _any_case(word: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(word, upper, strict=True)))


@st.composite
def addresses(draw: st.DrawFn, broken: bool = False) -> str:
    """ADDRESS or ADDRESS/PREFIX."""
    v4 = draw(st.booleans())
    width = 32 if v4 else 128
    ip = (ipaddress.IPv4Address if v4 else ipaddress.IPv6Address)(draw(st.integers(0, 2**width - 1)))
    form = draw(st.sampled_from(["host", "network", "full"]))
    if form == "host":
        return ip.exploded if not v4 and draw(st.booleans()) else str(ip)
    plen = width if form == "full" else draw(st.integers(0, width))
    if broken:
        return f"{ip}/{plen}"
    return f"{ipaddress.ip_network(f'{ip}/{plen}', strict=False).network_address}/{plen}"


@st.composite
def by_keys(draw: st.DrawFn) -> str:
    """A `by` clause's key: raddr[/N], laddr[/N], rport, lport, cgroup, netns, container, pod."""
    word = draw(st.sampled_from(["raddr", "laddr", "rport", "lport", "cgroup", "netns", "container", "pod"]))
    text = draw(_any_case(word))
    if word.endswith("addr") and draw(st.booleans()):
        text += f"/{draw(st.integers(1, 128))}"
    return text


@st.composite
def filter_texts(draw: st.DrawFn, broken: bool = False, by: bool | None = None) -> str:
    """`[src|dst] ADDRESS[/PREFIX] [port N] [by KEY]`, without surrounding whitespace;
    `by` True: always a breakdown, False: never, None: sometimes."""
    parts = []
    side = draw(st.sampled_from([None, "src", "dst"]))
    if side:
        parts += [draw(_any_case(side)), draw(_SPACE)]
    parts.append(draw(addresses(broken)))
    if draw(st.booleans()):
        parts += [draw(_SPACE), draw(_any_case("port")), draw(_SPACE), str(draw(st.integers(1, 65535)))]
    # (A broken text draws no breakdown: the negative control's draws stay those of its seed.)
    if by or (by is None and not broken and draw(st.integers(0, 3)) == 0):
        parts += [draw(_SPACE), draw(_any_case("by")), draw(_SPACE), draw(by_keys())]
    return "".join(parts)


def filter_lines(broken: bool = False) -> st.SearchStrategy[str]:
    """A text body: one filter per line."""
    return st.lists(filter_texts(broken), min_size=1, max_size=5).map(lambda fs: "\n".join(fs) + "\n")


_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-@:", min_size=1,
                max_size=24)


def cgroup_paths() -> st.SearchStrategy[str]:
    """Canonical cgroup-v2 paths below this file's own part of the tree (no cgroup need be
    there: a path without one is accepted, pending), and the root."""
    return st.one_of(st.just("/"), st.lists(_NAME, min_size=1, max_size=4).map(
        lambda names: "/ttcp-contract/" + "/".join(names)))


def netns_paths() -> st.SearchStrategy[str]:
    """Network namespace files that exist wherever ttcp runs: its own."""
    return st.sampled_from(["/proc/self/ns/net", "/proc/thread-self/ns/net"])


def container_names() -> st.SearchStrategy[str]:
    """Container names (Docker's rule) and id-like hex strings: accepted whether or not a
    container runs (pending)."""
    return st.one_of(st.from_regex(r"\A[a-zA-Z0-9][a-zA-Z0-9_.-]{0,40}\Z"),
                     st.text("0123456789abcdef", min_size=12, max_size=64))


def pod_names() -> st.SearchStrategy[str]:
    """NAMESPACE/NAME of pods that need not exist (pending)."""
    label = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z")
    return st.tuples(label, label).map("/".join)
