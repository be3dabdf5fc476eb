"""deploy/grafana's dashboard, its Prometheus queries made runnable without Grafana (pure).

Grafana is not installed for the tests (it is not in Debian), so a test does what
Grafana would: resolve the template variables (label_values(...) through
Prometheus' label API), put their values in each panel target's expr with the
Prometheus datasource's escaping, and replace the built-in intervals with the
windows a 1 s scrape interval gives them; then it runs every expr.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class DashboardError(ValueError):
    """The dashboard breaks a rule the test enforces."""


@dataclass(frozen=True)
class Target:
    panel: str
    ref: str
    expr: str
    instant: bool


@dataclass(frozen=True)
class Variable:
    name: str
    selector: str | None  # label_values(SELECTOR, LABEL); None for label_values(LABEL)
    label: str


# Built-ins and the windows a test with a 1 s scrape interval uses for them: Grafana's
# $__rate_interval is max($__interval + scrape interval, 4 x scrape interval).
BUILTINS = {"__rate_interval": "10s", "__interval": "2s", "__range": "5m", "__range_s": "300",
            "__interval_ms": "2000", "__range_ms": "300000"}
_VAR = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*),\s*)?(\w+)\s*\)\s*$", re.DOTALL)
_REGEX_SPECIAL = re.compile(r"([\\^$*+?.()|{}\[\]/])")


def targets(dash: Mapping[str, Any]) -> list[Target]:
    """Every target of every panel (rows' nested panels included)."""
    out: list[Target] = []

    def walk(panels: Iterable[Mapping[str, Any]]) -> None:
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                if "expr" not in t:
                    raise DashboardError(f"panel {p.get('title')!r} target {t.get('refId')}: no expr")
                out.append(Target(p.get("title", ""), t.get("refId", ""), t["expr"], bool(t.get("instant"))))
    walk(dash.get("panels", []))
    return out


def variables(dash: Mapping[str, Any]) -> list[Variable]:
    """The query variables, in order (a later one may use an earlier one)."""
    out = []
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
        m = _LABEL_VALUES.match(q)
        if m is None:
            raise DashboardError(f"variable {v['name']}: only label_values(...) is supported, not {q!r}")
        out.append(Variable(v["name"], m.group(1), m.group(2)))
    return out


def regex_value(values: Sequence[str]) -> str:
    """A multi-value / All variable as the Prometheus datasource writes it into a query:
    each value regex-escaped, joined by '|', in parentheses; then escaped for a PromQL
    double-quoted string (backslashes doubled)."""
    esc = [_REGEX_SPECIAL.sub(r"\\\1", v) for v in values]
    joined = esc[0] if len(esc) == 1 else "(" + "|".join(esc) + ")"
    return joined.replace("\\", "\\\\").replace('"', '\\"')


def interpolate(expr: str, values: Mapping[str, Sequence[str]], builtins: Mapping[str, str] = BUILTINS) -> str:
    """expr with every $var / ${var} / ${var:fmt} / [[var]] replaced; an unknown one is an error."""
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3) or m.group(4)
        if name in builtins:
            return builtins[name]
        if name not in values:
            raise DashboardError(f"unknown variable ${name} in {expr!r}")
        vals = values[name]
        if not vals:
            raise DashboardError(f"variable ${name} has no value")
        return regex_value(vals)
    return _VAR.sub(sub, expr)
