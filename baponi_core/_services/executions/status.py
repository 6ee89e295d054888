"""How an execution's ending shows: the record's status and error, the SandboxResult, and
the stream's result event."""

from __future__ import annotations

import time

from baponi_core._events import ResultEvent
from baponi_core._models import SandboxResult
from baponi_core._records import Execution, ExecutionStatus, WebhookStatus
from baponi_core._sandbox import Ending, Outcome
from baponi_core._services.executions.run import Run, StopReason

CANCELLED = "Cancelled by user"
SERVER_STOPPED = "server_stopped"  # the server went down while the execution ran
OUTPUT_LIMIT_EXCEEDED = "output_limit_exceeded"
QUOTA_EXCEEDED = "disk_quota_exceeded"
BLOCKED = "blocked"  # the code failed, and the egress proxy refused a connection of it

# How each ending of the sandbox shows in the record (status) and the result (error).
ENDINGS: dict[Ending, tuple[ExecutionStatus, str]] = {
    Ending.OOM: (ExecutionStatus.OOM, "memory_limit_exceeded"),
    Ending.TIMEOUT: (ExecutionStatus.TIMEOUT, "timeout"),
    Ending.OUTPUT_LIMIT: (ExecutionStatus.FAILED, OUTPUT_LIMIT_EXCEEDED),
    Ending.SECCOMP: (ExecutionStatus.SECCOMP, "security_policy_violation"),
}
STOPS: dict[StopReason, tuple[ExecutionStatus, str]] = {
    StopReason.CANCEL: (ExecutionStatus.CANCELLED, CANCELLED),
    StopReason.SHUTDOWN: (ExecutionStatus.FAILED, SERVER_STOPPED),
    StopReason.QUOTA: (ExecutionStatus.FAILED, QUOTA_EXCEEDED),
}


def from_outcome(run: Run, outcome: Outcome, home_full: bool = False) -> None:
    """Complete ``run``'s record and result as its program ended (the journal is closed
    by :func:`close_journal`, once the sandbox has ended too). A program that failed with
    its thread home full failed for want of room (``home_full``); one that failed after
    a connection of it was refused by its network policy was blocked."""
    if outcome.ending is Ending.EXITED:
        success = outcome.exit_code == 0
        status, error = (ExecutionStatus.SUCCESS if success else ExecutionStatus.FAILED), None
        if not success and home_full:
            error = QUOTA_EXCEEDED
        elif not success and outcome.blocked:
            status, error = ExecutionStatus.BLOCKED, BLOCKED
    elif outcome.ending is Ending.STOPPED:
        status, error = STOPS[run.stop_reason]
    else:
        status, error = ENDINGS[outcome.ending]
    record_end(
        run,
        status,
        error,
        exit_code=outcome.exit_code,
        stdout=outcome.stdout.decode(errors="replace"),
        stderr=outcome.stderr.decode(errors="replace"),
        duration_ms=outcome.duration_ms,
    )


def stopped(run: Run) -> None:
    """Finish ``run``, told to stop before any code ran."""
    finish(run, *STOPS[run.stop_reason], exit_code=-1)


def finish(
    run: Run,
    status: ExecutionStatus,
    error: str | None,
    *,
    exit_code: int,
    duration_ms: int | None = None,
) -> None:
    """Complete the record and the result, and close the journal with its result event."""
    record_end(run, status, error, exit_code=exit_code, duration_ms=duration_ms)
    close_journal(run)


def record_end(
    run: Run,
    status: ExecutionStatus,
    error: str | None,
    *,
    exit_code: int,
    stdout: str = "",
    stderr: str = "",
    duration_ms: int | None = None,
) -> None:
    """Complete the record (a pending webhook becomes due) and set the result."""
    record = run.record
    now = time.time()
    record.status, record.exit_code, record.error = status, exit_code, error
    record.stdout, record.stderr = stdout, stderr
    record.completed_at = now
    record.duration_ms = (
        duration_ms if duration_ms is not None else int((now - record.created_at) * 1000)
    )
    if record.webhook_delivery_status is WebhookStatus.PENDING:
        record.webhook_next_at = now
    run.result = result_of(record)


def close_journal(run: Run) -> None:
    """End the journal with the result event (its followers end after it)."""
    if not run.journal.closed:
        run.journal.close(result_event(run.record))


def result_of(record: Execution) -> SandboxResult:
    exit_code = -1 if record.exit_code is None else record.exit_code
    return SandboxResult(
        success=exit_code == 0,
        stdout=record.stdout or "",
        stderr=record.stderr or "",
        exit_code=exit_code,
        error=record.error,
        trace_id=record.trace_id,
    )


def result_event(record: Execution) -> ResultEvent:
    return ResultEvent(
        trace_id=record.trace_id,
        status=record.status,
        result=result_of(record),
        output_truncated=record.error == OUTPUT_LIMIT_EXCEEDED,
    )
