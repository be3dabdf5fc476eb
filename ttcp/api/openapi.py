"""The OpenAPI document ttcp serves: ttcp/data/openapi.json, cut to the running configuration.

The file describes ttcp with an API token: a bearer security scheme, and 401 on
every route but GET /healthz. Without a token those parts are removed, so that a
client or a tester generated from the served document neither sends a header
ttcp ignores nor expects refusals that cannot happen. Pure but for reading the
file; the document is built once per server.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
NO_TOKEN_NOTE = ("This ttcp runs without a token: no route needs `Authorization` (a header sent anyway is "
                 "ignored) and none answers 401.")


def source() -> bytes:
    """ttcp/data/openapi.json: the document as it stands with a token."""
    return resources.files("ttcp").joinpath("data", "openapi.json").read_bytes()


def operations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [item[m] for item in doc.get("paths", {}).values() for m in METHODS if m in item]


def without_token(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` (modified) for a ttcp without a token: no security scheme or requirement, no 401."""
    doc.pop("security", None)
    components = doc.get("components", {})
    components.pop("securitySchemes", None)
    components.get("responses", {}).pop("Unauthorized", None)
    for op in operations(doc):
        op.pop("security", None)
        op.get("responses", {}).pop("401", None)
    info = doc.setdefault("info", {})
    info["description"] = (info.get("description", "") + "\n\n" + NO_TOKEN_NOTE).lstrip()
    return doc


def served(*, token: bool, document: bytes | None = None) -> bytes:
    """The document for a ttcp that runs with (`token`) or without an API token."""
    doc = json.loads(source() if document is None else document)
    if not token:
        doc = without_token(doc)
    return json.dumps(doc, separators=(",", ":")).encode()
