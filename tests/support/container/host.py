"""What a private dockerd changes on the host, recorded before it starts and undone after.

dockerd adds iptables chains and rules (and flips the FORWARD policy to DROP
when it turns on IP forwarding), sets sysctls, and leaves files behind
(/etc/docker/key.json, /run/docker, /run/containerd, /opt/containerd). None of
it is removed when dockerd stops. `HostSnapshot` records the state before;
`restore` removes exactly what appeared since (rules are deleted one by one,
never flushed, so rules of others survive) and reports what it could not undo.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

IPTABLES = ("iptables", "ip6tables")
SYSCTLS = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding",
           "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables")
# Files and directories dockerd 20.10 and its managed containerd create outside their own roots.
CREATED_PATHS = ("/etc/docker/key.json", "/etc/docker", "/run/docker", "/run/containerd", "/opt/containerd")
_BUILTIN = {"filter": ("INPUT", "FORWARD", "OUTPUT"),
            "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
            "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
            "raw": ("PREROUTING", "OUTPUT"), "security": ("INPUT", "FORWARD", "OUTPUT")}


# ---- iptables-save text: parse, compare, undo (pure) --------------------------------------------


@dataclass
class Table:
    policies: dict[str, str] = field(default_factory=dict)  # builtin chain -> policy
    chains: list[str] = field(default_factory=list)  # user-defined chains
    rules: list[str] = field(default_factory=list)  # "-A CHAIN ..." lines, in order


def parse_save(text: str) -> dict[str, Table]:
    """iptables-save output -> table name -> Table (counters and comments dropped)."""
    tables: dict[str, Table] = {}
    current: Table | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], Table())
        elif current is None:
            raise ValueError(f"iptables-save line outside a table: {line!r}")
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            if policy == "-":
                current.chains.append(name)
            else:
                current.policies[name] = policy
        elif line.startswith("-A "):
            current.rules.append(line)
        else:
            raise ValueError(f"unexpected iptables-save line: {line!r}")
    return tables


def _normal(tables: dict[str, Table]) -> dict[str, Table]:
    """Drop tables that hold nothing (no rules, no chains, every policy ACCEPT): the same as absent."""
    return {name: t for name, t in tables.items()
            if t.rules or t.chains or any(p != "ACCEPT" for p in t.policies.values())}


def undo_script(before: str, after: str) -> str:
    """An `iptables-restore --noflush` script that removes what `after` added to `before`.

    Rules that appeared are deleted (last first), chains that appeared are
    removed, builtin policies that changed are set back. Empty if nothing changed.
    """
    old, new = parse_save(before), parse_save(after)
    out: list[str] = []
    for name, table in new.items():
        prev = old.get(name, Table())
        added = Counter(table.rules) - Counter(prev.rules)
        deletes = []
        for rule in reversed(table.rules):
            if added[rule] > 0:
                added[rule] -= 1
                deletes.append("-D" + rule[2:])
        chains = [c for c in table.chains if c not in prev.chains]
        policies = [f":{c} {prev.policies.get(c, 'ACCEPT')} [0:0]" for c, p in table.policies.items()
                    if p != prev.policies.get(c, "ACCEPT")]
        if deletes or chains or policies:
            out += [f"*{name}", *policies, *deletes, *(f"-X {c}" for c in chains), "COMMIT"]
    return "\n".join(out) + "\n" if out else ""


def differences(before: str, after: str) -> list[str]:
    """How `after` differs from `before`, ignoring counters and empty tables; [] if equal."""
    old, new = _normal(parse_save(before)), _normal(parse_save(after))
    diffs = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name, Table()), new.get(name, Table())
        for what, x, y in (("rules", a.rules, b.rules), ("chains", a.chains, b.chains)):
            if x != y:
                diffs.append(f"{name} {what}: +{sorted(set(y) - set(x))} -{sorted(set(x) - set(y))}")
        pa = {c: p for c, p in a.policies.items() if p != "ACCEPT"}
        pb = {c: p for c, p in b.policies.items() if p != "ACCEPT"}
        if pa != pb:
            diffs.append(f"{name} policies: {pa} -> {pb}")
    return diffs


# ---- the host: snapshot and restore --------------------------------------------------------------


def _save(tool: str) -> str | None:
    if shutil.which(f"{tool}-save") is None:
        return None
    done = subprocess.run([f"{tool}-save"], capture_output=True, text=True, timeout=30, check=False)
    return done.stdout if done.returncode == 0 else None


def _read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return None


@dataclass
class HostSnapshot:
    """The host state a daemon run may change; JSON-able so an aborted run can be undone later."""

    iptables: dict[str, str | None]
    sysctls: dict[str, str | None]
    paths: dict[str, bool]  # path -> existed before

    @classmethod
    def take(cls) -> HostSnapshot:
        return cls({t: _save(t) for t in IPTABLES}, {s: _read_sysctl(s) for s in SYSCTLS},
                   {p: os.path.lexists(p) for p in CREATED_PATHS})

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> HostSnapshot:
        return cls(**json.loads(text))

    def restore(self) -> list[str]:
        """Undo what changed since the snapshot; return what could not be undone."""
        problems: list[str] = []
        for tool, before in self.iptables.items():
            problems += _restore_iptables(tool, before)
        for name, value in self.sysctls.items():
            if value is not None and _read_sysctl(name) != value:
                try:
                    Path("/proc/sys", name).write_text(value)
                except OSError as e:
                    problems.append(f"sysctl {name}={value}: {e}")
        for path, existed in self.paths.items():
            if not existed:
                problems += _remove_created(Path(path))
        return problems


def _restore_iptables(tool: str, before: str | None) -> list[str]:
    after = _save(tool)
    if before is None or after is None:
        return []
    script = undo_script(before, after)
    if script:
        done = subprocess.run([f"{tool}-restore", "--noflush"], input=script, capture_output=True,
                              text=True, timeout=30, check=False)
        if done.returncode != 0:
            return [f"{tool}-restore: {done.stderr.strip()} (script: {script!r})"]
    now = _save(tool) or ""
    _drop_new_empty_tables(tool, before, now)
    return [f"{tool}: {d}" for d in differences(before, now)]


def _drop_new_empty_tables(tool: str, before: str, now: str) -> None:
    """Tables that did not exist before and hold nothing now: delete them (nf_tables backend
    only, with `nft`), so iptables-save shows what it showed before the run."""
    if shutil.which("nft") is None:
        return
    version = subprocess.run([tool, "-V"], capture_output=True, text=True, timeout=30, check=False).stdout
    if "nf_tables" not in version:
        return
    old, new = parse_save(before), parse_save(now)
    family = "ip" if tool == "iptables" else "ip6"
    for name, table in new.items():
        if name not in old and name not in _normal({name: table}):
            subprocess.run(["nft", "delete", "table", family, name], capture_output=True, timeout=30,
                           check=False)


def _remove_created(path: Path) -> list[str]:
    """Remove a file dockerd created, or a directory of ours holding only empty directories."""
    if not path.exists():
        return []
    if path.is_file():
        path.unlink()
        return []
    files = [p for p in path.rglob("*") if not p.is_dir()]
    if files:
        return [f"{path} was created during the run but holds files now ({files[0]}, ...): left alone"]
    for sub in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    try:
        path.rmdir()
    except OSError as e:
        return [f"rmdir {path}: {e}"]
    return []
