"""The OpenAPI document at /openapi.json: valid OpenAPI 3.1, one operation for every route of
the app, and true of a real server, as schemathesis fuzzes it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks
from starlette.routing import Mount, Route

from baponi_core import _limits as limits
from baponi_core._config import Settings
from baponi_http import create_app
from baponi_http._openapi import NDJSON, OPERATIONS, TRACE_ID
from baponi_http._opensandbox.routes import PREFIX as OPENSANDBOX
from baponi_mcp import McpEndpoint
from tests.harness import Server, assert_error, cli, start_server, stop_server

EXECUTE = "/v1/sandbox/execute"
EXAMPLES = 25  # per operation and mode
MAX_TIMEOUT_S = 3  # the fuzzed server's plan cap: a longer timeout is a 429, never a long run


def served(server: Server) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/openapi.json", timeout=10)  # no key
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


def operations_of(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


def test_document_is_valid_openapi_3_1(server: Server) -> None:
    document = served(server)
    assert document["openapi"].startswith("3.1.")
    OpenAPIV31SpecValidator(document).validate()


def test_document_names_every_route_of_the_app_and_no_other(server: Server, tmp_path: Path) -> None:
    """The app's own route table (as ``baponi serve`` builds it, /mcp included) against the
    served document: a route without an operation, or the reverse, fails here."""
    app = create_app(Settings.at(tmp_path), [McpEndpoint(Settings.at(tmp_path))])
    routes = set()
    for route in app.routes:
        if isinstance(route, Mount) and route.path == OPENSANDBOX:
            continue  # OpenSandbox's APIs: their specification is OpenSandbox's own
        assert isinstance(route, Route) and route.methods, route  # no route of any method
        routes |= {(method, route.path) for method in route.methods - {"HEAD"}}
    assert operations_of(served(server)) == routes


def test_every_error_answer_is_the_standard_body(server: Server) -> None:
    """Every documented error status of a route with a key refers to the one error body,
    with the code of that status; routes that take a key say 401 and 429."""
    document = served(server)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            needs_key = operation.get("security") != []
            statuses = set(operation["responses"])
            if needs_key:
                assert {"401", "429"} <= statuses, (method, path)
            if path == "/mcp":  # the SDK's JSON-RPC errors, past the key check
                continue
            for status in statuses - {"200", "202"}:
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                assert schema["allOf"] == [{"$ref": "#/components/schemas/ErrorBody"}]


def test_mcp_answers_only_post(server: Server) -> None:
    """Stateless MCP has nothing to send on a GET stream: 405 at once, not a stream held
    open for good (which the SDK would do), and no session to DELETE."""
    for method in ("GET", "DELETE", "PUT"):
        response = httpx.request(method, f"{server.url}/mcp", timeout=5)
        assert_error(response, 405)
        assert response.headers["allow"] == "POST"


def test_a_wrong_method_is_told_every_allowed_one(server: Server) -> None:
    """GET and PUT of a signed URL were two routes, and a 405 named only the first's."""
    response = httpx.delete(f"{server.url}/v1/files/signed/token", timeout=5)
    assert_error(response, 405)
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "PUT"}


# --------------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own, whose plan caps timeouts (any valid ``timeout`` may be sent)."""
    running = start_server(tmp_path_factory.mktemp("fuzzed"))
    cli(running.home, "profiles", "set", "default", "--max-timeout", str(MAX_TIMEOUT_S))
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def api_schema(fuzzed: Server) -> Any:
    return schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")


# Every operation but MCP's own protocol, fuzzed through the MCP client (tests/mcp/test_fuzz.py);
# with data the document refuses too where it constrains something (a JSON body, a trace id).
FUZZED = [
    (o.method.upper(), o.path, mode)
    for o in OPERATIONS
    for mode in GenerationMode
    if mode is GenerationMode.POSITIVE
    or "application/json" in (o.body or ())
    or TRACE_ID in o.parameters
]
CHECKS = [
    not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    checks.unsupported_method,
    checks.allow_header_conformance,
]


def bounded(case: Case) -> None:
    """What no fuzzed request may do: make the server resolve a name on the internet (a
    webhook URL, delivered; a literal loopback one is refused at submission instead, 400)
    or run for long (any timeout above the plan's cap would be a 429 and run nothing: it
    is brought down to the cap, so that generated code does run)."""
    if not isinstance(case.body, dict):
        return
    if isinstance(case.body.get("webhook_url"), str):
        case.body["webhook_url"] = "https://[::1]/hook"
    timeout = case.body.get("timeout", limits.DEFAULT_TIMEOUT)
    runs = type(timeout) is int and MAX_TIMEOUT_S < timeout <= limits.MAX_TIMEOUT
    if case.operation.path == EXECUTE and runs:  # a larger one is refused (400) and stays
        case.body["timeout"] = MAX_TIMEOUT_S


def stream_lines_are_events(document: dict[str, Any], response: Any) -> None:
    """The check schemathesis cannot make: each line of an NDJSON answer is an Event, as
    the document's x-ndjson-line-schema says, numbered from 1."""
    types = [
        v for k, values in response.headers.items() if k.lower() == "content-type" for v in values
    ]
    if not types or not types[0].startswith(NDJSON):
        return
    validator = Draft202012Validator({**document, "$ref": "#/components/schemas/Event"})
    lines = [json.loads(line) for line in response.text.splitlines()]
    for event in lines:
        validator.validate(event)
    assert [event["seq"] for event in lines] == list(range(1, len(lines) + 1)), lines


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path", "mode"), FUZZED)
def test_server_keeps_to_its_document(
    api_schema: Any, fuzzed: Server, method: str, path: str, mode: GenerationMode
) -> None:
    """No 5xx; status, content type, headers and body as documented; what the document
    refuses is refused. Executions are asked for as a stream half of the time."""
    auth = {"Authorization": f"Bearer {fuzzed.key}"}
    operation = api_schema[path][method]
    document = served(fuzzed)

    @given(case=operation.as_strategy(generation_mode=mode, headers=auth), stream=st.booleans())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def keeps_to_it(case: Case, stream: bool) -> None:
        bounded(case)
        if stream and path == EXECUTE:
            case.headers = {**(case.headers or {}), "Accept": NDJSON}
        response = case.call_and_validate(checks=CHECKS, timeout=30)
        stream_lines_are_events(document, response)

    keeps_to_it()
