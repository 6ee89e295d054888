"""Every argument of both MCP tools, fuzzed with shell metacharacters and odd Unicode through
the official MCP client, over the real core (bubblewrap sandboxes, SQLite, local storage):
nothing reaches a host shell or a host path, and every answer is a normal result or an MCP
error of the documented shape, never an internal error.

A successful injection would create a marker file on the host (every payload names one, by
absolute path, in a directory outside the server's home); the code run in the sandbox tries
the same on purpose. A host file outside the home holds a secret no answer may carry."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from mcp import Client, MCPError
from mcp.server.mcpserver import MCPServer
from mcp.types import INVALID_PARAMS, PARSE_ERROR, CallToolResult, TextContent

from baponi_core._app import Core
from baponi_core._config import Settings
from baponi_mcp import LocalAccess, build_server
from baponi_mcp._errors import CODES
from tests.core.strategies import any_json, names, odd_text
from tests.harness import HOST_DETAILS, Server, shared_runtimes, unique

MAX_TIMEOUT_S = 3  # the caller's plan cap: a fuzzed timeout never holds a sandbox for long
EXECUTE_ARGUMENTS = [
    "code",
    "language",
    "thread_id",
    "timeout",
    "metadata",
    "env_vars",
    "sub_paths",
]
DOWNLOAD_ARGUMENTS = ["id", "path", "source"]
ANSWERED_CODES = {*CODES.values(), INVALID_PARAMS}  # refusals, and arguments of a wrong type
FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclasses.dataclass(frozen=True)
class Host:
    """What the host has outside the server's home: a directory of its own, a secret in it."""

    outside: Path
    marker: Path  # created only by a command that ran on the host
    secret: Path
    token: str

    def injections(self) -> list[str]:
        touch = f"touch {self.marker}"
        return [
            f"$({touch})",
            f"`{touch}`",
            f"; {touch}",
            f"&& {touch}",
            f"| {touch}",
            f"\n{touch}\n",
            f"'; {touch}; '",
            f'"; {touch}; "',
            f"$(cat {self.secret})",
            f"../../../../../../..{self.secret}",
            str(self.secret),
            f"{touch}\x00",
            f"\u202e{touch}",
        ]

    def untouched(self) -> None:
        assert not self.marker.exists(), "a payload ran on the host"
        assert sorted(p.name for p in self.outside.iterdir()) == [self.secret.name]
        assert self.secret.read_text() == self.token


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Host:
    outside = tmp_path_factory.mktemp("outside-the-home")
    secret = outside / "secret.txt"
    token = f"host-secret-{uuid.uuid4().hex}"
    secret.write_text(token)
    return Host(outside, outside / f"pwned-{uuid.uuid4().hex}", secret, token)


@dataclasses.dataclass(frozen=True)
class Mcp:
    """The MCP server over a real core, on an event loop of its own thread, so that
    hypothesis drives it from plain tests, one call at a time."""

    portal: BlockingPortal
    server: MCPServer[Any]

    def call(self, tool: str, arguments: dict[str, Any]) -> CallToolResult | MCPError:
        return self.portal.call(call, self.server, tool, arguments)


@pytest.fixture(scope="module")
def mcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mcp]:
    home = tmp_path_factory.mktemp("mcp-fuzz-home")
    with start_blocking_portal() as portal:
        opened = portal.wrap_async_context_manager(
            Core(Settings.at(home, shutdown_grace_s=0, runtimes_dir=shared_runtimes()))
        )
        with opened as core:
            principal = portal.call(core.admin.local_principal)
            profile = dataclasses.replace(principal.profile, max_timeout=MAX_TIMEOUT_S)
            capped = dataclasses.replace(principal, profile=profile)
            yield Mcp(portal, build_server(LocalAccess(core, capped, "http://127.0.0.1:9")))


@pytest.fixture(scope="module")
def thread(mcp: Mcp) -> str:
    """A thread holding a file, so that some downloads find something."""
    thread_id = unique("fuzz")
    code = "open('f.txt', 'w').write('in the thread')"
    made = mcp.call("sandbox_execute", {"code": code, "thread_id": thread_id, "timeout": 3})
    assert isinstance(made, CallToolResult) and made.is_error is False, made
    return thread_id


def strings(host: Host) -> st.SearchStrategy[str]:
    """Payloads, odd text, payloads inside odd text, and very long text."""
    payloads = st.sampled_from(host.injections())
    return (
        payloads
        | odd_text
        | st.builds("".join, st.lists(payloads | odd_text, min_size=2, max_size=4))
        | st.text(min_size=5000, max_size=20000).map(lambda s: s + "$(x)")
    )


def mostly(typed: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``typed`` nine times in ten (values of the right JSON types, so that most calls get
    past the schema to the core), else ``wild`` (any JSON for any argument)."""
    return st.integers(0, 9).flatmap(lambda n: wild if n == 0 else typed)


def execute_arguments(host: Host) -> st.SearchStrategy[dict[str, Any]]:
    text = strings(host)
    typed = st.fixed_dictionaries(
        {
            "code": st.builds(lambda p: f"# {p}\n", st.sampled_from(host.injections())) | text,
            # mostly one the plan allows, so that the code runs (the default, 60, is above it)
            "timeout": st.integers(min_value=1, max_value=MAX_TIMEOUT_S)
            | st.integers(min_value=-2, max_value=2 * MAX_TIMEOUT_S),
        },
        optional={
            "language": st.sampled_from(["bash", "python", "node"] * 3) | text,
            "thread_id": names | text,
            "metadata": st.dictionaries(text, text, max_size=3),
            "env_vars": st.dictionaries(
                st.sampled_from(["MODE", "A_B", "PATH", "LD_PRELOAD"]) | odd_text, text, max_size=3
            ),
            "sub_paths": st.lists(st.builds(lambda p: f"/data/v/{p}", odd_text) | text, max_size=3),
        },
    )
    return mostly(typed, st.dictionaries(st.sampled_from(EXECUTE_ARGUMENTS), any_json))


def download_arguments(host: Host, thread: str) -> st.SearchStrategy[dict[str, Any]]:
    text = strings(host)
    typed = st.fixed_dictionaries(
        {
            "id": st.just(thread) | text,
            "path": st.sampled_from(["f.txt", "../f.txt", "./f.txt"]) | text,
        },
        optional={"source": st.sampled_from(["thread", "volume"]) | text},
    )
    return mostly(typed, st.dictionaries(st.sampled_from(DOWNLOAD_ARGUMENTS), any_json))


def check_answer(result: CallToolResult | MCPError, host: Host) -> None:
    """A result (text first; the SandboxResult when code ran) or a documented refusal, and
    neither carries the host's secret, a traceback or a host path."""
    if isinstance(result, MCPError):
        assert result.error.code in ANSWERED_CODES, result.error
        said = result.error.message
    else:
        block = result.content[0]
        assert isinstance(block, TextContent) and block.text, result.content
        said = json.dumps([c.model_dump() for c in result.content])
        said += json.dumps(result.structured_content)
    assert host.token not in said
    if isinstance(result, MCPError) or result.structured_content is None:  # not the code's own
        assert not [part for part in HOST_DETAILS if part in said], said


def sendable(arguments: dict[str, Any]) -> None:
    """The SDK's client cannot send a lone surrogate (it fails to encode its own request):
    those go as raw JSON below, test_lone_surrogates_and_nul_over_http."""
    try:
        json.dumps(arguments, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        reject()


async def call(server: MCPServer[Any], tool: str, arguments: dict[str, Any]) -> Any:
    async with Client(server) as client:
        try:
            return await client.call_tool(tool, arguments)
        except MCPError as exc:
            return exc


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_execute_arguments_reach_no_host_shell(mcp: Mcp, host: Host, data: st.DataObject) -> None:
    arguments = data.draw(execute_arguments(host))
    sendable(arguments)
    check_answer(mcp.call("sandbox_execute", arguments), host)
    host.untouched()


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_download_arguments_reach_no_host_path(
    mcp: Mcp, host: Host, thread: str, data: st.DataObject
) -> None:
    arguments = data.draw(download_arguments(host, thread))
    sendable(arguments)
    check_answer(mcp.call("files_download", arguments), host)
    host.untouched()


@pytest.mark.parametrize("language", ["bash", "python", "node"])
def test_code_that_tries_the_host_stays_in_its_sandbox(mcp: Mcp, host: Host, language: str) -> None:
    """The code itself does what an injection would: it runs, in the sandbox, where the
    host's directory and secret do not exist."""
    code = {
        "bash": f"touch {host.marker}; cat {host.secret}; echo done",
        "python": f"import subprocess\nsubprocess.run('touch {host.marker}; cat {host.secret}', "
        "shell=True)\nprint('done')",
        "node": f"require('child_process').spawnSync('sh', ['-c', 'touch {host.marker}; "
        f"cat {host.secret}'], {{stdio: 'inherit'}}); console.log('done')",
    }[language]
    result = mcp.call("sandbox_execute", {"code": code, "language": language, "timeout": 3})
    assert isinstance(result, CallToolResult)
    assert result.structured_content is not None
    assert result.structured_content["stdout"].endswith("done\n"), result.structured_content
    assert "No such file or directory" in result.structured_content["stderr"]
    check_answer(result, host)
    host.untouched()


# --------------------------------------------------------------------------- raw JSON over HTTP

RAW_ARGUMENTS = [  # JSON text as any client may send it: escapes Python's json would not make
    r'{"code": "print(1)\ud800"}',
    r'{"code": "print(1)", "thread_id": "a\udfff"}',
    r'{"code": "print(1)", "thread_id": "t\u0000"}',
    r'{"code": "print(1)", "env_vars": {"MODE": "a\u0000b"}}',
    r'{"code": "print(1)", "metadata": {"k": "\u202e\ud83d"}}',
    r'{"code": "print(1)", "sub_paths": ["/data/v/\u0000/../x"]}',
    r'{"code": "\u0000"}',
]
RAW_DOWNLOADS = [
    r'{"id": "t\ud800", "path": "f.txt"}',
    r'{"id": "t", "path": "f\u0000.txt"}',
    r'{"id": "t", "path": "\udc00/../../etc/passwd"}',
    r'{"id": "t", "path": "a", "source": "thread\u0000"}',
]


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [("sandbox_execute", a) for a in RAW_ARGUMENTS]
    + [("files_download", a) for a in RAW_DOWNLOADS],
)
def test_lone_surrogates_and_nul_over_http(server: Server, tool: str, arguments: str) -> None:
    """Straight JSON-RPC to /mcp of a real server: a tool result (an error result where an
    argument is refused), or a JSON-RPC error (the SDK refuses to parse a lone surrogate, as
    JSON's RFC allows); never an internal error, never a host detail."""
    body = (
        '{"jsonrpc": "2.0", "id": 7, "method": "tools/call", '
        f'"params": {{"name": "{tool}", "arguments": {arguments}}}}}'
    )
    response = httpx.post(
        f"{server.url}/mcp",
        content=body.encode(),
        headers={
            "Authorization": f"Bearer {server.key}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        },
        timeout=30,
    )
    assert not [part for part in HOST_DETAILS if part in response.text], response.text
    if response.status_code == 400:
        assert response.json()["error"]["code"] == PARSE_ERROR, response.text
        assert re.search(r"\\u[dD][89a-fA-F]", arguments), "only a surrogate is not parsed"
        return
    assert response.status_code == 200, response.text
    data = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
    answer = json.loads(data[-1])
    assert answer["id"] == 7
    if "error" in answer:
        assert answer["error"]["code"] in ANSWERED_CODES, answer
        return
    assert answer["result"]["content"][0]["type"] == "text"
    if "\\u0000" not in arguments or tool == "files_download":  # NUL in code is the code's
        assert answer["result"]["isError"] is True, answer
