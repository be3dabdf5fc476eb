"""Compile the test BPF programs under tests/support/bpf with clang, once.

Objects are kept by the hash of their source, flags and clang's version in
TTCP_BPF_CACHE (default ~/.cache/ttcp/bpf-objects) when that is writable:
`make vmtest` compiles them on the host, and a guest under emulation, which
sees that directory read-only, reuses them instead of running clang slowly.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support import paths

BPF_DIR = paths.TEST_BPF
SHIPPED = paths.SHIPPED
SOURCE = paths.SOURCE
CFLAGS = ["-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall"]
CACHE = Path(os.environ.get("TTCP_BPF_CACHE") or Path.home() / ".cache" / "ttcp" / "bpf-objects")
_SCRATCH = Path(tempfile.mkdtemp(prefix="ttcp-test-objs-"))


@functools.cache
def _clang() -> tuple[str, str]:
    clang = shutil.which("clang")
    if clang is None:
        raise RuntimeError("clang not found: run `make deps` (apt-get install clang llvm libbpf-dev)")
    version = subprocess.run([clang, "--version"], capture_output=True, text=True, check=True).stdout
    return clang, version


@functools.cache
def compile_bpf(source: str | Path, *defines: str) -> Path:
    """Compile a BPF C file (name under tests/support/bpf, or a path) and return the .o."""
    src = Path(source) if Path(source).is_absolute() else BPF_DIR / source
    flags = [*CFLAGS, *(f"-D{d}" for d in defines)]
    clang, version = _clang()
    key = hashlib.sha256(src.read_bytes() + "\0".join([*flags, version]).encode()).hexdigest()[:16]
    cached = CACHE / f"{src.stem}-{key}.o"
    if cached.exists():
        return cached
    out = _SCRATCH / f"{src.stem}-{key}.o"
    subprocess.run([clang, *flags, "-c", str(src), "-o", str(out)], check=True, capture_output=True, text=True)
    try:  # keep it for the next session (or a guest of make vmtest)
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = CACHE / f".{out.name}.{os.getpid()}"
        shutil.copyfile(out, tmp)
        tmp.rename(cached)
    except OSError:
        pass
    return out


def compile_all() -> None:
    """Every object the tests use (make vmtest runs this on the host first)."""
    for src in sorted(BPF_DIR.glob("*.bpf.c")):
        compile_bpf(src.name)
    compile_bpf(SOURCE)
