"""containerd's tasks as `Container`s, from the bytes of their bundle (pure).

The runc v2 shim keeps one directory per task under
`<state>/io.containerd.runtime.v2.task/<namespace>/<id>/` (containerd 1.6, 1.7
and 2.x): `config.json`, the OCI spec containerd wrote (annotations, the
namespaces), and `init.pid`, the task's pid in decimal once runc made the
process. The CRI plugin names pods in the annotations, so a Kubernetes node's
pods need neither containerd's API nor Kubernetes'. Those annotations are
unrestricted text: pod and container names are checked against Kubernetes'
own rules before they become names. The network namespace is not taken from
the spec (its path lives in another mount namespace, or under the sandbox's
/proc): whoever resolves the container reads /proc/PID/ns/net of `pid`.
Docker's tasks (namespace `moby`) carry no names: Docker's API has them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ttcp.errors import TtcpError
from ttcp.workloads.runtime import Container, Pod

DEFAULT_STATE_DIR = "/run/containerd"  # containerd's `state` (k3s: /run/k3s/containerd)
TASK_DIR = "io.containerd.runtime.v2.task"
DEFAULT_TASK_DIR = f"{DEFAULT_STATE_DIR}/{TASK_DIR}"  # what --containerd-state names by default
SKIPPED_NAMESPACES = frozenset({"moby"})
CRI = "io.kubernetes.cri."
CONTAINER_TYPE = CRI + "container-type"  # "sandbox" | "container"
SANDBOX_ID = CRI + "sandbox-id"
SANDBOX_NAME = CRI + "sandbox-name"
SANDBOX_NAMESPACE = CRI + "sandbox-namespace"
CONTAINER_NAME = CRI + "container-name"
IMAGE_NAME = CRI + "image-name"
MAX_CONFIG = 4 << 20  # a CRI config.json is 10-40 KiB: a bound against a hostile one
MAX_INIT_PID = 32
MAX_PID = 1 << 22  # PID_MAX_LIMIT
MAX_LABEL = 4096  # the longest annotation value kept (image names, ids)
# containerd's identifiers.Validate, for namespaces and container ids alike.
IDENTIFIER = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
MAX_IDENTIFIER = 76
# Kubernetes: namespaces and container names are RFC 1123 labels, pod names RFC 1123 subdomains.
DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")
MAX_SUBDOMAIN = 253


class BundleError(TtcpError):
    """A bundle's files are not what containerd and the runc shim write."""


def valid_identifier(text: str) -> bool:
    """A containerd namespace or container id (anything else is not containerd's)."""
    return len(text) <= MAX_IDENTIFIER and IDENTIFIER.fullmatch(text) is not None


def valid_label(text: str) -> bool:
    """A Kubernetes namespace or container name (RFC 1123 label)."""
    return DNS_LABEL.fullmatch(text) is not None


def valid_subdomain(text: str) -> bool:
    """A Kubernetes pod name (RFC 1123 subdomain)."""
    return len(text) <= MAX_SUBDOMAIN and DNS_SUBDOMAIN.fullmatch(text) is not None


def parse_pid(namespace: str, ident: str, init_pid: bytes) -> int:
    """init.pid's pid (decimal; no newline from the shim, one tolerated)."""
    text = init_pid.strip()
    if not text.isdigit() or not 0 < int(text) < MAX_PID:
        raise BundleError(f"containerd {namespace}/{ident}: init.pid {init_pid[:20]!r} is not a pid")
    return int(text)


def _spec(namespace: str, ident: str, config: bytes) -> tuple[dict[str, str], bool]:
    """The annotations and whether the task has its own network namespace."""
    where = f"containerd {namespace}/{ident}"
    if len(config) > MAX_CONFIG:
        raise BundleError(f"{where}: config.json is larger than {MAX_CONFIG} bytes")
    try:
        spec: Any = json.loads(config)
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{where}: config.json is not JSON ({e.__class__.__name__})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("linux"), dict):
        raise BundleError(f"{where}: config.json has no linux section")
    annotations = spec.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()):
        raise BundleError(f"{where}: annotations are not a map of strings")
    namespaces = spec["linux"].get("namespaces") or []
    if not isinstance(namespaces, list) or not all(isinstance(n, dict) for n in namespaces):
        raise BundleError(f"{where}: linux.namespaces is not a list of objects")
    own_netns = any(n.get("type") == "network" for n in namespaces)
    return annotations, own_netns


def _pod(namespace: str, ident: str, annotations: dict[str, str]) -> tuple[Pod | None, str, bool]:
    """The pod, the pod's container name and whether this is its sandbox, checked."""
    where = f"containerd {namespace}/{ident}"
    pod_ns, pod_name = annotations.get(SANDBOX_NAMESPACE), annotations.get(SANDBOX_NAME)
    if pod_ns is None and pod_name is None:
        return None, "", False
    if pod_ns is None or not valid_label(pod_ns):
        raise BundleError(f"{where}: pod namespace {pod_ns!r:.80} is not a Kubernetes namespace")
    if pod_name is None or not valid_subdomain(pod_name):
        raise BundleError(f"{where}: pod name {pod_name!r:.80} is not a Kubernetes pod name")
    kind = annotations.get(CONTAINER_TYPE, "container")
    if kind not in ("sandbox", "container"):
        raise BundleError(f"{where}: container type {kind!r:.40} is neither sandbox nor container")
    name = annotations.get(CONTAINER_NAME, "")
    if kind == "container" and not valid_label(name):
        raise BundleError(f"{where}: container name {name!r:.80} is not a Kubernetes container name")
    sandbox_id = annotations.get(SANDBOX_ID)
    if sandbox_id is not None and not valid_identifier(sandbox_id):
        raise BundleError(f"{where}: sandbox id {sandbox_id!r:.80} is not a containerd id")
    return Pod(pod_ns, pod_name), name if kind == "container" else "", kind == "sandbox"


def parse_bundle(namespace: str, ident: str, config: bytes, init_pid: bytes | None) -> Container:
    """The task `namespace/ident` from its config.json and init.pid (None: not started yet).

    Raises BundleError for anything containerd would not have written (the
    caller skips that task: its events go out with ids only).
    """
    if not valid_identifier(namespace) or not valid_identifier(ident):
        raise BundleError(f"containerd {namespace[:80]!r}/{ident[:80]!r}: not containerd identifiers")
    annotations, own_netns = _spec(namespace, ident, config)
    pod, container_name, sandbox = _pod(namespace, ident, annotations)
    pid = 0 if init_pid is None else parse_pid(namespace, ident, init_pid)
    image = annotations.get(IMAGE_NAME, "")
    kept = {k: v for k, v in annotations.items() if k.startswith(CRI) and len(v) <= MAX_LABEL}
    return Container(
        runtime="containerd", id=ident, name=container_name or ident, namespace=namespace,
        image=image if len(image) <= MAX_LABEL else "", pid=pid, host_network=not own_netns,
        pod=pod, container_name=container_name, sandbox=sandbox, labels=kept,
    )
