"""The JSON Schemas themselves: valid draft 2020-12, consistent with the code and examples."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from autodl_esd.platform.units import KNOWN_CUDA_CODES
from helpers import ROOT

SCHEMAS = sorted((ROOT / "schemas").glob("*.json"))
EXAMPLES = sorted((ROOT / "examples").glob("*.json"))
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_schemas_exist():
    names = {path.name for path in SCHEMAS}
    assert {"deployment.schema.json", "result.schema.json", "registry.schema.json"} <= names


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_schema_is_valid_draft_2020_12(path):
    schema = load(path)
    assert schema.get("$schema") == DRAFT_2020_12
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_schema_has_unique_id_and_title(path):
    schema = load(path)
    assert schema.get("$id", "").endswith(path.name)
    assert schema.get("title")


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_every_local_ref_resolves(path):
    schema = load(path)

    def refs(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(schema):
        assert ref.startswith("#/"), ref
        node = schema
        for part in ref[2:].split("/"):
            node = node[part]
        assert isinstance(node, dict)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_deployment_schema_directly(path):
    validator = jsonschema.Draft202012Validator(load(ROOT / "schemas" / "deployment.schema.json"))
    errors = list(validator.iter_errors(load(path)))
    assert errors == [], [error.message for error in errors]


def test_deployment_schema_cuda_codes_match_units():
    template = load(ROOT / "schemas" / "deployment.schema.json")["$defs"]["container_template"]["properties"]
    assert template["cuda_v_from"]["enum"] == list(KNOWN_CUDA_CODES)
    assert template["cuda_v_to"]["enum"] == list(KNOWN_CUDA_CODES)
    assert template["cuda_v"]["enum"] == [0, *KNOWN_CUDA_CODES]


def test_deployment_schema_memory_bound_matches_bytes_detection():
    from autodl_esd.platform.units import MAX_PLAUSIBLE_MEMORY_GB

    template = load(ROOT / "schemas" / "deployment.schema.json")["$defs"]["container_template"]["properties"]
    assert template["memory_size_from"]["maximum"] == MAX_PLAUSIBLE_MEMORY_GB
    assert template["memory_size_to"]["maximum"] == MAX_PLAUSIBLE_MEMORY_GB


def test_deployment_schema_closes_both_objects():
    schema = load(ROOT / "schemas" / "deployment.schema.json")
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["container_template"]["additionalProperties"] is False


def test_every_property_is_described():
    """Field descriptions feed editor tooltips (deployment_type's enum names itself)."""
    schema = load(ROOT / "schemas" / "deployment.schema.json")
    for where, properties in (("top", schema["properties"]), ("template", schema["$defs"]["container_template"]["properties"])):
        for name, spec in properties.items():
            if "$ref" in spec:
                spec = schema["$defs"][spec["$ref"].rsplit("/", 1)[-1]]
            if name != "deployment_type":
                assert spec.get("description"), f"{where}.{name}"


def test_an_example_can_point_at_the_schema():
    """`$schema` in a config is allowed (for editors) and stripped before submitting."""
    validator = jsonschema.Draft202012Validator(load(ROOT / "schemas" / "deployment.schema.json"))
    config = load(EXAMPLES[0])
    config["$schema"] = "../schemas/deployment.schema.json"
    assert list(validator.iter_errors(config)) == []


@pytest.mark.parametrize(
    "document,valid",
    [
        ({"status": "success"}, True),
        ({"status": "success", "items": [], "count": 0}, True),
        ({"status": "success", "items": []}, False),  # items always come with count
        ({"status": "success", "deployment_uuid": "833f1cd5a764fa3", "waited_seconds": 3.5}, True),
        ({"status": "success", "deployment_uuid": "not-a-uuid"}, False),
        ({"status": "error", "error_type": "not_found", "message": "x", "hint": "", "details": {}}, True),
        ({"status": "error", "error_type": "not_found", "message": "x", "hint": ""}, False),
        ({"status": "error", "error_type": "no_such_type", "message": "x", "hint": "", "details": {}}, False),
        ({"status": "error", "error_type": "not_found", "message": "x", "hint": "", "details": {}, "extra": 1}, False),
        ({"status": "ok"}, False),
    ],
)
def test_result_schema_accepts_and_rejects(document, valid, result_validator):
    assert result_validator.is_valid(document) is valid


def test_deployment_schema_replica_bound_is_the_flags_bound():
    """set_replicas.py, guard --floor and the autoscaler's --max-replicas stop where a config does."""
    from autodl_esd.platform.units import MAX_REPLICA_NUM

    assert load(ROOT / "schemas" / "deployment.schema.json")["properties"]["replica_num"]["maximum"] == MAX_REPLICA_NUM
