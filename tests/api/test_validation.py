"""Request validation: any body gets a clean answer, and our messages are the SDK's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from baponi._base import validate_execute_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baponi_core._errors import ValidationError
from baponi_core._models import ExecuteRequest, parse
from tests.core.strategies import any_json as json_values
from tests.harness import assert_error

EXECUTE = "/v1/sandbox/execute"
CLIENT_ERRORS = {400, 401, 403, 404, 409, 429}  # what a request may be refused with
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Valid-looking values for each field, mixed with anything at all.
field_values: dict[str, st.SearchStrategy[Any]] = {
    "code": st.sampled_from(["print(1)", "", "exit 3"]) | json_values,
    "language": st.sampled_from(["python", "bash", "node", "ruby", "Python"]) | json_values,
    # Only ever short valid timeouts, so a body that does run cannot hold a sandbox for long.
    "timeout": st.integers(min_value=-3, max_value=3)
    | st.sampled_from([3601, 2**64, 1.0, "5"])
    | json_values,
    "thread_id": st.sampled_from(["t-1", "", "../x", "a" * 129, "a\n"]) | json_values,
    "metadata": st.dictionaries(st.text(max_size=12), json_values, max_size=12) | json_values,
    "env_vars": st.dictionaries(
        st.sampled_from(["FOO", "PATH", "lower", "BAPONI_X", "A" * 129]) | st.text(max_size=8),
        json_values,
        max_size=4,
    )
    | json_values,
    "sub_paths": st.lists(
        st.sampled_from(["/data/a/b", "/etc", "/data/../x", "/data/%2e"]) | json_values, max_size=12
    )
    | json_values,
    "webhook_url": json_values,
}
field_bodies = st.fixed_dictionaries({}, optional=field_values)


def assert_clean(response: httpx.Response) -> None:
    """200 with a SandboxResult, or a 4xx with exactly the standard error body."""
    assert response.status_code < 500, response.text
    body = response.json()
    if response.status_code == 200:
        assert set(body) >= {"success", "stdout", "stderr", "exit_code", "error", "trace_id"}
        assert body["success"] is (body["exit_code"] == 0)
        return
    assert response.status_code in CLIENT_ERRORS, response.text
    assert_error(response, response.status_code)  # which also means: no traceback, no host path


@PROPERTY
@given(body=json_values)
def test_any_json_gets_a_clean_answer(api: httpx.Client, body: Any) -> None:
    response = api.post(
        EXECUTE, content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert_clean(response)
    if not isinstance(body, dict):
        assert response.status_code == 400
        assert response.json()["message"] == "request body must be a JSON object"


@PROPERTY
@given(body=field_bodies)
def test_bodies_with_real_fields_get_a_clean_answer(
    api: httpx.Client, body: dict[str, Any]
) -> None:
    response = api.post(EXECUTE, json=body)
    assert_clean(response)
    if "code" not in body:
        assert response.status_code == 400
        assert response.json()["message"] == "code is required"


def _not_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return True
    return False


@PROPERTY
@given(data=st.binary(max_size=64).filter(_not_json))
def test_malformed_json_is_400(api: httpx.Client, data: bytes) -> None:
    response = api.post(EXECUTE, content=data, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {
        "error": "validation_error",
        "message": "request body is not valid JSON",
    }


@PROPERTY
@given(trace_id=st.text(max_size=30))
def test_any_trace_id_gets_a_clean_answer(api: httpx.Client, trace_id: str) -> None:
    response = api.get(f"/v1/executions/{quote(trace_id, safe='')}")
    if response.status_code == 307:  # a trailing "/" once decoded: Starlette's slash redirect
        assert trace_id.endswith("/")
        return
    assert response.status_code in (400, 404), response.text
    message = assert_error(response, response.status_code)
    if response.status_code == 400:
        assert message == "invalid trace_id format"


@pytest.mark.parametrize(
    "raw",
    [
        r'{"code": "\ud800"}',
        r'{"code": "print(1) # \udfff"}',
        r'{"code": "print(1)", "language": "\ud800"}',
        r'{"code": "print(1)", "thread_id": "a\ud800"}',
        r'{"code": "print(1)", "metadata": {"k": "\ud800"}}',
        r'{"code": "print(1)", "metadata": {"\ud800": "v"}}',
        r'{"code": "print(1)", "env_vars": {"K": "\ud800"}}',
        r'{"code": "print(1)", "env_vars": {"\ud800": "v"}}',
        r'{"code": "print(1)", "sub_paths": ["/data/\ud800"]}',
    ],
)
def test_lone_surrogates_are_400(api: httpx.Client, raw: str) -> None:
    response = api.post(EXECUTE, content=raw.encode(), headers={"Content-Type": "application/json"})
    assert_error(response, 400, "validation_error")


def test_invalid_utf8_is_400(api: httpx.Client) -> None:
    response = api.post(EXECUTE, content=b'{"code": "\xff\xfe"}')
    assert_error(response, 400, "validation_error")


@pytest.mark.parametrize("depth", [500, 5_000, 200_000])
@pytest.mark.parametrize("where", ["top", "code", "metadata"])
def test_deeply_nested_json_is_400(api: httpx.Client, depth: int, where: str) -> None:
    nested = "[" * depth + "]" * depth
    raw = {
        "top": nested,
        "code": f'{{"code": {nested}}}',
        "metadata": f'{{"code": "print(1)", "metadata": {{"k": {nested}}}}}',
    }[where]
    response = api.post(EXECUTE, content=raw.encode(), headers={"Content-Type": "application/json"})
    assert_error(response, 400)


def test_body_over_8_mib_is_400(api: httpx.Client) -> None:
    code = "#" * (8 << 20)
    response = api.post(EXECUTE, json={"code": code})
    assert response.status_code == 400
    assert response.json() == {"error": "validation_error", "message": "request body too large"}


def test_body_over_8_mib_without_length_is_400(api: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"code": "'
        for _ in range(9):
            yield b"#" * (1 << 20)
        yield b'"}'

    response = api.post(EXECUTE, content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["message"] == "request body too large"


def test_code_over_1_mib_is_400_with_sdk_message(api: httpx.Client) -> None:
    code = "#" * ((1 << 20) + 1)
    response = api.post(EXECUTE, json={"code": code})
    assert response.status_code == 400
    with pytest.raises(ValueError) as sdk_error:
        validate_execute_params(code, "python", 60, None, None)
    assert response.json()["message"] == str(sdk_error.value)


SDK_CASES: list[tuple[str, dict[str, Any]]] = [
    ("empty code", {"code": ""}),
    ("bad language", {"language": "ruby"}),
    ("timeout 0", {"timeout": 0}),
    ("timeout 3601", {"timeout": 3601}),
    ("empty thread_id", {"thread_id": ""}),
    ("bad thread_id", {"thread_id": "-starts-with-dash"}),
    ("thread_id with slash", {"thread_id": "a/b"}),
    ("long thread_id", {"thread_id": "a" * 129}),
    ("too many metadata keys", {"metadata": {f"k{i}": "v" for i in range(11)}}),
    ("bad metadata key", {"metadata": {"bad key": "v"}}),
    ("long metadata key", {"metadata": {"k" * 41: "v"}}),
    ("non-string metadata value", {"metadata": {"k": 5}}),
    ("list metadata value", {"metadata": {"k": ["v"]}}),
    ("long metadata value", {"metadata": {"k": "v" * 257}}),
    ("lowercase env key", {"env_vars": {"lower": "v"}}),
    ("non-ascii env key", {"env_vars": {"É": "v"}}),
    ("reserved env name", {"env_vars": {"PATH": "x"}}),
    ("reserved env prefix", {"env_vars": {"BAPONI_X": "x"}}),
    ("control char in env value", {"env_vars": {"K": "a\x01b"}}),
    ("nul in env value", {"env_vars": {"K": "a\x00b"}}),
    ("long env value", {"env_vars": {"K": "v" * 4097}}),
    ("non-string env value", {"env_vars": {"K": 1}}),
    ("too many env vars", {"env_vars": {f"K{i}": "v" for i in range(51)}}),
    ("env total too big", {"env_vars": {f"K{i}": "v" * 4000 for i in range(17)}}),
    ("sub_path not under /data/", {"sub_paths": ["/etc/passwd"]}),
    ("sub_path with ..", {"sub_paths": ["/data/vol/../../etc"]}),
    ("sub_path with %2e", {"sub_paths": ["/data/vol/%2e%2e/x"]}),
    ("sub_path with backslash", {"sub_paths": ["/data/vol\\x"]}),
    ("long sub_path", {"sub_paths": ["/data/" + "a" * 510]}),
    ("too many sub_paths", {"sub_paths": [f"/data/v/{i}" for i in range(11)]}),
    ("non-string sub_path", {"sub_paths": [7]}),
]


@pytest.mark.parametrize(("name", "fields"), SDK_CASES, ids=[name for name, _ in SDK_CASES])
def test_messages_equal_the_sdks(api: httpx.Client, name: str, fields: dict[str, Any]) -> None:
    params: dict[str, Any] = {
        "code": "print(1)",
        "language": "python",
        "timeout": 60,
        "thread_id": None,
        "metadata": None,
        "sub_paths": None,
        "env_vars": None,
        **fields,
    }
    with pytest.raises(ValueError) as sdk_error:
        validate_execute_params(**params)
    response = api.post(EXECUTE, json={"code": "print(1)", **fields})
    assert response.status_code == 400
    assert response.json() == {"error": "validation_error", "message": str(sdk_error.value)}


@settings(max_examples=300, deadline=None)
@given(data=json_values | field_bodies)
@pytest.mark.slow
def test_parse_returns_a_model_or_raises_validation_error(data: Any) -> None:
    try:
        request = parse(ExecuteRequest, data)
    except ValidationError as exc:
        assert exc.status == 400
        assert isinstance(exc.message, str) and exc.message
        return
    assert isinstance(request, ExecuteRequest)
    assert isinstance(data, dict)
    assert request.code == data["code"]
    assert request.language in ("python", "bash", "node")
    assert 1 <= request.timeout <= 3600


@settings(max_examples=200, deadline=None)
@given(data=field_bodies)
@pytest.mark.slow
def test_parse_agrees_with_the_sdk_on_well_typed_bodies(data: dict[str, Any]) -> None:
    """Where the SDK can judge a body (right types), it and the server accept the same ones."""
    typed = (
        isinstance(data.get("code"), str)
        and isinstance(data.get("language", "python"), str)
        and type(data.get("timeout", 60)) is int
        and isinstance(data.get("thread_id", ""), str)
        and isinstance(data.get("metadata", {}), dict)
        and isinstance(data.get("env_vars", {}), dict)
        and isinstance(data.get("sub_paths", []), list)
    )
    if not typed or "webhook_url" in data:  # the SDK's execute() has no webhook_url
        return
    # The one intended difference: the SDK's ``re.match`` with ``$`` lets a name end in a
    # newline; the server matches names whole (see test_trailing_newline_in_names_is_refused).
    names = [data.get("thread_id") or "", *data.get("metadata", {}), *data.get("env_vars", {})]
    if any(name.endswith("\n") for name in names):
        return
    try:
        validate_execute_params(
            data["code"],
            data.get("language", "python"),
            data.get("timeout", 60),
            data.get("thread_id"),
            data.get("metadata"),
            data.get("sub_paths"),
            data.get("env_vars"),
        )
        sdk_message = None
    except (ValueError, TypeError, AttributeError) as exc:  # the SDK chokes on some shapes
        sdk_message = str(exc)
    try:
        parse(ExecuteRequest, data)
        ours = None
    except ValidationError as exc:
        ours = exc.message
    if sdk_message is None:
        assert ours is None


@pytest.mark.parametrize(
    "body",
    [
        {"code": "print(1)", "thread_id": "a\n"},
        {"code": "print(1)", "metadata": {"k\n": "v"}},
        {"code": "print(1)", "env_vars": {"KEY\n": "v"}},
    ],
)
def test_trailing_newline_in_names_is_refused(api: httpx.Client, body: dict[str, Any]) -> None:
    response = api.post("/v1/sandbox/execute", json=body)
    assert_error(response, 400, "validation_error")


def test_trailing_slash_is_a_plain_404(api: httpx.Client) -> None:
    response = api.get("/v1/executions/trc_abc/")
    assert_error(response, 404)
