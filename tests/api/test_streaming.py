"""Streaming executions, reconnection, retention and cancellation, end to end.

A real server, real sandboxes, the official SDK as client and the real SQLite store.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from baponi import (
    BaponiError,
    ExecutionStream,
    KeepaliveEvent,
    OutputEvent,
    ResultEvent,
    StatusEvent,
    ThreadBusyError,
)

from tests.harness import (
    TERMINAL,
    Server,
    assert_error,
    expire_events,
    marker_processes,
    on_both_paths,
    org_key,
    sleep_marker,
    tagged_execution,
    unique,
    wait_until,
)

server = on_both_paths()  # every test: without the pool and with it

EXECUTE = "/v1/sandbox/execute"
NDJSON = {"Accept": "application/x-ndjson"}
OTHER_ORG = "streaming-other"
UNKNOWN_TRACE = "trc_unknown000000000"
CANCELLED = "Cancelled by user"

# (client arrival time from time.monotonic(), event)
Timed = tuple[float, Any]


# --------------------------------------------------------------------------- helpers


def timed(stream: ExecutionStream, limit: int | None = None) -> list[Timed]:
    """Read events (all, or the first ``limit``) with their arrival times on the client."""
    events: list[Timed] = []
    for event in stream:
        events.append((time.monotonic(), event))
        if limit is not None and len(events) == limit:
            break
    return events


def events_of(stream: ExecutionStream, limit: int | None = None) -> list[Any]:
    return [event for _, event in timed(stream, limit)]


def seqs(events: list[Any]) -> list[int]:
    return [event.seq for event in events]


def dumps(events: list[Any]) -> list[dict[str, Any]]:
    return [event.model_dump() for event in events]


def assert_complete_stream(events: list[Any]) -> ResultEvent:
    """A whole stream: status first, output/keepalive in between, result last,
    seq 1, 2, 3, ... without gap or duplicate. Returns the result event."""
    assert isinstance(events[0], StatusEvent)
    assert events[0].status == "running"
    assert events[0].trace_id.startswith("trc_")
    assert all(isinstance(e, OutputEvent | KeepaliveEvent) for e in events[1:-1]), events
    assert isinstance(events[-1], ResultEvent)
    assert events[-1].trace_id == events[0].trace_id
    assert seqs(events) == list(range(1, len(events) + 1))
    return events[-1]


def streamed(events: list[Any], name: str) -> str:
    """The concatenated output of one stream ("stdout" or "stderr")."""
    return "".join(e.data for e in events if isinstance(e, OutputEvent) and e.stream == name)


def wait_terminal(sdk: Any, trace_id: str, timeout: float = 30) -> Any:
    def probe() -> Any:
        record = sdk.get_execution(trace_id)
        return record if record.status in TERMINAL else None

    return wait_until(probe, timeout, f"{trace_id} to end")


def output_url(trace_id: str) -> str:
    return f"/v1/executions/{trace_id}/output"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def other_key(server: Server) -> str:
    """A key of a second organisation, to prove executions are scoped to their owner."""
    return org_key(server, OTHER_ORG)


@pytest.fixture()
def other_api(server: Server, other_key: str) -> Iterator[httpx.Client]:
    with server.client(other_key) as client:
        yield client


@pytest.fixture()
def cancel_marker() -> str:
    """A sleep duration no other process on the host uses."""
    return sleep_marker(1234)


def spawner_code(marker: str) -> str:
    """Bash that starts background sleepers and a forking python, all carrying ``marker``."""
    forker = f"import os, time; os.fork(); time.sleep({marker})"
    return f'sleep {marker} & sleep {marker} & python3 -c "{forker}" & echo ready; wait'


def start_spawner(sdk: Any, marker: str) -> tuple[ExecutionStream, str]:
    """A streaming execution with its marker processes alive: 2 sleeps, python and its
    forked child (besides the bash that started them)."""
    stream = sdk.execute_stream(spawner_code(marker), language="bash", timeout=60)
    first = events_of(stream, 2)
    assert isinstance(first[1], OutputEvent) and first[1].data == "ready\n"

    def all_started() -> bool:
        programs = [cmdline.split(b"\0")[0] for cmdline in marker_processes(marker)]
        return programs.count(b"sleep") == 2 and programs.count(b"python3") == 2

    wait_until(all_started, 10, "the sandboxed processes to start")
    return stream, first[0].trace_id


# --------------------------------------------------------------------------- 1. events


def test_stream_events_in_order(sdk: Any) -> None:
    code = "import sys\nprint('out 1')\nsys.stderr.write('err 1\\n')\nprint('out 2')"
    with sdk.execute_stream(code, timeout=30) as stream:
        events = events_of(stream)
        final = stream.get_final_result()
    result = assert_complete_stream(events)
    assert result.status == "success"
    assert final == result.result
    assert result.output_truncated is False
    assert final.stdout == "out 1\nout 2\n" == streamed(events, "stdout")
    assert final.stderr == "err 1\n" == streamed(events, "stderr")
    assert final.exit_code == 0 and final.success is True and final.error is None
    assert stream.trace_id == events[0].trace_id
    assert stream.last_seq == result.seq


def test_until_done(sdk: Any) -> None:
    with sdk.execute_stream("echo to-out; echo to-err >&2; exit 4", language="bash") as stream:
        result = stream.until_done()
    assert result.stdout == "to-out\n"
    assert result.stderr == "to-err\n"
    assert result.exit_code == 4 and result.success is False
    assert sdk.get_execution(stream.trace_id).status == "failed"


# --------------------------------------------------------------------------- 2. live output


@pytest.mark.slow
def test_output_arrives_as_written(sdk: Any) -> None:
    code = "import time\nprint('before', flush=True)\ntime.sleep(2)\nprint('after')"
    with sdk.execute_stream(code, timeout=30) as stream:
        events = timed(stream)
    assert_complete_stream([event for _, event in events])
    started = events[0][0]
    # chunk boundaries are free ("before" and "\n" may be two writes), so look at the text
    # that arrived well before the sleep ends: it is the whole first line
    early = [e for at, e in events if at - started < 1.5]
    assert streamed(early, "stdout") == "before\n"
    # the end comes with the sleep, not with the first line (less a loaded machine's jitter)
    assert events[-1][0] - started >= 1.5
    assert events[-1][1].result.stdout == "before\nafter\n"


# --------------------------------------------------------------------------- 3. keepalive


@pytest.mark.slow
def test_keepalive_after_five_quiet_seconds(sdk: Any) -> None:
    code = "import time\nprint('start', flush=True)\ntime.sleep(6.5)\nprint('end')"
    with sdk.execute_stream(code, timeout=30) as stream:
        events = timed(stream)
    assert_complete_stream([event for _, event in events])
    index = next(i for i, (_, e) in enumerate(events) if isinstance(e, KeepaliveEvent))
    quiet = events[index][0] - events[index - 1][0]
    assert 4 <= quiet <= 7, quiet
    assert events[-1][1].result.stdout == "start\nend\n"


# --------------------------------------------------------------------------- 4. reconnect


@pytest.mark.slow
def test_reconnect_resumes_without_gap_or_duplicate(sdk: Any) -> None:
    code = (
        "import time\nfor i in range(6):\n    print(f'line {i}', flush=True)\n    time.sleep(0.4)"
    )
    with sdk.execute_stream(code, timeout=30) as stream:
        head = events_of(stream, 3)
        trace_id, after = stream.trace_id, stream.last_seq
    assert seqs(head) == [1, 2, 3]
    with sdk.reconnect_stream(trace_id, after_seq=after) as resumed:
        # the execution was still running, so this stream follows it live
        assert sdk.get_execution(trace_id).status == "running"
        tail = events_of(resumed)
    assert seqs(tail) == list(range(after + 1, after + 1 + len(tail)))
    assert isinstance(tail[-1], ResultEvent) and tail[-1].status == "success"
    assert tail[-1].result.stdout == "".join(f"line {i}\n" for i in range(6))

    # after the end: the stored events are replayed, followed by the result
    with sdk.reconnect_stream(trace_id) as replay:
        full = events_of(replay)
    assert_complete_stream(full)
    assert dumps(full) == dumps(head + tail)
    assert streamed(full, "stdout") == tail[-1].result.stdout
    with sdk.reconnect_stream(trace_id, after_seq=after) as replay:
        assert dumps(events_of(replay)) == dumps(tail)


@pytest.mark.parametrize("after_seq", ["abc", "-1", "1.5"])
def test_output_rejects_bad_after_seq(api: httpx.Client, after_seq: str) -> None:
    trace_id = api.post(EXECUTE, json={"code": "print(1)"}).json()["trace_id"]
    response = api.get(output_url(trace_id), params={"after_seq": after_seq})
    assert_error(response, 400, "validation_error")


@pytest.mark.slow
def test_output_of_unknown_or_foreign_execution_is_404(
    sdk: Any, api: httpx.Client, other_api: httpx.Client
) -> None:
    assert_error(api.get(output_url(UNKNOWN_TRACE)), 404, "not_found")
    with sdk.execute_stream("print('mine')", timeout=30) as stream:
        stream.until_done()
    assert_error(other_api.get(output_url(stream.trace_id)), 404, "not_found")
    assert_error(other_api.get(f"/v1/executions/{stream.trace_id}"), 404, "not_found")
    assert api.get(output_url(stream.trace_id)).status_code == 200


# --------------------------------------------------------------------------- 5. disconnect


@pytest.mark.slow
def test_disconnect_does_not_stop_execution(sdk: Any) -> None:
    code = "import time\nprint('started', flush=True)\ntime.sleep(1.5)\nprint('finished')"
    with sdk.execute_stream(code, timeout=30) as stream:
        first = events_of(stream, 1)
    assert isinstance(first[0], StatusEvent)
    record = wait_terminal(sdk, first[0].trace_id)
    assert record.status == "success"
    assert record.stdout == "started\nfinished\n"
    assert record.delivery_mode == "streaming"


# --------------------------------------------------------------------------- 6. retention


def test_expired_output_is_empty_but_record_stays(
    server: Server, sdk: Any, api: httpx.Client
) -> None:
    with sdk.execute_stream("print('kept')", timeout=30) as stream:
        stream.until_done()
    trace_id = stream.trace_id
    before = api.get(output_url(trace_id))
    assert before.status_code == 200 and b"kept" in before.content
    assert expire_events(server.home, trace_id) > 0
    after = api.get(output_url(trace_id))
    assert after.status_code == 200
    assert after.content == b""
    record = api.get(f"/v1/executions/{trace_id}").json()
    assert (record["status"], record["stdout"]) == ("success", "kept\n")


def test_inline_output_is_empty_after_the_end(api: httpx.Client) -> None:
    body = api.post(EXECUTE, json={"code": "print('inline')"}).json()
    assert body["stdout"] == "inline\n"
    response = api.get(output_url(body["trace_id"]))
    assert response.status_code == 200
    assert response.content == b""
    record = api.get(f"/v1/executions/{body['trace_id']}").json()
    assert (record["status"], record["delivery_mode"]) == ("success", "inline")


# --------------------------------------------------------------------------- 7. cancel


def assert_cancelled(sdk: Any, trace_id: str) -> None:
    record = sdk.get_execution(trace_id)
    assert record.status == "cancelled"
    assert record.error == CANCELLED
    assert record.exit_code == 137


def assert_stream_cancelled(stream: ExecutionStream) -> None:
    """The open stream ends with a cancelled result event."""
    rest = events_of(stream)
    assert isinstance(rest[-1], ResultEvent)
    assert rest[-1].status == "cancelled"
    assert rest[-1].result.error == CANCELLED
    assert rest[-1].result.success is False


def test_cancel_kills_the_whole_tree(sdk: Any, other_api: httpx.Client, cancel_marker: str) -> None:
    stream, trace_id = start_spawner(sdk, cancel_marker)
    with stream:
        # another organisation cannot see, let alone cancel it
        assert_error(other_api.post(f"/v1/executions/{trace_id}/cancel"), 404, "not_found")
        assert sdk.get_execution(trace_id).status == "running"

        asked = time.monotonic()
        answer = sdk.cancel_execution(trace_id)
        assert (answer.trace_id, answer.status) == (trace_id, "cancelling")
        leftover = marker_processes(cancel_marker)
        while leftover and time.monotonic() - asked < 1:
            time.sleep(0.02)
            leftover = marker_processes(cancel_marker)
        assert leftover == [], "sandboxed processes survived the cancel"
        assert_stream_cancelled(stream)
    assert_cancelled(sdk, trace_id)


def test_cancel_of_finished_execution_is_409(sdk: Any, api: httpx.Client) -> None:
    with sdk.execute_stream("print('done')", timeout=30) as stream:
        stream.until_done()
    with pytest.raises(ThreadBusyError) as raised:
        sdk.cancel_execution(stream.trace_id)
    assert isinstance(raised.value, BaponiError)
    assert raised.value.status_code == 409
    assert raised.value.error_type == "conflict"
    assert_error(api.post(f"/v1/executions/{stream.trace_id}/cancel"), 409, "conflict")
    assert sdk.get_execution(stream.trace_id).status == "success"


def test_cancel_unknown_or_malformed(api: httpx.Client) -> None:
    assert_error(api.post(f"/v1/executions/{UNKNOWN_TRACE}/cancel"), 404, "not_found")
    assert_error(api.post("/v1/executions/not-a-trace/cancel"), 400, "validation_error")


def test_stream_cancel_method(sdk: Any) -> None:
    with sdk.execute_stream("import time; time.sleep(30)", timeout=60) as stream:
        first = events_of(stream, 1)
        answer = stream.cancel()
        assert (answer.trace_id, answer.status) == (first[0].trace_id, "cancelling")
        assert_stream_cancelled(stream)
    assert_cancelled(sdk, first[0].trace_id)


def running_trace_with_metadata(server: Server, marker: str) -> str | None:
    """The trace id of the running execution tagged with ``marker`` (an inline caller
    only learns its trace id at the end, so look it up in the store)."""
    found = tagged_execution(server.home, marker)
    return found[0] if found is not None and found[1] == "running" else None


def test_cancel_inline_execution(server: Server, sdk: Any) -> None:
    marker = unique("inline")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            sdk.execute, "import time; time.sleep(30)", timeout=60, metadata={"probe": marker}
        )
        trace_id = wait_until(
            lambda: running_trace_with_metadata(server, marker), 10, "the execution to run"
        )
        sdk.cancel_execution(trace_id)
        result = pending.result(timeout=10)
    assert result.error == CANCELLED
    assert result.success is False
    assert_cancelled(sdk, trace_id)


# --------------------------------------------------------------------------- 8. early errors


@pytest.mark.parametrize(
    "body",
    [{"code": ""}, {"code": "print(1)", "language": "cobol"}, {"code": "print(1)", "timeout": 0}],
)
def test_invalid_streaming_request_is_json(api: httpx.Client, body: dict[str, Any]) -> None:
    assert_error(api.post(EXECUTE, json=body, headers=NDJSON), 400, "validation_error")


@pytest.mark.slow
def test_busy_thread_streaming_request_is_json(sdk: Any, api: httpx.Client) -> None:
    thread = unique("busy")
    code = "import time; time.sleep(1.5)"
    with sdk.execute_stream(code, thread_id=thread, timeout=30) as stream:
        assert isinstance(events_of(stream, 1)[0], StatusEvent)
        second = api.post(EXECUTE, json={"code": code, "thread_id": thread}, headers=NDJSON)
        assert_error(second, 409, "conflict")
        with pytest.raises(ThreadBusyError):
            sdk.execute_stream(code, thread_id=thread, timeout=30)
        assert stream.until_done().success is True
