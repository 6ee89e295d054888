"""Odd bytes wherever a request is decoded or compared: signed-URL tokens, path and query
parameters, the Authorization header, file request fields. Each gets its exact status and
the standard error body, never a 500 (``compare_digest`` on a non-ASCII str, ``int`` of a
digit ``int`` refuses, a lone surrogate...)."""

from __future__ import annotations

import itertools
import json

import httpx
import pytest

from baponi_core._models import decimal
from tests.harness import Server, assert_error, files_call, unique

# Percent-encoded as they would arrive in a URL: non-ASCII letters, a byte that is not UTF-8,
# an encoded lone surrogate, NUL, a control character, a full-width digit.
ODD = ["%C3%A9", "%FF", "%ED%A0%80", "%00", "%1B", "%EF%BC%91", "%C2%B2", "%E2%80%AE"]
# Raw header bytes (latin-1 on the wire, so never valid UTF-8 text for a key).
ODD_HEADER_BYTES = [b"\xff", b"\xc3\xa9", b"\xed\xa0\x80", b"\xe2\x80\xae", b"\xa0k"]


@pytest.fixture(scope="module")
def token(server: Server) -> str:
    """A genuine upload token of a fresh thread; its parts are mangled below."""
    with server.client() as client:
        answer = files_call(
            client, "upload_url", source="thread", id=unique(), path="a.txt", content_length=1
        )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["url"].rsplit("/", 1)[1])


def _mangled(token: str) -> list[str]:
    kid, body, mac = token.split(".")
    return [
        *(f"{kid}.{body}.{mac[:-1]}{odd}" for odd in ODD),  # the reported one: the MAC
        *(f"{kid}.{body}.{odd}{mac}" for odd in ODD),
        *(f"{kid}.{body[:-1]}{odd}.{mac}" for odd in ODD),
        *(f"{odd}.{body}.{mac}" for odd in ODD),
        *(f"{kid}{odd}.{body}.{mac}" for odd in ODD),
        f"{kid}.{body}.",
        f"{kid}..{mac}",
        f"{kid}.{body}",
        f"{kid}.{body}.{mac}.{mac}",
        "." * 3,
        "%C3%A9" * 2000,
    ]


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_mangled_signed_tokens_are_403(server: Server, token: str, method: str) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for mangled in _mangled(token):
            url = httpx.URL(f"{server.url}/v1/files/signed/{mangled}")
            answer = client.request(method, url, content=b"x" if method == "PUT" else None)
            assert_error(answer, 403, message="signature does not match")


def _url(client: httpx.Client, path: str) -> httpx.URL:
    """``path`` on the client's server exactly as written, percent-escapes included."""
    return httpx.URL(str(client.base_url).rstrip("/") + path)


@pytest.mark.parametrize("suffix", ["", "/output", "/cancel"])
def test_odd_trace_ids_are_400(api: httpx.Client, suffix: str) -> None:
    method = "POST" if suffix == "/cancel" else "GET"
    for odd in ODD:
        url = _url(api, f"/v1/executions/trc_{odd}{suffix}")
        assert_error(api.request(method, url), 400, message="invalid trace_id format")


@pytest.mark.parametrize(
    "after", [*ODD, "-1", "1e3", "0x1", " 1", "1 ", "", "1" * 19, "%EF%BC%91%EF%BC%92"]
)
def test_odd_after_seq_is_400(api: httpx.Client, after: str) -> None:
    url = _url(api, f"/v1/executions/trc_abc/output?after_seq={after}")
    assert_error(api.get(url), 400, message="after_seq must be a non-negative integer")


ADDRESSES = itertools.count(1)  # one client address per request
AUTHENTICATED = [
    ("POST", "/v1/sandbox/execute"),
    ("GET", "/v1/executions/trc_abc"),
    ("GET", "/v1/executions/trc_abc/output"),
    ("POST", "/v1/executions/trc_abc/cancel"),
    ("POST", "/v1/files/list"),
    ("POST", "/v1/files/upload_url"),
    ("POST", "/v1/files/download_url"),
    ("DELETE", "/v1/files"),
    ("POST", "/mcp"),
]


@pytest.mark.parametrize(("method", "path"), AUTHENTICATED)
def test_odd_authorization_headers_are_401(server: Server, method: str, path: str) -> None:
    """Each from an address of its own (``X-Forwarded-For`` is trusted from loopback), so
    the failed-key block, which would answer 429, never comes into it."""
    values = [b"\xff", b"Bearer", b"\xff \xff", *(b"Bearer " + odd for odd in ODD_HEADER_BYTES)]
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for index, value in enumerate(values):
            address = f"203.0.{next(ADDRESSES)}.{index + 1}"
            headers = {"Authorization": value, "X-Forwarded-For": address}
            answer = client.request(method, path, headers=headers, content=b"{}")
            assert_error(answer, 401, message=_expected(value))


def _expected(value: bytes) -> str:
    scheme, _, secret = value.partition(b" ")
    if scheme.lower() != b"bearer" or not secret.strip():
        return "missing API key: send Authorization: Bearer <key>"
    return "invalid API key"


FILE_FIELDS = [
    {"source": "thread", "id": "t\u00e9", "path": "a"},
    {"source": "thread", "id": "t\ud800", "path": "a"},
    {"source": "thread", "id": "t\x00", "path": "a"},
    {"source": "thread", "id": "t", "path": "a\ud800"},
    {"source": "thread", "id": "t", "path": "a\x00b"},
    {"source": "thread", "id": "t", "path": "a\u202eb", "content_length": "\u00b2"},
    {"source": "thr\u00e9ad", "id": "t", "path": "a"},
    {"source": "volume", "id": "v\ud800", "path": "a"},
    {"source": "thread", "id": "t", "path": "a", "content_length": "\uff11"},
    {"source": "thread", "id": "t", "path": "a", "content_type": "text/\ud800"},
]


@pytest.mark.parametrize("action", ["list", "upload_url", "download_url", "delete"])
@pytest.mark.parametrize("fields", FILE_FIELDS)
def test_odd_file_fields_are_400(api: httpx.Client, action: str, fields: dict[str, object]) -> None:
    body = json.dumps({"content_length": 1, **fields})  # \ud800 stays a JSON escape
    path = "/v1/files" if action == "delete" else f"/v1/files/{action}"
    method = "DELETE" if action == "delete" else "POST"
    answer = api.request(method, path, content=body.encode())
    assert_error(answer, 400)


@pytest.mark.parametrize(
    ("text", "number"),
    [("0", 0), ("017", 17), ("9" * 18, int("9" * 18)), ("9" * 19, None), ("", None)]
    + [(odd, None) for odd in ("\u00b2", "\uff11", "\u0661", "-1", "+1", " 1", "1_0", "1.0")],
)
def test_decimal_reads_only_ascii_digits(text: str, number: int | None) -> None:
    assert decimal(text) == number


MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def _mcp(server: Server, body: bytes) -> httpx.Response:
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {server.key}"}
    return httpx.post(f"{server.url}/mcp", content=body, headers=headers, timeout=30)


def _call(tool: str, arguments: str) -> bytes:
    """A tools/call with ``arguments`` as raw JSON text (escapes kept as written)."""
    params = f'{{"name": "{tool}", "arguments": {arguments}}}'
    return f'{{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {params}}}'.encode()


@pytest.mark.parametrize(
    ("tool", "arguments", "message"),
    [
        ("sandbox_execute", r'{"code": "1", "thread_id": "t\u00e9"}', "thread_id must start"),
        ("sandbox_execute", r'{"code": "1", "env_vars": {"\u00e9": "x"}}', "only ASCII"),
        ("sandbox_execute", r'{"code": "1", "timeout": "\u00b2"}', "valid integer"),
        ("files_download", r'{"id": "t", "path": "a\u0000"}', "must not contain NUL"),
        ("files_download", r'{"id": "t", "path": "a", "source": "v\u00e9"}', "'thread' or"),
        ("files_download", r'{"id": "t\u202e", "path": "a"}', "id must start"),
    ],
)
def test_odd_mcp_arguments_are_tool_errors(
    server: Server, tool: str, arguments: str, message: str
) -> None:
    """What the model sent wrong comes back to it as an isError result, with the message."""
    answer = _mcp(server, _call(tool, arguments))
    assert answer.status_code == 200, answer.text
    data = [line[5:] for line in answer.text.splitlines() if line.startswith("data:")]
    result = json.loads(data[-1])["result"]
    assert result["isError"] is True
    assert message in result["content"][0]["text"], result


@pytest.mark.parametrize(
    "body",
    [
        _call("sandbox_execute", r'{"code": "\ud800"}'),  # a lone surrogate
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list\xff"}',  # not UTF-8
        b"\xff\xfe",
    ],
)
def test_undecodable_mcp_requests_are_parse_errors(server: Server, body: bytes) -> None:
    answer = _mcp(server, body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == -32700  # JSON-RPC parse error
