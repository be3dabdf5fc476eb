"""Debian kernel packages, fetched with a private apt configuration and unpacked.

Nothing is installed on the host: apt runs with its own sources list, lists
and cache under the cache directory, verifies the archive's signatures with
Debian's keyring, downloads one linux-image package and `dpkg-deb -x`
unpacks it next to it (vmlinuz under boot/, modules under lib/modules/).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ARCHIVE = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
SUITES = ("bullseye", "bookworm", "trixie")  # 5.10, 6.1 (+ 6.12 backports), 6.12
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
LISTS_MAX_AGE_S = 24 * 3600
# linux-image-5.10.0-32-amd64, linux-image-6.12.117+deb13-amd64 (not -rt, -cloud, -dbg, -unsigned)
_IMAGE = re.compile(r"^linux-image-(\d+\.\d+)[.-]\d[0-9.]*(?:-\d+|\+deb\d+|-0\.deb\d+\.\d+)-amd64$")


class KernelError(Exception):
    """A kernel that cannot be resolved, fetched or unpacked."""


@dataclass(frozen=True)
class Kernel:
    release: str  # what the user asked for, e.g. "6.1"
    package: str  # linux-image-6.1.0-50-amd64
    root: Path  # the unpacked package

    @property
    def uname(self) -> str:
        return self.package.removeprefix("linux-image-")

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.uname}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.uname


def cache_dir() -> Path:
    base = os.environ.get("TTCP_VMTEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ttcp", "vmtest")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


class Apt:
    """apt-get/apt-cache with every path private to the cache directory."""

    def __init__(self, cache: Path) -> None:
        self.dir = cache / "apt"
        for sub in ("lists/partial", "archives/partial"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.sources = self.dir / "sources.list"
        lines = []
        for suite in SUITES:
            lines.append(f"deb [signed-by={KEYRING}] {ARCHIVE} {suite} main")
            lines.append(f"deb [signed-by={KEYRING}] {SECURITY} {suite}-security main")
        self.sources.write_text("\n".join(lines) + "\n")
        self.options = [
            "-o", f"Dir::Etc::sourcelist={self.sources}", "-o", "Dir::Etc::sourceparts=-",
            "-o", f"Dir::State::Lists={self.dir / 'lists'}", "-o", f"Dir::Cache={self.dir}",
            "-o", "APT::Architecture=amd64", "-o", "APT::Sandbox::User=root",
            "-o", "Debug::NoLocking=1",
        ]

    def _run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        r = subprocess.run([tool, *self.options, *args], capture_output=True, text=True, cwd=cwd,
                           check=False)
        if r.returncode != 0:
            raise KernelError(f"{tool} {' '.join(args)}: {r.stderr.strip()[-500:]}")
        return r.stdout

    def update(self) -> None:
        stamp = self.dir / "updated"
        if stamp.exists() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE_S:
            return
        if not KEYRING.exists():
            raise KernelError(f"{KEYRING} missing: apt-get install debian-archive-keyring")
        self._run("apt-get", "-q", "update")
        stamp.touch()

    def image_packages(self) -> list[str]:
        return [n for n in self._run("apt-cache", "pkgnames", "linux-image-").split() if _IMAGE.match(n)]

    def download(self, package: str, into: Path) -> Path:
        self._run("apt-get", "-q", "download", package, cwd=into)
        debs = sorted(into.glob(f"{package}_*.deb"))
        if not debs:
            raise KernelError(f"apt-get download {package} produced no .deb")
        return debs[-1]


def _version_key(package: str) -> list[tuple[int, str]]:
    """Natural order: 6.12.9 < 6.12.117, 5.10.0-9 < 5.10.0-32."""
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"(\d+)", package)]


def resolve(release: str, packages: list[str]) -> str:
    """The newest linux-image package for `release`: "6.1" (a series),
    "6.1.0-50" or "6.12.117+deb13" (a Debian kernel release), or a full name."""
    if release in packages:
        return release
    exact = f"linux-image-{release}-amd64"
    if exact in packages:
        return exact
    if not re.fullmatch(r"\d+\.\d+", release):
        raise KernelError(f"no Debian kernel package {exact}")
    series_of = {p: m[1] for p in packages if (m := _IMAGE.match(p))}
    series = [p for p, s in series_of.items() if s == release]
    if not series:
        raise KernelError(f"no Debian kernel package for Linux {release} "
                          f"(the archive has {', '.join(sorted(set(series_of.values())))})")
    return max(series, key=_version_key)


def fetch(releases: list[str], log: Callable[[str], object] = print) -> list[Kernel]:
    """Resolve, download (once) and unpack (once) each release."""
    cache = cache_dir()
    apt = Apt(cache)
    apt.update()
    packages = apt.image_packages()
    kernels = []
    for release in releases:
        package = resolve(release, packages)
        root = cache / "kernels" / package
        kernel = Kernel(release, package, root)
        if not kernel.vmlinuz.exists():
            log(f"vmtest: fetching {package}")
            debs = cache / "debs"
            debs.mkdir(exist_ok=True)
            deb = apt.download(package, debs)
            tmp = root.with_name(root.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
            shutil.rmtree(root, ignore_errors=True)
            tmp.rename(root)
            deb.unlink()
        kernels.append(kernel)
    return kernels
