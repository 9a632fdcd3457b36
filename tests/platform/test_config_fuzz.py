"""Property-based fuzz of the config validator (hypothesis, bounded and seeded).

Each case takes one of the example configs and breaks it: fields replaced by hostile
values (NaN, infinities, integers far past int64, blank and newline-ended strings, lone
surrogates, deep nesting, wrong types), fields removed, unknown fields added. Properties:

1. reading and validating never raises anything but the documented input errors, and the
   answer is strict JSON;
2. a config the validator accepts is never rejected by the simulator as a malformed
   request (`RequestParameterIsWrong`): what we pass, the platform can parse.

Cases and seed are fixed (FUZZ_CASES, FUZZ_SEED) so a failure reproduces; bench/README.md's
hostile-input section states them.
"""

from __future__ import annotations

import copy
import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from autodl_esd.core import output, strict_json
from autodl_esd.platform.config import build_request, validate_config
from autodl_esd.core.errors import AutoDLError, ErrorType
from helpers import ROOT  # noqa: E402

FUZZ_CASES = 400
FUZZ_SEED = 20261201

EXAMPLES = [json.loads(path.read_text(encoding="utf-8")) for path in sorted((ROOT / "examples").glob("*.json"))]
TOP_KEYS = sorted({key for config in EXAMPLES for key in config} | {"parallelism_num", "reuse_container_scope"})
TEMPLATE_KEYS = sorted(
    {key for config in EXAMPLES for key in config["container_template"]}
    | {"dc_list", "cuda_v_from", "cuda_v_to", "region_sign", "cmd_before_shutdown"}
)


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


HOSTILE_SCALARS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, 1, -1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 10**4400, 16, 17, 10000, 10001]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, 118.0, 9.0]),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.sampled_from([
        "", " ", "\n", "\t \n", "image-db8346e037\n", " image-db8346e037", "image-db8346e037",
        "base-image-l2t43iu6uk", "image-", "demo\ud800", "\udfff", "RTX 4090", "RTX 4090\n",
        "11.8", "118", "ReplicaSet", "Job", "Container", "westDC2", "http", "tcp", "all",
    ]),
)
HOSTILE_VALUES = st.one_of(
    HOSTILE_SCALARS,
    st.lists(HOSTILE_SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=5), HOSTILE_SCALARS, max_size=2),
    st.sampled_from([_nested(40), _nested(5), [[]], {}]),
)


@st.composite
def mutated_configs(draw) -> dict:
    config = copy.deepcopy(draw(st.sampled_from(EXAMPLES)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        in_template = draw(st.booleans()) and isinstance(config.get("container_template"), dict)
        target = config["container_template"] if in_template else config
        key = draw(st.sampled_from(TEMPLATE_KEYS if in_template else TOP_KEYS) | st.text(min_size=1, max_size=6))
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete"]))
        if action == "delete":
            target.pop(key, None)
        else:
            target[key] = draw(HOSTILE_VALUES)
    return config


@pytest.fixture(scope="module")
def simulator_api():
    simulator = pytest.importorskip("simulator")
    # Not started: only the create-request parser is used, in-process.
    return simulator.Simulator(dialect="both")._api


def _spelled_huge(value):
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**4000:
        return "<huge>"
    if isinstance(value, dict):
        return {key: _spelled_huge(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_spelled_huge(item) for item in value]
    return value


def _check_one(config: dict, simulator_api) -> None:
    # Property 1, through the file reader too: the text a user might write (NaN literals
    # included), read back the way load_config reads it.
    # Surrogates go as \ud800 escapes; 10**4400 cannot even be written by json.dumps, so
    # its text form is spelled out by hand.
    try:
        data = json.dumps(config, allow_nan=True).encode("ascii")
    except ValueError:  # an int over 4,300 digits: write it as a literal
        data = json.dumps(_spelled_huge(config), allow_nan=True).replace('"<huge>"', "9" * 4400).encode("ascii")
    try:
        parsed = strict_json.loads(data, "fuzz.json")
    except AutoDLError as error:
        assert error.error_type is ErrorType.CONFIG_ERROR
        return
    for candidate in (config, parsed):
        problems = validate_config(candidate)
        for problem in problems:
            assert set(problem) == {"path", "message", "hint"} and problem["path"] and problem["message"]
        output.to_json({"errors": problems}, ensure_ascii=False).encode("utf-8", "surrogatepass")

    # Property 2: accepted means the platform can parse it.
    if not validate_config(parsed):
        body = json.loads(json.dumps(build_request(parsed), ensure_ascii=False, allow_nan=False))
        simulator = pytest.importorskip("simulator.routes")
        try:
            simulator_api._parse_create(body)
        except simulator.ApiError as error:
            assert error.code != "RequestParameterIsWrong", (error.msg, body)


@seed(FUZZ_SEED)
@settings(max_examples=FUZZ_CASES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(config=mutated_configs())
def test_validator_never_fails_and_agrees_with_the_simulator(config, simulator_api):
    _check_one(config, simulator_api)


@pytest.mark.parametrize("config", EXAMPLES, ids=[c["name"] for c in EXAMPLES])
def test_every_example_passes_both_properties(config, simulator_api):
    assert validate_config(config) == []
    _check_one(config, simulator_api)
