"""An OCI image-layout tarball from a root filesystem tarball, for `ctr image import`.

No registry is reachable and a containerd test should not need dockerd to
`docker save` an image: the debootstrap tree that tests/support/container/images.py
caches (~/.cache/ttcp/debian-*.tar) becomes the single uncompressed layer.
Stdlib only; the 190 MiB layer is streamed, never held in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import tarfile
from pathlib import Path

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}", path.stat().st_size


def _blob(data: bytes) -> tuple[str, int, bytes]:
    return f"sha256:{hashlib.sha256(data).hexdigest()}", len(data), data


def write_layout(rootfs_tar: Path, out: Path, name: str, cmd: list[str] | None = None) -> str:
    """Write `out` (an OCI layout tar) whose one image is called `name`; returns the manifest digest."""
    layer_digest, layer_size = _digest(rootfs_tar)
    config = json.dumps({
        "architecture": ARCH, "os": "linux",
        "config": {"Cmd": cmd or ["/bin/sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }, sort_keys=True).encode()
    cfg_digest, cfg_size, _ = _blob(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest, "size": cfg_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                    "size": layer_size}],
    }, sort_keys=True).encode()
    man_digest, man_size, _ = _blob(manifest)
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": man_digest, "size": man_size,
        "platform": {"architecture": ARCH, "os": "linux"},
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
    }]}).encode()

    def add(tar: tarfile.TarFile, arcname: str, data: bytes) -> None:
        info = tarfile.TarInfo(arcname)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add(tar, "index.json", index)
        add(tar, f"blobs/sha256/{man_digest[7:]}", manifest)
        add(tar, f"blobs/sha256/{cfg_digest[7:]}", config)
        info = tarfile.TarInfo(f"blobs/sha256/{layer_digest[7:]}")
        info.size = layer_size
        with rootfs_tar.open("rb") as f:
            tar.addfile(info, f)
    tmp.replace(out)
    return man_digest
