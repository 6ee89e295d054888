"""Code contexts: the official ``opensandbox-code-interpreter`` SDK 1.1.1, unmodified,
against a real ``baponi serve``, each context a real Jupyter kernel inside the sandbox,
and raw HTTP for what the SDK does not read (the MIME map of a result, the framing)
and for a bridge that user code kills or replaces."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from code_interpreter import CodeInterpreterSync
from opensandbox import SandboxSync
from opensandbox.exceptions import SandboxException

from tests.harness import Server, start_server, stop_server, unique, wait_until
from tests.opensandbox.clients import RUNTIME, lifecycle
from tests.opensandbox.test_sdk import config

pytestmark = pytest.mark.slow
QUICK_S = 15  # what a dead bridge or an interrupt may take to show, on a loaded machine


@pytest.fixture(scope="module")
def ci_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("ci") / "home")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def interpreter(ci_server: Server) -> Iterator[CodeInterpreterSync]:
    box = SandboxSync.create(RUNTIME, connection_config=config(ci_server), metadata={"t": unique()})
    try:
        # The strict health check (a connection to 127.0.0.1:44771 inside) must pass.
        yield CodeInterpreterSync.create(box)
    finally:
        box.kill()


@pytest.fixture(scope="module")
def execd(ci_server: Server, interpreter: CodeInterpreterSync) -> Iterator[httpx.Client]:
    with lifecycle(ci_server) as api:
        endpoint = api.get(f"/sandboxes/{interpreter.id}/endpoints/44772").json()
    with httpx.Client(
        base_url=f"http://{endpoint['endpoint']}", headers=endpoint["headers"], timeout=60
    ) as client:
        yield client


@pytest.fixture(autouse=True)
def no_contexts_left(execd: httpx.Client) -> Iterator[None]:
    """Each test's contexts go at its end: a sandbox holds at most 8."""
    yield
    assert execd.delete("/code/contexts", params={"language": "python"}).status_code == 200


def new_context(execd: httpx.Client) -> str:
    answer = execd.post("/code/context", json={"language": "python"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["language"] == "python"
    context_id: str = answer.json()["id"]
    return context_id


def run(
    execd: httpx.Client,
    code: str,
    context_id: str | None = None,
    events: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """POST /code, each event of its stream (into ``events`` as they come); every one
    alone on its line."""
    context: dict[str, str] = {"language": "python"}
    if context_id:
        context["id"] = context_id
    events = [] if events is None else events
    with execd.stream("POST", "/code", json={"code": code, "context": context}) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.strip():
                events.append(json.loads(line))
    return events


def test_variables_stay_between_runs_with_an_execution_count(
    interpreter: CodeInterpreterSync,
) -> None:
    context = interpreter.codes.create_context("python")
    assert context.id
    first = interpreter.codes.run("x = 41\nprint('set')", context=context)
    assert first.error is None
    assert "".join(m.text for m in first.logs.stdout) == "set\n"
    second = interpreter.codes.run("x + 1", context=context)
    assert [r.text for r in second.result] == ["42"]
    assert second.execution_count == 2
    history = interpreter.codes.run("(In[1], Out[2], _)", context=context)
    assert [r.text for r in history.result] == ["(\"x = 41\\nprint('set')\", 42, 42)"]
    assert second.id == context.id
    assert interpreter.codes.get_context(context.id).id == context.id
    assert context.id in [c.id for c in interpreter.codes.list_contexts("python")]


def test_the_default_context_is_made_at_its_first_use(interpreter: CodeInterpreterSync) -> None:
    interpreter.codes.run("kept = 'default'", language="python")
    again = interpreter.codes.run("kept", language="python")
    assert [r.text for r in again.result] == ["'default'"]
    assert again.id in [c.id for c in interpreter.codes.list_contexts("python")]


def test_an_exception_comes_back_with_its_name_value_and_traceback(
    interpreter: CodeInterpreterSync,
) -> None:
    done = interpreter.codes.run("def f():\n    return 1 / 0\nf()", language="python")
    assert done.error is not None
    assert done.error.name == "ZeroDivisionError"
    assert done.error.value == "division by zero"
    trace = "\n".join(done.error.traceback)
    assert "return 1 / 0" in trace and "\x1b[" not in trace  # plain text, no colours


def test_a_dataframe_and_a_figure_come_with_their_mime_types(execd: httpx.Client) -> None:
    context_id = new_context(execd)
    events = run(
        execd,
        "import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})",
        context_id,
    )
    [result] = [e for e in events if e["type"] == "result"]
    assert "<table" in result["results"]["text/html"]
    assert "a  b" in result["results"]["text"].replace("   ", "  ")
    events = run(
        execd,
        "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()",
        context_id,
    )
    results = [e["results"] for e in events if e["type"] == "result"]
    figures = [r for r in results if "image/png" in r]
    assert len(figures) == 1
    assert base64.b64decode(figures[0]["image/png"]).startswith(b"\x89PNG\r\n\x1a\n")


def test_the_stream_is_one_json_a_line_each_with_a_timestamp_in_order(
    execd: httpx.Client,
) -> None:
    context_id = new_context(execd)
    with execd.stream(
        "POST", "/code", json={"code": "print('a')\n7 * 6", "context": {"id": context_id}}
    ) as answer:
        raw = answer.read().decode()
    frames = [f for f in raw.split("\n\n") if f]
    assert raw.endswith("\n\n") and all("\n" not in f for f in frames)
    events = [json.loads(f) for f in frames]
    now = time.time() * 1000
    assert all(now - 60_000 < e["timestamp"] <= now + 1000 for e in events)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "init" and events[0]["text"] == context_id
    assert kinds[-1] == "execution_complete" and events[-1]["execution_time"] >= 0
    assert "status" in kinds
    assert kinds.index("execution_count") < kinds.index("result")
    assert [e["text"] for e in events if e["type"] == "stdout"] == ["a\n"]
    assert [e["results"]["text"] for e in events if e["type"] == "result"] == ["42"]
    assert [e["execution_count"] for e in events if e["type"] == "execution_count"] == [1]


def test_an_interrupt_stops_a_loop_and_the_context_stays(execd: httpx.Client) -> None:
    context_id = new_context(execd)
    run(execd, "before = 1", context_id)
    events: list[dict[str, Any]] = []
    started = threading.Event()

    def loop() -> None:
        body = {"code": "while True:\n    pass", "context": {"id": context_id}}
        with execd.stream("POST", "/code", json=body) as answer:
            for line in answer.iter_lines():
                if line.strip():
                    events.append(json.loads(line))
                    started.set()

    runner = threading.Thread(target=loop)
    runner.start()
    assert started.wait(QUICK_S)
    wait_until(lambda: any(e["type"] == "status" for e in events), within=QUICK_S)
    busy = execd.post("/code", json={"code": "1", "context": {"id": context_id}})
    assert busy.status_code == 500
    assert busy.json() == {"code": "RUNTIME_ERROR", "message": "session is busy"}
    began = time.monotonic()
    assert execd.delete("/code", params={"id": context_id}).status_code == 200
    runner.join(QUICK_S)
    assert not runner.is_alive() and time.monotonic() - began < QUICK_S
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["ename"] == "KeyboardInterrupt"
    after = run(execd, "before + 1", context_id)
    assert [e["results"]["text"] for e in after if e["type"] == "result"] == ["2"]


def test_a_paused_sandbox_refuses_code_and_keeps_its_variables(
    ci_server: Server, execd: httpx.Client, interpreter: CodeInterpreterSync
) -> None:
    context_id = new_context(execd)
    run(execd, "kept = [1, 2, 3]", context_id)
    with lifecycle(ci_server) as api:
        assert api.post(f"/sandboxes/{interpreter.id}/pause").status_code == 202
        try:
            refused = execd.post("/code", json={"code": "kept", "context": {"id": context_id}})
            assert refused.status_code == 409 and "paused" in refused.json()["message"]
            stopped = execd.delete("/code", params={"id": context_id})
            assert stopped.status_code == 409
        finally:
            assert api.post(f"/sandboxes/{interpreter.id}/resume").status_code == 202
    events = run(execd, "sum(kept)", context_id)
    assert [e["results"]["text"] for e in events if e["type"] == "result"] == ["6"]


def test_a_run_that_ignores_the_interrupt_ends_its_context(execd: httpx.Client) -> None:
    context_id = new_context(execd)
    stubborn = (
        "import time\n"
        "while True:\n"
        "    try:\n"
        "        time.sleep(0.1)\n"
        "    except KeyboardInterrupt:\n"
        "        pass\n"
    )
    events: list[dict[str, Any]] = []

    runner = threading.Thread(target=run, args=(execd, stubborn, context_id, events))
    runner.start()
    wait_until(lambda: any(e["type"] == "status" for e in events), within=QUICK_S)
    began = time.monotonic()
    assert execd.delete("/code", params={"id": context_id}).status_code == 200
    runner.join(QUICK_S + 10)
    assert not runner.is_alive() and time.monotonic() - began < QUICK_S + 10
    assert events[-1]["error"]["ename"] == "ContextEnded"
    assert "did not stop at an interrupt" in events[-1]["error"]["evalue"]
    assert execd.get(f"/code/contexts/{context_id}").status_code == 404


def test_unknown_contexts_and_missing_queries(execd: httpx.Client) -> None:
    missing = execd.get("/code/contexts/nosuchcontext")
    assert missing.status_code == 404 and missing.json()["code"] == "CONTEXT_NOT_FOUND"
    assert execd.delete("/code/contexts/nosuchcontext").json()["code"] == "CONTEXT_NOT_FOUND"
    unknown = execd.post("/code", json={"code": "1", "context": {"id": "nosuchcontext"}})
    assert unknown.status_code == 500 and unknown.json()["code"] == "RUNTIME_ERROR"
    assert execd.delete("/code").json()["code"] == "MISSING_QUERY"
    assert execd.delete("/code/contexts").json()["code"] == "MISSING_QUERY"
    no_run = execd.delete("/code", params={"id": "nosuchcontext"})
    assert no_run.status_code == 500 and no_run.json()["code"] == "RUNTIME_ERROR"
    assert execd.get("/code/contexts", params={"language": "go"}).json() == []
    listed = execd.get("/code/contexts", params={"language": "cobol"})
    assert listed.status_code == 400 and listed.json()["code"] == "INVALID_REQUEST_BODY"
    go = execd.post("/code/context", json={"language": "go"})
    assert go.status_code == 409 and go.json()["code"] == "NOT_SUPPORTED"
    cobol = execd.post("/code/context", json={"language": "cobol"})
    assert cobol.status_code == 400 and cobol.json()["code"] == "INVALID_REQUEST_BODY"
    assert execd.post("/code", json={"context": {}}).json()["code"] == "INVALID_REQUEST_BODY"


def test_a_context_runs_in_its_working_directory(execd: httpx.Client) -> None:
    answer = execd.post("/code/context", json={"language": "python", "cwd": "/tmp"})
    assert answer.status_code == 200, answer.text
    events = run(execd, "import os\nos.getcwd()", answer.json()["id"])
    assert [e["results"]["text"] for e in events if e["type"] == "result"] == ["'/tmp'"]
    missing = execd.post("/code/context", json={"language": "python", "cwd": "/no/such/dir"})
    assert missing.status_code == 400 and "/no/such/dir" in missing.json()["message"]


def test_a_sandbox_holds_at_most_eight_contexts(execd: httpx.Client) -> None:
    made = [new_context(execd) for _ in range(8)]
    refused = execd.post("/code/context", json={"language": "python"})
    assert refused.status_code == 500
    assert refused.json() == {
        "code": "RUNTIME_ERROR",
        "message": "this sandbox has 8 code contexts; delete one",
    }
    assert execd.delete(f"/code/contexts/{made[0]}").status_code == 200
    new_context(execd)  # room again


def test_deleted_contexts_are_gone(execd: httpx.Client) -> None:
    one, two = new_context(execd), new_context(execd)
    assert execd.delete(f"/code/contexts/{one}").status_code == 200
    gone = execd.get(f"/code/contexts/{one}")
    assert gone.status_code == 404 and "deleted" in gone.json()["message"]
    assert two in [c["id"] for c in execd.get("/code/contexts").json()]
    assert execd.delete("/code/contexts", params={"language": "python"}).status_code == 200
    assert execd.get("/code/contexts", params={"language": "python"}).json() == []


def test_a_bridge_killed_from_user_code_is_a_clear_error_at_once(
    execd: httpx.Client, interpreter: CodeInterpreterSync
) -> None:
    context_id = new_context(execd)
    [pid] = [
        e["results"]["text"]
        for e in run(execd, "import os\nos.getpid()", context_id)
        if "results" in e
    ]
    began = time.monotonic()
    events = run(execd, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", context_id)
    assert time.monotonic() - began < QUICK_S
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["ename"] == "ContextEnded"
    assert context_id in events[-1]["error"]["evalue"]
    gone = execd.get(f"/code/contexts/{context_id}")
    assert gone.status_code == 404 and "ended" in gone.json()["message"]
    wait_until(  # its kernel went with it
        lambda: interpreter.commands.run(f"test -e /proc/{pid}").exit_code == 1, within=QUICK_S
    )
    # A new context works; so does the default one, made again after its end.
    fresh = new_context(execd)
    assert [e["results"]["text"] for e in run(execd, "3", fresh) if e["type"] == "result"] == ["3"]
    run(execd, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    again = run(execd, "'back'")
    assert [e["results"]["text"] for e in again if e["type"] == "result"] == ["'back'"]


def test_a_bridge_that_breaks_its_protocol_ends_its_context(execd: httpx.Client) -> None:
    context_id = new_context(execd)
    # User code has the kernel publish a message no kernel sends; the bridge passes it on.
    forged = (
        "k = get_ipython().kernel\n"
        "k.session.send(k.iopub_socket, 'stream', {'name': 'evil', 'text': 'x'},\n"
        "               parent=k.get_parent('shell'))\n"
        "import time; time.sleep(5)\n"
    )
    events = run(execd, forged, context_id)
    assert events[-1]["type"] == "error"
    assert "protocol" in events[-1]["error"]["evalue"]
    assert execd.get(f"/code/contexts/{context_id}").status_code == 404


def test_output_past_the_bounds_is_dropped_and_the_context_stays(execd: httpx.Client) -> None:
    context_id = new_context(execd)
    events = run(execd, "print('x' * (70 << 20), end='')", context_id)
    stdout = sum(len(e["text"]) for e in events if e["type"] == "stdout")
    assert 60 << 20 < stdout <= 64 << 20
    assert any("dropped" in e["text"] for e in events if e["type"] == "stderr")
    assert events[-1]["type"] == "execution_complete"
    big = "from IPython.display import display\ndisplay({'text/plain': 'y' * (40 << 20)}, raw=True)"
    events = run(execd, big, context_id)
    assert not [e for e in events if e["type"] == "result"]
    assert any("dropped" in e["text"] for e in events if e["type"] == "stderr")
    huge = run(execd, "raise type('E' * 5000, (Exception,), {})('v' * (10 << 20))", context_id)
    assert huge[-1]["type"] == "error"
    assert huge[-1]["error"]["ename"] == "E" * 1000  # cut, not the end of the context
    assert huge[-1]["error"]["evalue"] == "v" * (1 << 16)
    after = run(execd, "'still here'", context_id)
    assert [e["results"]["text"] for e in after if e["type"] == "result"] == ["'still here'"]


def test_a_long_run_is_pinged_and_one_left_by_its_client_goes_on(execd: httpx.Client) -> None:
    context_id = new_context(execd)
    events = run(execd, "import time\ntime.sleep(3.5)", context_id)
    assert "ping" in [e["type"] for e in events]
    assert events[-1]["type"] == "execution_complete"
    body = {"code": "time.sleep(1)\nleft = 'done'", "context": {"id": context_id}}
    with execd.stream("POST", "/code", json=body) as answer:
        assert json.loads(next(answer.iter_lines()))["type"] == "init"

    # The client went away; the run went on to its end, and the context is free again.
    def settled() -> list[dict[str, Any]] | None:
        answer = execd.post("/code", json={"code": "left", "context": {"id": context_id}})
        frames = [json.loads(f) for f in answer.text.split("\n\n") if f.strip()]
        return None if answer.status_code == 500 else frames

    after = wait_until(settled, within=QUICK_S)
    assert [e["results"]["text"] for e in after if e["type"] == "result"] == ["'done'"]


def test_code_without_a_language_runs_as_a_command(execd: httpx.Client) -> None:
    with execd.stream("POST", "/code", json={"code": "echo from bash; exit 3"}) as answer:
        events = [json.loads(line) for line in answer.iter_lines() if line.strip()]
    assert [e["text"] for e in events if e["type"] == "stdout"] == ["from bash\n"]
    assert events[-1]["type"] == "error" and events[-1]["error"]["evalue"] == "3"


def test_the_sdk_interrupts_by_the_id_its_run_began_with(
    interpreter: CodeInterpreterSync,
) -> None:
    context = interpreter.codes.create_context("python")
    assert context.id
    outcome: dict[str, Any] = {}

    def loop() -> None:
        try:
            outcome["run"] = interpreter.codes.run("import time\ntime.sleep(60)", context=context)
        except SandboxException as exc:
            outcome["error"] = exc

    runner = threading.Thread(target=loop)
    runner.start()
    time.sleep(1)  # the run begins
    interpreter.codes.interrupt(context.id)
    runner.join(QUICK_S)
    assert not runner.is_alive()
    assert outcome["run"].error.name == "KeyboardInterrupt"


def test_a_sandbox_running_code_is_not_idle(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home", "--sandbox-idle-timeout", "1")
    try:
        box = SandboxSync.create(RUNTIME, connection_config=config(server))
        interpreter = CodeInterpreterSync.create(box)
        done = interpreter.codes.run("import time\ntime.sleep(3)\n'slept'", language="python")
        assert [r.text for r in done.result] == ["'slept'"]
        assert box.get_info().status.state == "Running"
        wait_until(lambda: box.get_info().status.state == "Terminated", within=10)
        assert box.get_info().status.reason == "IDLE"
    finally:
        stop_server(server)
