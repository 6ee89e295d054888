"""The journal of one execution, in-process: numbering, coalescing, decoding, followers."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from baponi_core._events import OutputEvent, ResultEvent, StatusEvent
from baponi_core._models import SandboxResult
from baponi_core._records import ExecutionStatus
from baponi_core._services import journal as journal_module
from baponi_core._services.journal import Journal

pytestmark = pytest.mark.anyio

RESULT = ResultEvent(
    trace_id="trc_j",
    status=ExecutionStatus.SUCCESS,
    result=SandboxResult(
        success=True, stdout="", stderr="", exit_code=0, error=None, trace_id="trc_j"
    ),
    output_truncated=False,
)


async def test_tiny_writes_are_coalesced_and_utf8_split_across_writes_survives() -> None:
    journal = Journal("trc_j")
    text = "é€🙂" * 2000
    data = text.encode()
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        for i in range(len(data)):  # one byte at a time: splits every multi-byte character
            journal.output("stdout", data[i : i + 1])
            if i % 500 == 0:
                await anyio.sleep(0.01)
        journal.close(RESULT.model_copy())
        tg.cancel_scope.cancel()
    outputs = [e for e in journal.events if isinstance(e, OutputEvent)]
    assert "".join(e.data for e in outputs) == text
    assert len(outputs) < 100  # 18000 writes, a handful of events
    assert [e.seq for e in journal.events] == list(range(1, len(journal.events) + 1))
    assert journal.events[-1].type == "result"


async def test_followers_from_any_point_see_the_same_events_live() -> None:
    journal = Journal("trc_j")
    seen: dict[int, list[int]] = {0: [], 2: []}

    async def follow(after: int) -> None:
        async for event in journal.follow(after):
            seen[after].append(event.seq)

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow, 0)
        tg.start_soon(follow, 2)
        for n in range(4):
            journal.append(StatusEvent(trace_id=f"trc_{n}", status=ExecutionStatus.RUNNING))
            await anyio.lowlevel.checkpoint()
        journal.close(RESULT.model_copy())
    assert seen == {0: [1, 2, 3, 4, 5], 2: [3, 4, 5]}


async def test_keepalive_after_silence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "KEEPALIVE_S", 0.2)
    journal = Journal("trc_j")
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        journal.append(StatusEvent(trace_id="trc_j", status=ExecutionStatus.RUNNING))
        await anyio.sleep(0.5)
        journal.output("stderr", b"x")
        await anyio.sleep(0.05)
        journal.close(RESULT.model_copy())
        tg.cancel_scope.cancel()
    kinds = [e.type for e in journal.events]
    assert kinds[:3] == ["status", "keepalive", "keepalive"]
    assert kinds[-2:] == ["output", "result"]
    assert journal.events[-2] == OutputEvent(stream="stderr", data="x", seq=4)
