"""The JSON contract's schemas: valid, shipped, and matching every output fintrace writes.

Every capture under captures/ is analysed and its JSON document and JSON
lines are validated; so is every golden file (``captures/**/*.golden.json``)
that other tests compare fintrace with.
"""

from __future__ import annotations

import copy
import io
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource

from fintrace.pipeline import SCHEMA_VERSION, AnalyzeOptions, analyze
from fintrace.render.jsonout import JsonLinesRenderer, JsonRenderer

from conftest import CAPTURES, ROOT, capture_files

NAMES = ("fintrace-document.schema.json", "fintrace-connection.schema.json")


def packaged(name: str) -> dict[str, Any]:
    text = resources.files("fintrace").joinpath("schema", name).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


DOCUMENT = packaged(NAMES[0])
CONNECTION = packaged(NAMES[1])
REGISTRY: Registry[Any] = Registry().with_resources(
    [(s["$id"], Resource.from_contents(s)) for s in (DOCUMENT, CONNECTION)]
)
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema, registry=REGISTRY, format_checker=FORMATS)


def errors(schema: dict[str, Any], instance: object) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in validator(schema).iter_errors(instance)]


def outputs(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The JSON document and the JSON lines fintrace writes for one capture."""
    doc, lines = io.StringIO(), io.StringIO()
    for renderer in (JsonRenderer(doc), JsonLinesRenderer(lines)):
        run = analyze(AnalyzeOptions(paths=(str(path),)))
        renderer.begin(run)
        for conn in run.connections():
            renderer.connection(conn)
        renderer.end(run)
    return json.loads(doc.getvalue()), [json.loads(x) for x in lines.getvalue().splitlines()]


@pytest.mark.parametrize("name", NAMES)
def test_schemas_are_valid_draft_2020_12(name: str) -> None:
    schema = packaged(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", NAMES)
def test_docs_copies_are_identical(name: str) -> None:
    shipped = resources.files("fintrace").joinpath("schema", name).read_bytes()
    assert (ROOT / "docs" / "schema" / name).read_bytes() == shipped


def test_schema_version_is_one_the_schema_accepts() -> None:
    assert not errors(DOCUMENT["properties"]["schema_version"], SCHEMA_VERSION)


@pytest.mark.parametrize("path", capture_files(), ids=lambda p: str(p.relative_to(CAPTURES)))
def test_every_capture_output_matches_the_schemas(path: Path) -> None:
    doc, lines = outputs(path)
    assert errors(DOCUMENT, doc) == []
    assert doc["schema_version"] == SCHEMA_VERSION
    for line in lines:
        assert errors(CONNECTION, line) == []
    assert lines == doc["connections"]


def test_golden_files_match_the_connection_schema() -> None:
    # Golden files (other tests compare fintrace with them) list the contract
    # fields they pin down; every field they give must be a value the schema
    # allows. The captures' own outputs are validated in full above. Golden
    # files appear as captures are added, so all of them are globbed here.
    partial = copy.deepcopy(CONNECTION)
    partial["required"] = ["stream", "close_type"]
    for path in sorted(CAPTURES.rglob("*.golden.json")):
        golden = json.loads(path.read_text(encoding="utf-8"))
        conns = golden["connections"] if isinstance(golden, dict) else golden
        assert conns, path
        for conn in conns:
            assert errors(partial, conn) == [], path
        if isinstance(golden, dict) and "capture" in golden:
            assert (path.parent / golden["capture"]).is_file(), path


def test_a_wrong_golden_value_is_caught() -> None:
    partial = copy.deepcopy(CONNECTION)
    partial["required"] = ["stream", "close_type"]
    assert errors(partial, {"stream": 0, "close_type": "graceful", "time_wait": "nobody"})
    assert errors(partial, {"stream": 0})


def demo_document() -> dict[str, Any]:
    doc, _ = outputs(CAPTURES / "demo.pcap")
    return doc


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("connections", 0, "close_type"), "polite"),
        (("connections", 0, "zeek_conn_state"), "SFX"),
        (("connections", 0, "community_id"), "1:not-a-hash"),
        (("connections", 0, "client", "ip"), "10.0.0.999"),
        (("connections", 0, "end_state", "client"), "LISTEN"),
        (("summary", "close_types", "graceful", "count"), -1),
        (("schema_version",), "2.0"),
    ],
)
def test_the_schema_rejects_wrong_values(where: tuple[str | int, ...], value: object) -> None:
    doc = demo_document()
    node: Any = doc
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    assert errors(DOCUMENT, doc)


@pytest.mark.parametrize("field", ["close_type", "community_id", "zeek_conn_state", "stream"])
def test_the_schema_requires_the_contract_fields(field: str) -> None:
    doc = demo_document()
    del doc["connections"][0][field]
    assert errors(DOCUMENT, doc)
    assert errors(CONNECTION, doc["connections"][0])
