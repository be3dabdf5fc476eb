"""The OpenAPI document against the code that answers (pure): what it serves in each
configuration, the statuses every operation lists, and its schemas against the parsers
themselves: what the server takes fits the schema, and what the schema refuses the
server refuses too. tests/system/test_api_contract.py runs a third-party tester on top."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.filter_texts import filter_lines, filter_texts
from ttcp import server
from ttcp.api import openapi
from ttcp.rtt import filters as F

SOURCE = json.loads(openapi.source())
WITH_TOKEN = json.loads(openapi.served(token=True))
WITHOUT_TOKEN = json.loads(openapi.served(token=False))
EVERY_ROUTE = {"408", "421", "500", "503"}  # deadline, Host check, bug, connection limit


def validator(schema: dict[str, Any]) -> jsonschema.Draft4Validator:
    """`schema` with the document's components in reach of its $refs."""
    return jsonschema.Draft4Validator({**schema, "components": SOURCE["components"]})


def schema_of(ref: str) -> jsonschema.Draft4Validator:
    return validator({"$ref": f"#/components/{ref}"})


def body_schema(body: str, media: str) -> jsonschema.Draft4Validator:
    return validator(SOURCE["components"]["requestBodies"][body]["content"][media]["schema"])


def test_with_a_token_the_document_is_the_file() -> None:
    assert WITH_TOKEN == SOURCE


def test_without_a_token_nothing_speaks_of_one() -> None:
    text = json.dumps(WITHOUT_TOKEN)
    assert '"security"' not in text and "securitySchemes" not in text and "responses/Unauthorized" not in text
    assert all("401" not in op["responses"] for op in openapi.operations(WITHOUT_TOKEN))
    assert WITHOUT_TOKEN["info"]["description"].endswith(openapi.NO_TOKEN_NOTE)
    assert openapi.without_token(copy.deepcopy(SOURCE)) == WITHOUT_TOKEN


def test_every_operation_lists_what_every_route_can_answer() -> None:
    for path, item in SOURCE["paths"].items():
        for method in set(item) & set(openapi.METHODS):
            statuses = set(item[method]["responses"])
            assert EVERY_ROUTE <= statuses, (method, path)
            assert ("401" in statuses) == ((method, path) != ("get", "/healthz")), (method, path)
    refs = {r["$ref"].rsplit("/", 1)[1] for op in openapi.operations(SOURCE) for r in op["responses"].values()
            if "$ref" in r}
    assert refs <= set(SOURCE["components"]["responses"])
    assert "413" in SOURCE["paths"]["/sampling"]["put"]["responses"]


def test_the_stream_says_it_never_ends() -> None:
    ok = SOURCE["paths"]["/events"]["get"]["responses"]["200"]
    assert list(ok["content"]) == ["application/x-ndjson"] and "does not end" in ok["description"]


def test_filter_text_carries_the_parser_s_limits() -> None:
    text = SOURCE["components"]["schemas"]["FilterText"]
    assert (text["minLength"], text["maxLength"], text["format"]) == (1, F.MAX_TEXT, "ttcp-filter")
    assert SOURCE["components"]["parameters"]["filter"]["schema"] == {"$ref": "#/components/schemas/FilterText"}
    too_long = "10.0.0.1" + " " * F.MAX_TEXT
    with pytest.raises(F.FilterError):
        F.parse(too_long)
    assert not schema_of("schemas/FilterText").is_valid(too_long)
    for blank in ("", " ", "\t\n"):
        assert not schema_of("schemas/FilterText").is_valid(blank)
        with pytest.raises(F.FilterError):
            F.parse(blank)


@settings(max_examples=200, deadline=None)
@given(filter_texts(), filter_lines())
def test_every_filter_the_parser_takes_fits_the_schemas(text: str, lines: str) -> None:
    F.parse(text)
    assert schema_of("schemas/FilterText").is_valid(text)
    assert body_schema("Filters", "text/plain").is_valid(lines)
    assert body_schema("Filters", "application/json").is_valid({"filters": [text, F.parse(text).to_json()]})
    server.parse_body(lines.encode(), "text/plain")


@pytest.mark.parametrize("doc", [
    {"filters": []}, {"addresses": []}, {"filters": ["10.0.0.1"], "extra": 1}, {"addresses": ["10.0.0.1"], "x": 0},
    {"filters": ["10.0.0.1"], "addresses": ["10.0.0.2"]}, {"addresses": [""]}, {"filters": [{"address": ""}]},
    {"filters": [{"address": "10.0.0.1", "side": "up"}]}, {"filters": [{"address": "10.0.0.1", "port": 0}]},
    {"filters": [{"address": "10.0.0.1", "prefix": 8}]}, {"filters": [7]}, [], "10.0.0.1",
])
def test_json_bodies_the_schema_refuses_the_server_refuses(doc: object) -> None:
    assert not body_schema("Filters", "application/json").is_valid(doc)
    with pytest.raises(server.ApiError) as e:
        server.parse_body(json.dumps(doc).encode(), "application/json")
    assert e.value.status == 400


_WORDS = st.sampled_from(["on", "off", "true", "false", "1", "0", "yes", "no", "On", "oFF", "TRUE", "Yes", "nO",
                          "onn", "of", "2", "", "enabled", "o n"])
_SPACE = st.text(st.sampled_from(" \t\r\n\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2000\u200a\u2028\u202f\u3000\ufeff"
                                 "\u200bx"), max_size=3)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.tuples(_SPACE, _WORDS, _SPACE).map("".join), st.text(max_size=8)), st.booleans())
def test_the_switch_pattern_is_exactly_what_the_server_takes(text: str, bom: bool) -> None:
    body = ("\ufeff" if bom else "") + text
    try:
        server.parse_switch(body.encode("utf-8", "surrogatepass"), "text/plain")
        taken = True
    except server.ApiError:
        taken = False
    except UnicodeEncodeError:
        return
    assert body_schema("Switch", "text/plain").is_valid(body) == taken, repr(body)


@pytest.mark.parametrize("doc", [{"enabled": True}, {"enabled": False}, {"enabled": 1}, {"enabled": "on"}, {},
                                 {"enabled": True, "x": 1}, [True], True])
def test_the_json_switch_is_exactly_what_the_server_takes(doc: object) -> None:
    try:
        server.parse_switch(json.dumps(doc).encode(), "application/json")
        taken = True
    except server.ApiError:
        taken = False
    assert body_schema("Switch", "application/json").is_valid(doc) == taken
