"""deploy/prometheus: the rules pass `promtool check rules`, their unit tests pass
`promtool test rules`, and those tests notice a changed threshold. Every series
the rules read is one ttcp exports (or Prometheus' own `up`)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.support import prometheus as prom
from tests.support.paths import REPO
from ttcp.api import metrics, process_metrics

DEPLOY = REPO / "deploy" / "prometheus"
RULES = DEPLOY / "ttcp-rules.yml"
TESTS = DEPLOY / "ttcp-rules.test.yml"


@pytest.fixture(autouse=True)
def _promtool() -> None:
    if (missing := prom.installed()) is not None:
        pytest.fail(missing)  # make deps installs it


def test_check_rules() -> None:
    r = prom.promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 11 rules found" in r.stdout


def test_the_rules_unit_tests_pass() -> None:
    r = prom.promtool("test", "rules", str(TESTS))
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_the_unit_tests_notice_a_changed_threshold(tmp_path: Path) -> None:
    shutil.copy(TESTS, tmp_path / TESTS.name)
    text = RULES.read_text()
    assert "p99_rate5m > 0.2\n" in text
    (tmp_path / RULES.name).write_text(text.replace("p99_rate5m > 0.2\n", "p99_rate5m > 0.3\n"))
    r = prom.promtool("test", "rules", str(tmp_path / TESTS.name))
    assert r.returncode != 0 and "TtcpFilterRttP99High" in r.stdout + r.stderr


def exported() -> set[str]:
    """Every metric name ttcp's /metrics may carry (histograms with their suffixes)."""
    source = (REPO / "ttcp" / "api" / "metrics.py").read_text()
    names = set(re.findall(r'"((?:ttcp|process)_[a-z_]+)"', source))
    names |= {name for name, *_ in process_metrics.FAMILIES}
    for name, *_ in metrics._HISTOGRAMS:
        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_the_rules_read_only_what_ttcp_exports() -> None:
    doc = yaml.safe_load(RULES.read_text())
    recorded = {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}
    read: set[str] = set()
    for group in doc["groups"]:
        for rule in group["rules"]:
            read |= {n for n in re.findall(r"[a-z_:]+(?=[{\[ )]|$)", rule["expr"])
                     if n.startswith(("ttcp_", "process_"))}
            assert rule.get("labels", {}).get("severity") or "record" in rule
    assert len(read) == 7 and read <= exported(), (read, read - exported())
    assert recorded  # and the alerts use them: a renamed record would leave an alert on nothing
    used = {n for g in doc["groups"] for r in g["rules"] if "alert" in r for n in recorded if n in r["expr"]}
    assert used == {"filter:ttcp_connection_rtt_seconds:p99_rate5m"}
