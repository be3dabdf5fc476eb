"""deploy/kubernetes/ checked the way a careful reviewer would, since no cluster runs here.

Each YAML document is validated, offline, against the Kubernetes API's own
OpenAPI schema (kubernetes-validate ships the JSON schemas of every release;
strict: an unknown field fails) for the oldest release the manifests claim
(1.30, for securityContext.appArmorProfile) and the newest it knows. Then
against ttcp itself: the container's command line (the image's ENTRYPOINT
plus the args) parses with ttcp's own parser; the probes call the route that
is open without a token, on the port ttcp listens on; the mounted host paths
are the ones ttcp reads (the kernel BTF, the --pin directory) and the token
file lies in the Secret's volume; the image is the one `make build` tags;
the resources cover what BENCHMARKS.md measured; README's Prometheus scrape
config selects these pods.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.support.api import OPENAPI
from tests.support.paths import REPO
from ttcp.api.guards import OPEN_ROUTES
from ttcp.api.host_names import is_loopback
from ttcp.cli import CONTAINERD_STATE, DOCKER_SOCKET, build_parser
from ttcp.kernel.btf import VMLINUX_BTF
from ttcp.rtt import filters_file
from ttcp.workloads.containerd import TASK_DIR

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[test]'")

DEPLOY = REPO / "deploy" / "kubernetes"
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
Doc = dict[str, Any]


@cache
def documents() -> tuple[tuple[str, Doc], ...]:
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return tuple(out)


def one(kind: str) -> Doc:
    found = [doc for _, doc in documents() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod() -> Doc:
    spec: Doc = one("DaemonSet")["spec"]["template"]["spec"]
    return spec


def container() -> Doc:
    containers = pod()["containers"]
    assert [c["name"] for c in containers] == ["ttcp"]
    c: Doc = containers[0]
    return c


def entrypoint() -> list[str]:
    m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert m, "the Dockerfile has no exec-form ENTRYPOINT"
    words: list[str] = json.loads(m.group(1))
    return words


def ttcp_args() -> Any:
    """The container's command line as ttcp's own parser reads it (a usage error exits 2 here)."""
    argv = container().get("command") or entrypoint()
    assert argv[0] == "ttcp"
    return build_parser().parse_args([*argv[1:], *container().get("args", [])])


def mount_of(path: str | Path) -> tuple[Doc, Doc]:
    """(volumeMount, volume) of the mount that holds `path` in the container (the deepest)."""
    target = PurePosixPath(path)
    mounts = [m for m in container()["volumeMounts"]
              if target == PurePosixPath(m["mountPath"]) or PurePosixPath(m["mountPath"]) in target.parents]
    assert mounts, f"nothing is mounted at {path}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volume = {v["name"]: v for v in pod()["volumes"]}[mount["name"]]
    return mount, volume


def quantity(text: str) -> float:
    """A Kubernetes quantity (64Mi, 50m, 1) as a number of bytes or CPUs."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    m = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(text))
    assert m and (m.group(2) in units or not m.group(2)), text
    return float(m.group(1)) * units.get(m.group(2), 1)


# ---- the Kubernetes API's schema -----------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_every_document_validates_against_the_api_schema(version: str) -> None:
    assert {doc["kind"] for _, doc in documents()} == {"Namespace", "ServiceAccount", "Secret", "Service",
                                                        "DaemonSet", "ConfigMap"}
    for name, doc in documents():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{name}: {doc['kind']} is not valid for Kubernetes {version}: {path}: {e.message}")


def test_the_validation_can_fail() -> None:
    broken = json.loads(json.dumps(one("DaemonSet")))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["ad"] = ["BPF"]
    with pytest.raises(kubernetes_validate.ValidationError, match="'ad' was unexpected"):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest_and_one_namespace_holds_them() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted({name for name, _ in documents()})
    namespace = one("Namespace")["metadata"]["name"]
    for name, doc in documents():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, name
    assert pod()["serviceAccountName"] == one("ServiceAccount")["metadata"]["name"]


# ---- against ttcp ------------------------------------------------------------------------------------


def test_the_command_line_parses_and_serves_the_pod_network_with_a_token() -> None:
    args = ttcp_args()
    assert args.host == "0.0.0.0" and not is_loopback(args.host) and not args.no_api
    assert args.token_file and args.pin is not None and not args.pin_reset
    assert [p["containerPort"] for p in container()["ports"]] == [args.port]
    assert f"EXPOSE {args.port}" in (REPO / "Dockerfile").read_text()
    assert not pod().get("hostNetwork")


def test_probes_call_the_open_health_route_on_the_api_port() -> None:
    args = ttcp_args()
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    probes = [container()[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")]
    for probe in probes:
        get = probe["httpGet"]
        port = ports.get(get["port"], get["port"])
        assert port == args.port and get.get("scheme", "HTTP") == "HTTP"
        assert ("GET", get["path"]) in OPEN_ROUTES and get["path"] in OPENAPI["paths"]
        assert "host" not in get and not get.get("httpHeaders")  # Host: the pod's IP, which ttcp accepts


def test_mounts_are_the_paths_ttcp_reads() -> None:
    args = ttcp_args()
    assert args.btf == VMLINUX_BTF
    mount, volume = mount_of(VMLINUX_BTF)
    assert mount.get("readOnly") and volume["hostPath"]["path"] == mount["mountPath"]
    mount, volume = mount_of(args.pin)
    assert volume["hostPath"]["path"] == mount["mountPath"] == "/sys/fs/bpf"  # the host's bpffs itself
    assert not mount.get("readOnly") and PurePosixPath(args.pin) != PurePosixPath(mount["mountPath"])
    mount, volume = mount_of(args.token_file)
    secret = one("Secret")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"] and mount.get("readOnly")
    key = str(PurePosixPath(args.token_file).relative_to(mount["mountPath"]))
    assert key in {**secret.get("data", {}), **secret.get("stringData", {})}
    assert volume["secret"]["defaultMode"] & 0o077 == 0  # ttcp warns when others can read its token


def test_the_filters_file_is_the_configmap_mounted_as_a_directory() -> None:
    """A directory mount, which kubelet updates by swapping `..data` (what ttcp watches);
    a subPath mount would never see an update."""
    args = ttcp_args()
    assert args.filters_file is not None
    mount, volume = mount_of(args.filters_file)
    configmap = one("ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"] and not volume["configMap"].get("optional")
    assert mount.get("readOnly") and "subPath" not in mount and "subPathExpr" not in mount
    key = str(PurePosixPath(args.filters_file).relative_to(mount["mountPath"]))
    assert "/" not in key and key in configmap["data"]
    content = configmap["data"][key].encode()
    assert len(content) <= filters_file.MAX_BYTES
    filters_file.parse(content)  # applies as shipped
    examples = [line.removeprefix("#").split("  ")[0].strip() for line in content.decode().splitlines()
                if line.startswith("# ") and not line.startswith("# Examples")]
    assert len(filters_file.parse("\n".join(examples).encode()).filters) == len(examples) == 3  # each one parses


def test_the_runtimes_are_reachable_where_ttcp_looks() -> None:
    """Names come from the runtimes: the node's pids (hostPID, SYS_PTRACE for /proc/PID/ns/net),
    containerd's task directory where the default state directory puts it, read-only, and
    Docker's socket (whose readOnly restricts nothing: the README says so)."""
    assert pod()["hostPID"] is True
    assert "SYS_PTRACE" in container()["securityContext"]["capabilities"]["add"]
    tasks = PurePosixPath(CONTAINERD_STATE)  # the CLI's default
    assert tasks.name == TASK_DIR
    mount, volume = mount_of(tasks)
    assert PurePosixPath(mount["mountPath"]) == tasks and mount.get("readOnly") is True
    assert volume["hostPath"]["path"] == str(tasks) and volume["hostPath"]["type"] in ("Directory", "DirectoryOrCreate")
    mount, volume = mount_of(DOCKER_SOCKET)
    assert mount["mountPath"] == volume["hostPath"]["path"] == DOCKER_SOCKET
    assert volume["hostPath"]["type"] == "Socket"
    readme = (REPO / "README.md").read_text()
    assert "protects nothing" in readme and str(tasks) in readme


def test_the_image_is_the_one_make_build_tags() -> None:
    makefile = (REPO / "Makefile").read_text()
    image = re.search(r"^IMAGE\s*\?=\s*(\S+)", makefile, re.MULTILINE)
    assert image and re.search(r"^build:\n\tdocker build -t \$\(IMAGE\) \.$", makefile, re.MULTILINE)
    name, _, tag = container()["image"].rpartition(":")
    assert name == image.group(1) and tag in ("latest", "")
    assert container()["imagePullPolicy"] == "IfNotPresent"  # a local image is used as it is


def test_least_privilege() -> None:
    sc = container()["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"]}
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert one("ServiceAccount")["automountServiceAccountToken"] is False


def test_resources_cover_what_make_bench_measured() -> None:
    text = (REPO / "BENCHMARKS.md").read_text()
    rss = re.search(r"\| peak RSS, idle / under load[^|]*\|[^|]*\| ([\d.]+) / ([\d.]+) MB \|", text)
    cpu = re.search(r"\| tracer CPU per event[^|]*full connection rate \|[^|]*\| ([\d.]+) / [\d.]+ µs", text)
    rate = re.search(r"([\d,]+) connections at ([\d,]+) conn/s", text)
    assert rss and cpu and rate, "BENCHMARKS.md no longer states peak RSS, CPU per event or the connection rate"
    peak_bytes = max(float(rss.group(1)), float(rss.group(2))) * 1e6
    events_per_s = 2 * float(rate.group(2).replace(",", ""))  # two filtered sockets per loopback connection
    res = container()["resources"]
    assert quantity(res["requests"]["memory"]) >= peak_bytes
    assert quantity(res["limits"]["memory"]) >= quantity(res["requests"]["memory"]) + 8 * 2**20
    assert quantity(res["limits"]["cpu"]) >= 2 * float(cpu.group(1)) * 1e-6 * events_per_s
    assert quantity(res["requests"]["cpu"]) <= quantity(res["limits"]["cpu"])


def test_the_service_and_the_scrape_annotations_find_the_api() -> None:
    service = one("Service")
    labels = one("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= labels.items()
    assert one("DaemonSet")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert [ports[p["targetPort"]] for p in service["spec"]["ports"]] == [ttcp_args().port]
    notes = one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true" and int(notes["prometheus.io/port"]) == ttcp_args().port
    assert notes["prometheus.io/path"] in OPENAPI["paths"]


def test_readme_scrape_config_selects_these_pods_with_the_token() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL)
              if re.search(r"job_name: ttcp\s*$", b, re.MULTILINE)]
    assert len(blocks) == 1, "README should show one Prometheus scrape config for ttcp"
    (job,) = blocks[0]["scrape_configs"]
    assert job["metrics_path"] in OPENAPI["paths"] and job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"]
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod" and sd["namespaces"]["names"] == [one("Namespace")["metadata"]["name"]]
    labels = one("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    keep = {tuple(r["source_labels"]): r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    assert keep[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)] == labels["app.kubernetes.io/name"]
    assert keep[("__meta_kubernetes_pod_container_port_name",)] in {p["name"] for p in container()["ports"]}
    assert "validated" in readme and "not run on a cluster" in readme
