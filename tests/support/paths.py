"""Where things are in the checkout: one place for every test and helper to ask."""

from __future__ import annotations

from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "ttcp" / "data" / "tcprtt.bpf.o"  # the object ttcp ships
SOURCE = REPO / "bpf" / "tcprtt.bpf.c"  # and its source
TEST_BPF = Path(__file__).parent / "bpf"  # the test programs' sources
FUZZ_CORPUS = Path(__file__).parent / "fuzz_corpus"  # inputs that once broke a parser, replayed


@cache
def ttcp_modules() -> dict[str, Path]:
    """Every module of the ttcp package by its dotted name (a package by its own)."""
    out = {}
    for path in sorted((REPO / "ttcp").rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out
