#!/usr/bin/env python3
"""Fail if the shipped BPF object's instructions differ from a fresh build.

Usage: check_bpf_object.py SHIPPED.o REBUILT.o
Compares every executable section byte for byte (instructions and their
relocations); debug info and string tables may differ without harm.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ttcp.obj.elf import read_object


def main(shipped: str, rebuilt: str) -> int:
    a, b = read_object(shipped), read_object(rebuilt)
    problems = []
    for name in sorted(set(a.exec_sections) | set(b.exec_sections)):
        sa, sb = a.exec_sections.get(name), b.exec_sections.get(name)
        if sa is None or sb is None:
            problems.append(f"section {name} only in {'rebuilt' if sa is None else 'shipped'} object")
        elif sa.data != sb.data or sa.relocs != sb.relocs:
            problems.append(f"section {name}: instructions differ ({sa.insn_count} vs {sb.insn_count})")
    if a.map_symbols != b.map_symbols:
        problems.append("map definitions differ")
    for p in problems:
        print(f"check_bpf_object: {p}", file=sys.stderr)
    if problems:
        print("check_bpf_object: run `make bpf` and commit ttcp/data/tcprtt.bpf.o", file=sys.stderr)
        return 1
    print(f"check_bpf_object: {shipped} matches its source ({len(a.exec_sections)} program sections)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
