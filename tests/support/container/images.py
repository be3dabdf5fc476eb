"""Images for the container test: a local stand-in for python:3.11-slim, and ttcp's own.

No image registry is reachable from the test machine, so `FROM python:3.11-slim`
cannot be pulled. The stand-in is Debian bookworm made with debootstrap
(Debian's python3 3.11, pip, venv; `python` on PATH; no PEP 668 marker; the
host's extra CA certificates, without which pip cannot reach PyPI through an
intercepting proxy), tagged python:3.11-slim in the private daemon only. The
project's Dockerfile is then built unchanged, as a user would: `docker build -t
ttcp .`. The debootstrap tree is cached as a tarball (~/.cache/ttcp/), keyed by
its recipe, so only the first run pays for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from tests.support import paths
from tests.support.container.engine import Engine, Log, run

REPO = paths.REPO
BASE_IMAGE = "python:3.11-slim"  # what the Dockerfile's FROM names
RAW_IMAGE = "ttcp-test/debian:bookworm"
IMAGE = "ttcp"
RECIPE = {
    "suite": "bookworm",
    "variant": "minbase",
    "include": ["python3", "python3-pip", "python3-venv", "python-is-python3", "ca-certificates"],
    "mirror": os.environ.get("TTCP_DEBIAN_MIRROR", "http://deb.debian.org/debian"),
    "arch": platform.machine(),
    "pruned": ["var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"],
}
CA_DIR = Path("/usr/local/share/ca-certificates")
STANDIN_DOCKERFILE = f"""\
FROM {RAW_IMAGE}
COPY ca/ /usr/local/share/ca-certificates/
RUN rm -f /usr/lib/python3*/EXTERNALLY-MANAGED && update-ca-certificates >/dev/null
ENV LANG=C.UTF-8
CMD ["python3"]
"""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ttcp"


def rootfs_tarball(work: Path, log: Log, timings: dict[str, float]) -> Path:
    """The debootstrapped tree as a tarball, from the cache or made now (about a minute)."""
    key = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / f"debian-{RECIPE['suite']}-{RECIPE['variant']}-{key}.tar"
    if path.exists():
        log(f"container: base tree from the cache ({path})")
        return path
    root = work / "rootfs"
    cmd = ["debootstrap", f"--variant={RECIPE['variant']}", f"--include={','.join(RECIPE['include'])}",
           RECIPE["suite"], str(root), RECIPE["mirror"]]
    log("container: + " + " ".join(cmd))
    t0 = time.monotonic()
    run(cmd, "debootstrap the base image", timeout=900)
    timings["debootstrap"] = time.monotonic() - t0
    for pattern in RECIPE["pruned"]:
        for p in root.glob(pattern):
            if p.is_file():
                p.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tmp), "."], "tar the base tree", timeout=300)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)
    log(f"container: base tree cached in {path} ({path.stat().st_size >> 20} MiB)")
    return path


def has_image(engine: Engine, name: str) -> bool:
    done = subprocess.run([engine.client, "image", "inspect", name], capture_output=True, env=engine.env,
                          timeout=30, check=False)
    return done.returncode == 0


def ensure_base(engine: Engine, log: Log, timings: dict[str, float]) -> None:
    """python:3.11-slim in the private daemon: the local stand-in, imported and finished."""
    if has_image(engine, BASE_IMAGE):
        return
    work = engine.run_dir / "base"
    work.mkdir(exist_ok=True)
    tarball = rootfs_tarball(work, log, timings)
    t0 = time.monotonic()
    engine.docker("import", str(tarball), RAW_IMAGE, step="import the base tree", timeout=300)
    ca = work / "standin" / "ca"
    ca.mkdir(parents=True)
    for cert in sorted(CA_DIR.glob("**/*.crt")) if CA_DIR.is_dir() else []:
        shutil.copy(cert, ca / cert.name)
    (work / "standin" / "Dockerfile").write_text(STANDIN_DOCKERFILE)
    engine.docker("build", "-q", "-t", BASE_IMAGE, str(work / "standin"), step=f"build the {BASE_IMAGE} stand-in")
    timings["base image"] = time.monotonic() - t0
    log(f"container: {BASE_IMAGE} is a local stand-in (Debian {RECIPE['suite']}, "
        f"{len(list(ca.iterdir()))} extra CA certificates)")


def build_ttcp(engine: Engine, log: Log, timings: dict[str, float]) -> None:
    """`docker build -t ttcp .` in the repository, as the README says."""
    args = ["build", "-t", IMAGE, "."]
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        if os.environ.get(var):  # the predefined build args docker accepts without an ARG line
            args[1:1] = ["--build-arg", var]
    log(f"container: + docker {' '.join(args)}   (in {REPO})")
    t0 = time.monotonic()
    engine.docker(*args, step="docker build -t ttcp .", timeout=900, cwd=REPO)
    timings["docker build"] = time.monotonic() - t0
