"""Compile the test BPF programs under tests/bpf with clang, once per session."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

BPF_DIR = Path(__file__).parent / "bpf"
SHIPPED = Path(__file__).parent.parent / "ttcp" / "data" / "tcprtt.bpf.o"
SOURCE = Path(__file__).parent.parent / "bpf" / "tcprtt.bpf.c"
CFLAGS = ["-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall"]
_OUT = Path(tempfile.mkdtemp(prefix="ttcp-test-objs-"))


@functools.cache
def compile_bpf(source: str | Path, *defines: str) -> Path:
    """Compile a BPF C file (name under tests/bpf, or a path) and return the .o."""
    src = Path(source) if Path(source).is_absolute() else BPF_DIR / source
    clang = shutil.which("clang")
    if clang is None:
        raise RuntimeError("clang not found: run `make deps` (apt-get install clang llvm libbpf-dev)")
    out = _OUT / (src.stem + "".join("-" + d for d in defines) + ".o")
    cmd = [clang, *CFLAGS, *(f"-D{d}" for d in defines), "-c", str(src), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out
