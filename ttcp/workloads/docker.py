"""What the Docker Engine API answers, parsed (pure: bytes in, values out).

`parse_version` and `negotiate` (the API version to put in paths), `parse_list`,
`parse_inspect` (a container as a ttcp.workloads.runtime.Container),
`parse_event` and `LineSplitter` (the /events stream, bounded per line).
Anything that is not what the API documents raises DockerGarbage: one
container's garbage costs only that container (ttcp.workloads.docker_watch).
Measured against Docker 20.10 (API 1.41); fields used predate API 1.24.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ttcp.errors import TtcpError
from ttcp.workloads.runtime import Container, Pod

# ---- errors ------------------------------------------------------------------------------------


class DockerError(TtcpError):
    """The engine cannot be asked right now (absent socket, refused, timeout, HTTP error)."""


class DockerGarbage(DockerError):
    """The engine answered something that is not what its API documents."""


# ---- pure parsers --------------------------------------------------------------------------------

_ID = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"1\.(\d{1,3})")
# Docker's own rule for names (daemon/names: RestrictedNameChars), plus its leading "/".
NAME_RULE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
# Actions that change what a container resolves to (pid, netns, cgroup, name, existence).
# Others (exec_create: ..., health_status: ..., attach, resize, top, ...) are ignored.
RELEVANT_ACTIONS = frozenset({"create", "start", "restart", "die", "stop", "kill", "oom", "pause",
                              "unpause", "rename", "destroy", "update"})
# What the watcher asks the engine to send: everything that can change the resolution.
EVENT_FILTERS = {"type": ["container"], "event": sorted({"start", "die", "destroy", "rename"})}
MAX_LINE = 256 * 1024  # one event line; Docker's are ~0.5 KiB plus the container's labels
MAX_BODY = 8 * 1024 * 1024  # list/inspect answers


@dataclass(frozen=True, order=True)
class ApiVersion:
    minor: int  # 1.<minor>

    def __str__(self) -> str:
        return f"1.{self.minor}"


# The oldest API whose fields we read (Config.Labels, State.Pid, NetworkSettings.SandboxKey,
# /events filters all predate 1.24), and the newest checked against (Docker 29 = 1.52).
OLDEST = ApiVersion(24)
NEWEST_CHECKED = ApiVersion(52)


def parse_version(text: str) -> ApiVersion:
    """`Api-Version` header or `ApiVersion` field: "1.41" -> ApiVersion(41)."""
    m = _VERSION.fullmatch(text.strip())
    if m is None:
        raise DockerGarbage(f"API version {text[:40]!r} is not 1.N")
    return ApiVersion(int(m.group(1)))


def negotiate(server: ApiVersion, server_min: ApiVersion | None = None) -> ApiVersion:
    """The version to put in paths: the server's own, capped at what we checked, never
    below its minimum (Docker 29 refuses < 1.44) nor below what our fields need."""
    chosen = min(server, NEWEST_CHECKED)
    if server_min is not None:
        chosen = max(chosen, server_min)
    if chosen.minor < OLDEST.minor:
        raise DockerError(f"engine API {server} is older than {OLDEST}")
    return chosen


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise DockerGarbage(f"{what}: not JSON ({e.__class__.__name__}: {str(e)[:80]})") from None


def _str(obj: Mapping[str, Any], key: str, what: str, *, empty: bool = True) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or (not empty and not v):
        raise DockerGarbage(f"{what}: {key} is {type(v).__name__}, not a string")
    return v


def _labels(v: Any, what: str) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise DockerGarbage(f"{what}: labels are not a string map")
    return dict(v)


def container_id(text: str, what: str) -> str:
    if not _ID.fullmatch(text):
        raise DockerGarbage(f"{what}: id {text[:80]!r} is not 64 hex digits")
    return text


def parse_list(body: bytes) -> list[str]:
    """GET /containers/json?all=true -> the ids (the list has no Pid: inspect each)."""
    data = _json(body, "containers/json")
    if not isinstance(data, list):
        raise DockerGarbage("containers/json: not a list")
    out = []
    for item in data:
        if not isinstance(item, dict):
            raise DockerGarbage("containers/json: an item is not an object")
        out.append(container_id(_str(item, "Id", "containers/json"), "containers/json"))
    return out


POD_NAME, POD_NAMESPACE = "io.kubernetes.pod.name", "io.kubernetes.pod.namespace"  # cri-dockerd's labels
CONTAINER_NAME = "io.kubernetes.container.name"
DOCKER_TYPE = "io.kubernetes.docker.type"  # "podsandbox" for a pod's sandbox (pause) container


def parse_inspect(body: bytes) -> Container:
    """GET /containers/{id}/json -> the container (pid 0 when it is not running)."""
    what = "containers/{id}/json"
    c = _json(body, what)
    if not isinstance(c, dict):
        raise DockerGarbage(f"{what}: not an object")
    state, config, host = c.get("State"), c.get("Config"), c.get("HostConfig")
    if not isinstance(state, dict) or not isinstance(config, dict) or not isinstance(host, dict):
        raise DockerGarbage(f"{what}: State/Config/HostConfig missing")
    name = _str(c, "Name", what)
    if not name.startswith("/") or not NAME_RULE.fullmatch(name[1:]):
        raise DockerGarbage(f"{what}: name {name[:80]!r} breaks Docker's naming rule")
    pid, running = state.get("Pid"), state.get("Running")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid < 2**22 or not isinstance(running, bool):
        raise DockerGarbage(f"{what}: State.Pid/State.Running malformed")
    labels = _labels(config.get("Labels"), what)
    pod = Pod(labels[POD_NAMESPACE], labels[POD_NAME]) if POD_NAME in labels and POD_NAMESPACE in labels else None
    mode = _str(host, "NetworkMode", what)
    return Container(
        runtime="docker", id=container_id(_str(c, "Id", what), what), name=name[1:],
        image=_str(config, "Image", what), pid=pid if running else 0, host_network=mode == "host",
        shares_netns_of=mode.split(":", 1)[1] if mode.startswith("container:") else None, pod=pod,
        container_name=labels.get(CONTAINER_NAME, "") if pod is not None else "",
        sandbox=pod is not None and labels.get(DOCKER_TYPE) == "podsandbox", labels=labels)


@dataclass(frozen=True)
class DockerEvent:
    action: str  # "start", "die", ...; "exec_start: cmd" is cut at ":"
    id: str
    name: str
    time_nano: int
    attributes: Mapping[str, str]  # the container's labels, and name/image/exitCode/oldName/signal


def parse_event(line: bytes) -> DockerEvent | None:
    """One line of GET /events; None for non-container events and actions we ignore."""
    e = _json(line, "events")
    if not isinstance(e, dict):
        raise DockerGarbage("events: a line is not an object")
    if e.get("Type") != "container":
        return None
    action = _str(e, "Action", "events").split(":", 1)[0]
    if action not in RELEVANT_ACTIONS:
        return None
    actor = e.get("Actor")
    if not isinstance(actor, dict):
        raise DockerGarbage("events: Actor missing")
    attrs = _labels(actor.get("Attributes"), "events")
    t = e.get("timeNano")
    if not isinstance(t, int) or isinstance(t, bool) or t < 0:
        raise DockerGarbage("events: timeNano missing")
    return DockerEvent(action, container_id(_str(actor, "ID", "events"), "events"), attrs.get("name", ""), t, attrs)


def since_param(time_nano: int) -> str:
    """`since` takes seconds with a fractional part; it is inclusive (the event at that
    instant is sent again), so the caller drops what it has already seen."""
    return f"{time_nano // 10**9}.{time_nano % 10**9:09d}"


class LineSplitter:
    """Newline-delimited JSON from a byte stream, with a bound on one line.

    Docker bounds neither: an event carries the container's labels, and a label can
    be megabytes (1 MB labels gave 1 MB event lines here). A longer line is dropped
    up to its newline and counted in `skipped`; the caller resyncs to learn what it said.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buf = bytearray()
        self._max = max_line
        self._dropping = False
        self.skipped = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        out: list[bytes] = []
        while chunk:
            nl = chunk.find(b"\n")
            if nl < 0:
                if not self._dropping:
                    self._buf += chunk
                    if len(self._buf) > self._max:
                        self._buf.clear()
                        self._dropping = True
                        self.skipped += 1
                break
            head, chunk = chunk[:nl], chunk[nl + 1:]
            if self._dropping:
                self._dropping = False
                continue
            self._buf += head
            if len(self._buf) > self._max:
                self.skipped += 1
            elif self._buf.strip():
                out.append(bytes(self._buf))
            self._buf.clear()
        return out


