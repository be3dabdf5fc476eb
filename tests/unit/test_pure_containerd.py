"""containerd bundles as Containers, on bytes: real config.json files from containerd 1.6
(tests/unit/fixtures/, written by `ctr run` with the CRI's annotations), built specs
for each rule, and garbage a hostile or broken runtime could leave."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ttcp.workloads.containerd import (
    MAX_CONFIG,
    BundleError,
    parse_bundle,
    valid_identifier,
    valid_label,
    valid_subdomain,
)
from ttcp.workloads.runtime import Container, Pod

FIXTURES = Path(__file__).with_name("fixtures")
POD = {"io.kubernetes.cri.sandbox-namespace": "shop", "io.kubernetes.cri.sandbox-name": "web-0"}


def spec(annotations: dict[str, str] | None = None, *, netns: str | None = "/run/netns/x") -> bytes:
    namespaces: list[dict[str, str]] = [{"type": "pid"}, {"type": "mount"}]
    if netns is not None:
        namespaces.append({"type": "network", "path": netns} if netns else {"type": "network"})
    return json.dumps({"ociVersion": "1.0.2", "annotations": annotations or {},
                       "linux": {"namespaces": namespaces, "cgroupsPath": "/kubepods/x"}}).encode()


def test_a_pods_container_from_a_real_bundle() -> None:
    c = parse_bundle("k8s.io", "app0000web0", (FIXTURES / "containerd-1.6-config-app.json").read_bytes(), b"7282")
    assert c == Container(runtime="containerd", id="app0000web0", name="sidecar", namespace="k8s.io", pid=7282,
                          host_network=False, pod=Pod("shop", "web-0"), container_name="sidecar")
    assert c.labels["io.kubernetes.cri.sandbox-id"] == "sb0000web0" and str(c.pod) == "shop/web-0"


def test_no_network_entry_is_the_hosts_network() -> None:
    c = parse_bundle("k8s.io", "hn0", (FIXTURES / "containerd-1.6-config-hostnet.json").read_bytes(), None)
    assert c.host_network and c.pid == 0 and not c.running
    assert c.pod == Pod("shop", "hn-0") and c.name == "agent"


def test_a_network_entry_without_a_path_is_a_new_namespace() -> None:
    c = parse_bundle("default", "plain", spec(netns=""), b"41\n")
    assert not c.host_network and c.pid == 41 and c.pod is None and c.name == "plain"


def test_the_sandbox_is_the_pods_and_named_by_its_id() -> None:
    c = parse_bundle("k8s.io", "sb1", spec({**POD, "io.kubernetes.cri.container-type": "sandbox",
                                            "io.kubernetes.cri.sandbox-id": "sb1"}), b"9")
    assert c.sandbox and c.pod == Pod("shop", "web-0") and c.name == "sb1" and c.container_name == ""


def test_only_the_cri_annotations_are_kept_and_the_image_name_is_read() -> None:
    c = parse_bundle("k8s.io", "a", spec({**POD, "io.kubernetes.cri.container-name": "app",
                                          "io.kubernetes.cri.image-name": "docker.io/x/y:1",
                                          "other": "z", "io.kubernetes.cri.big": "v" * 5000}), b"9")
    assert c.image == "docker.io/x/y:1" and "other" not in c.labels and "io.kubernetes.cri.big" not in c.labels


@pytest.mark.parametrize(("config", "pid"), [
    (b"{", b"1"), (b"[]", b"1"), (b'{"linux": 1}', b"1"), (b"\xff\xfe", b"1"),
    (json.dumps({"linux": {}, "annotations": {"a": 1}}).encode(), b"1"),
    (json.dumps({"linux": {}, "annotations": ["a"]}).encode(), b"1"),
    (json.dumps({"linux": {"namespaces": "net"}}).encode(), b"1"),
    (json.dumps({"linux": {"namespaces": ["network"]}}).encode(), b"1"),
    (spec(), b"-1"), (spec(), b"12x"), (spec(), b"99999999"), (spec(), b""), (spec(), b"0"),
    (b" " * (MAX_CONFIG + 1), b"1"),
])
def test_garbage_is_refused(config: bytes, pid: bytes) -> None:
    with pytest.raises(BundleError):
        parse_bundle("k8s.io", "x", config, pid)


@pytest.mark.parametrize("annotations", [
    {"io.kubernetes.cri.sandbox-name": "web-0"},  # half a pod
    {"io.kubernetes.cri.sandbox-namespace": "shop"},
    {**POD, "io.kubernetes.cri.sandbox-namespace": "Shop"},  # upper case: not Kubernetes'
    {**POD, "io.kubernetes.cri.sandbox-name": "web\n0\t\x1b[31mred"},
    {**POD, "io.kubernetes.cri.sandbox-namespace": "sh\U0001f600p"},
    {**POD, "io.kubernetes.cri.sandbox-name": "w" * 254},
    {**POD, "io.kubernetes.cri.container-name": "a/b"},
    {**POD, "io.kubernetes.cri.container-name": "x" * 64},
    {**POD},  # a container (the default type) needs its name
    {**POD, "io.kubernetes.cri.container-type": "pause", "io.kubernetes.cri.container-name": "app"},
    {**POD, "io.kubernetes.cri.container-name": "app", "io.kubernetes.cri.sandbox-id": "../sb"},
])
def test_odd_pod_names_are_refused(annotations: dict[str, str]) -> None:
    with pytest.raises(BundleError):
        parse_bundle("k8s.io", "x", spec(annotations), b"1")


def test_ids_and_namespaces_are_containerd_identifiers() -> None:
    for ok in ("a", "web.1", "web_1-x", "WEB", "x" * 76, "k8s.io"):
        assert valid_identifier(ok), ok
    for bad in ("", "-web", "web..1", "web 1", "w\u00e9b", "x" * 77, "../x", ".x", "x."):
        assert not valid_identifier(bad), bad
    with pytest.raises(BundleError):
        parse_bundle("k8s.io", ".hidden", spec(), None)
    with pytest.raises(BundleError):
        parse_bundle("a b", "x", spec(), None)


def test_kubernetes_names() -> None:
    assert valid_label("shop") and valid_label("a") and valid_label("x" * 63) and not valid_label("x" * 64)
    assert not valid_label("-a") and not valid_label("a-") and not valid_label("A") and not valid_label("a.b")
    assert valid_subdomain("web-0") and valid_subdomain("a.b-c.d") and valid_subdomain("x" * 253)
    assert not valid_subdomain("x" * 254) and not valid_subdomain("a..b") and not valid_subdomain(".a")
