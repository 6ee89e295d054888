"""Executions: validate against the caller's plan, run in a sandbox, record, answer."""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime

import anyio

from baponi_core.errors import NotFound, RateLimited, Unavailable, ValidationError
from baponi_core.ids import new_trace_id
from baponi_core.limits import TRACE_ID_PATTERN
from baponi_core.models import ExecuteRequest, ExecutionView, SandboxResult
from baponi_core.sandbox import Home, Limits, Outcome, SandboxRuntime, SandboxSpec
from baponi_core.sandbox.runner import SandboxError
from baponi_core.sandbox.spec import Ending, MiB
from baponi_core.services.concurrency import ConcurrencyLimiter
from baponi_core.services.threads import ThreadHomes
from baponi_core.store import Execution, Principal, Profile, Store

log = logging.getLogger(__name__)

# How each ending shows in the record (status) and the SandboxResult (error).
ENDINGS: dict[Ending, tuple[str, str | None]] = {
    Ending.OOM: ("oom", "memory_limit_exceeded"),
    Ending.TIMEOUT: ("timeout", "timeout"),
    Ending.OUTPUT_LIMIT: ("failed", "output_limit_exceeded"),
    Ending.SECCOMP: ("seccomp", "security_policy_violation"),
}


class Executions:
    def __init__(
        self,
        store: Store,
        runtime: SandboxRuntime,
        threads: ThreadHomes,
        limiter: ConcurrencyLimiter,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.threads = threads
        self.limiter = limiter

    async def execute(self, principal: Principal, request: ExecuteRequest) -> SandboxResult:
        """Run ``request`` to completion (inline delivery) and return its result."""
        profile = principal.profile
        if request.timeout > profile.max_timeout:
            raise RateLimited(
                f"timeout {request.timeout}s exceeds the plan limit of {profile.max_timeout}s",
            )
        with contextlib.ExitStack() as held:
            held.enter_context(self.limiter.slot(principal.org))
            if request.thread_id is not None:
                held.enter_context(self.threads.claim(principal.org.id, request.thread_id))
            record = Execution(
                trace_id=new_trace_id(),
                org_id=principal.org.id,
                key_id=principal.key.id,
                language=request.language,
                delivery_mode="inline",
                created_at=time.time(),
                thread_id=request.thread_id,
                metadata=dict(request.metadata or {}),
            )
            await self.store.insert_execution(record)
            try:
                result = await self._run(record, request, profile)
            finally:
                with anyio.CancelScope(shield=True):
                    if record.completed_at is None:  # cancelled or crashed mid-run
                        _finish(record, "failed", -1, "", "", "internal_error")
                    await self.store.finish_execution(record)
            return result

    async def _run(
        self, record: Execution, request: ExecuteRequest, profile: Profile
    ) -> SandboxResult:
        home = Home()
        if request.thread_id is not None:
            try:
                home = Home(self.threads.path(record.org_id, request.thread_id))
            except OSError:
                log.exception("thread home for %s not available", record.trace_id)
                return _finish(record, "failed", -1, "", "", "thread_mount_error")
        spec = SandboxSpec(
            language=request.language,
            code=request.code.encode(),
            env=dict(request.env_vars or {}),
            home=home,
            limits=limits_for(profile, request.timeout),
            name=record.trace_id,
        )
        try:
            outcome = await self.runtime.run(spec)
        except SandboxError as exc:
            log.error("sandbox for %s failed: %s", record.trace_id, exc)
            _finish(record, "failed", -1, "", "", "service_unavailable")
            raise Unavailable("the sandbox runtime is unavailable; try again") from None
        return _from_outcome(record, outcome)

    async def get(self, principal: Principal, trace_id: str) -> ExecutionView:
        if not TRACE_ID_PATTERN.fullmatch(trace_id):
            raise ValidationError("invalid trace_id format")
        record = await self.store.get_execution(principal.org.id, trace_id)
        if record is None:
            raise NotFound(f"Execution {trace_id} not found")
        return view(record)


def limits_for(profile: Profile, timeout: int) -> Limits:
    return Limits(
        timeout_s=float(timeout),
        memory_bytes=profile.memory_mb * MiB,
        cpus=profile.cpus,
        pids=profile.pids,
        tmp_bytes=profile.tmp_mb * MiB,
        output_bytes=profile.output_kb * 1024,
    )


def _from_outcome(record: Execution, outcome: Outcome) -> SandboxResult:
    if outcome.ending is Ending.EXITED:
        status, error = ("success" if outcome.exit_code == 0 else "failed"), None
    else:
        status, error = ENDINGS[outcome.ending]
    return _finish(
        record,
        status,
        outcome.exit_code,
        outcome.stdout.decode(errors="replace"),
        outcome.stderr.decode(errors="replace"),
        error,
        duration_ms=outcome.duration_ms,
    )


def _finish(
    record: Execution,
    status: str,
    exit_code: int,
    stdout: str,
    stderr: str,
    error: str | None,
    duration_ms: int | None = None,
) -> SandboxResult:
    now = time.time()
    record.status, record.exit_code, record.error = status, exit_code, error
    record.stdout, record.stderr = stdout, stderr
    record.completed_at = now
    record.duration_ms = (
        duration_ms if duration_ms is not None else int((now - record.created_at) * 1000)
    )
    return SandboxResult(
        success=exit_code == 0,
        stdout=stdout,
        stderr=stderr,
        exit_code=exit_code,
        error=error,
        trace_id=record.trace_id,
    )


def view(record: Execution) -> ExecutionView:
    running = record.completed_at is None
    elapsed = int((time.time() - record.created_at) * 1000)
    return ExecutionView(
        trace_id=record.trace_id,
        status=record.status,  # type: ignore[arg-type]
        exit_code=None if running else record.exit_code,
        stdout=None if running else record.stdout,
        stderr=None if running else record.stderr,
        error=record.error,
        duration_ms=elapsed if running else (record.duration_ms or 0),
        delivery_mode=record.delivery_mode,  # type: ignore[arg-type]
        created_at=iso(record.created_at),
        completed_at=None if record.completed_at is None else iso(record.completed_at),
        webhook_url=record.webhook_url,
        webhook_delivery_status=record.webhook_delivery_status,  # type: ignore[arg-type]
    )


def iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
