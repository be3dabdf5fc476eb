"""Schemathesis hooks for ttcp's API contract test (tests/system/test_api_contract.py).

The schemathesis command loads this module (SCHEMATHESIS_HOOKS), pytest never does.
ttcp's OpenAPI document marks filter strings with custom formats (`ttcp-filter`,
`ttcp-filter-by`: one with a breakdown, `ttcp-by`: a breakdown's key, `ttcp-address`,
`ttcp-filter-lines`), since JSON Schema cannot state the whole
language; these strategies make every positive case a real filter
(tests/support/filter_texts.py), which the server must accept. With
TTCP_ST_BROKEN_FILTERS=1 they draw networks with host bits set instead: the
negative control, which the server refuses and Schemathesis must report.
"""

from __future__ import annotations

import os

import schemathesis

from tests.support.filter_texts import (
    addresses,
    by_keys,
    cgroup_paths,
    container_names,
    filter_lines,
    filter_texts,
    netns_paths,
    pod_names,
)

BROKEN = os.environ.get("TTCP_ST_BROKEN_FILTERS") == "1"

schemathesis.openapi.format("ttcp-address", addresses(BROKEN))
schemathesis.openapi.format("ttcp-filter", filter_texts(BROKEN))
schemathesis.openapi.format("ttcp-filter-by", filter_texts(BROKEN, by=True))
schemathesis.openapi.format("ttcp-by", by_keys())
schemathesis.openapi.format("ttcp-filter-lines", filter_lines(BROKEN))
schemathesis.openapi.format("ttcp-cgroup-path", cgroup_paths())
schemathesis.openapi.format("ttcp-netns-path", netns_paths())
schemathesis.openapi.format("ttcp-container-name", container_names())
schemathesis.openapi.format("ttcp-pod-name", pod_names())
