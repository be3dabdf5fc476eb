"""Where things are in the checkout: one place for every test and helper to ask."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "ttcp" / "data" / "tcprtt.bpf.o"  # the object ttcp ships
SOURCE = REPO / "bpf" / "tcprtt.bpf.c"  # and its source
TEST_BPF = Path(__file__).parent / "bpf"  # the test programs' sources
FUZZ_CORPUS = Path(__file__).parent / "fuzz_corpus"  # inputs that once broke a parser, replayed
