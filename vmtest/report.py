"""The kernel x attach-mode table, from the guests' JUnit files (pure).

A test belongs to an attach mode when its id carries the mode as a
parameter (`test_x[fentry]`) or names it (`test_fentry_rtt_...`); the rest
count as "other". A mode's cell is its pass count, or why it was skipped
(a kernel probe's reason), or FAIL; its attach method is what the product
chooses from the same probes (ttcp/attach.py).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field

MODES = ("fentry", "tp_btf", "tracepoint")


@dataclass(frozen=True)
class Case:
    name: str  # module::test[param]
    outcome: str  # passed, failed, skipped
    message: str = ""

    @property
    def mode(self) -> str | None:
        params = re.findall(r"\[([^\]]*)\]", self.name)
        for mode in MODES:
            if any(mode in p.split("-") for p in params) or f"_{mode}_" in f"_{self.name.split('::')[-1]}_":
                return mode
        return None


def parse_junit(data: bytes) -> list[Case]:
    root = ET.fromstring(data)
    cases = []
    for tc in root.iter("testcase"):
        name = f"{tc.get('classname', '')}::{tc.get('name', '')}"
        outcome, message = "passed", ""
        for child in tc:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", child.get("message", "") or (child.text or "")[:300]
                break
            if child.tag == "skipped":
                outcome, message = "skipped", child.get("message", "")
        cases.append(Case(name, outcome, message))
    return cases


def parse_features(text: str) -> dict[str, bool | None]:
    """`python -m ttcp.kernel features` lines -> {feature: supported}."""
    found: dict[str, bool | None] = {}
    for line in text.splitlines():
        m = re.match(r"kernel feature (\w+) (supported|unsupported|unknown)", line)
        if m:
            found[m[1]] = {"supported": True, "unsupported": False, "unknown": None}[m[2]]
    return found


def attach_method(mode: str, feats: dict[str, bool | None]) -> str:
    if mode == "tracepoint":
        return "perf_ioctl" if feats.get("perf_event_link") is False else "link_create"
    return "raw_tracepoint_open" if feats.get("tracing_link_create") is False else "link_create"


@dataclass
class KernelResult:
    kernel: str  # uname -r of the guest, or the package when it never booted
    cases: list[Case] = field(default_factory=list)
    features: dict[str, bool | None] = field(default_factory=dict)
    rc: int | None = None  # None: the guest never reported
    note: str = ""

    def of_mode(self, mode: str | None) -> list[Case]:
        return [c for c in self.cases if c.mode == mode]

    def mode_passed(self, mode: str) -> bool:
        cases = self.of_mode(mode)
        return bool(cases) and any(c.outcome == "passed" for c in cases) and not any(
            c.outcome == "failed" for c in cases)

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not any(c.outcome == "failed" for c in self.cases) and bool(self.cases)

    def cell(self, mode: str | None) -> str:
        cases = self.of_mode(mode)
        if not cases:
            return "no tests" if self.rc is not None else "-"
        failed = [c for c in cases if c.outcome == "failed"]
        passed = [c for c in cases if c.outcome == "passed"]
        skipped = [c for c in cases if c.outcome == "skipped"]
        if failed:
            return f"FAIL {len(failed)}/{len(cases)}"
        if not passed:
            reason = skipped[0].message.removeprefix("kernel feature ")
            return "skip: " + (reason[:40] + "…" if len(reason) > 40 else reason)
        text = f"pass {len(passed)}/{len(cases)}"
        if mode is not None:
            text += f" ({attach_method(mode, self.features)})"
        elif skipped:
            text += f", {len(skipped)} skipped"
        return text


def table(results: Iterable[KernelResult]) -> str:
    rows = [["kernel", *MODES, "other tests", "result"]]
    for r in results:
        verdict = "ok" if r.ok else ("FAILED" if r.rc is not None else f"NO RESULT {r.note}".strip())
        rows.append([r.kernel, *(r.cell(m) for m in MODES), r.cell(None), verdict])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


FEATURES_SHOWN = ("memcg_accounting", "tracing_link_create", "perf_event_link", "sysfs_btf_mmap",
                  "recursion_misses")


def markdown(results: Iterable[KernelResult]) -> str:
    """The README's table: per kernel, each attach mode's result and method, and the
    probed features that change what ttcp does there."""
    yes = {True: "yes", False: "no", None: "?"}
    rows = ["| kernel | fentry | tp_btf | tracepoint | other tests | " + " | ".join(FEATURES_SHOWN) + " |",
            "|---|---|---|---|---|" + "---|" * len(FEATURES_SHOWN)]
    for r in results:
        cells = [r.cell(m) for m in MODES] + [r.cell(None)]
        feats = [yes[r.features.get(f)] for f in FEATURES_SHOWN]
        rows.append(f"| {r.kernel} | " + " | ".join(cells + feats) + " |")
    return "\n".join(rows)


def problems(results: list[KernelResult]) -> list[str]:
    """Why the matrix fails: a kernel that failed or never reported, or an
    attach mode that passed on no kernel at all (fentry must run somewhere)."""
    found = [f"{r.kernel}: {'failed' if r.rc is not None else 'no result'} {r.note}".strip()
             for r in results if not r.ok]
    for mode in MODES:
        if not any(r.mode_passed(mode) for r in results):
            found.append(f"attach mode {mode} passed on no kernel of the matrix")
    failed = [f"{r.kernel}: {c.name}: {c.message.splitlines()[0] if c.message else ''}"
              for r in results for c in r.cases if c.outcome == "failed"]
    return found + failed
