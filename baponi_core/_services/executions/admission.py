"""Admission: whether a request may run now, under the caller's plan, and its record."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from baponi_core._errors import RateLimited, ValidationError
from baponi_core._ids import new_trace_id
from baponi_core._models import ExecuteRequest
from baponi_core._records import (
    DeliveryMode,
    Execution,
    ExecutionStatus,
    Principal,
    Volume,
    WebhookStatus,
)
from baponi_core._runtimes import Runtimes
from baponi_core._sandbox import volume_mounts
from baponi_core._sandbox.image import Runtime
from baponi_core._services.concurrency import ConcurrencyLimiter
from baponi_core._services.threads import ThreadClaims
from baponi_core._services.webhooks import Webhooks


def check(
    principal: Principal,
    request: ExecuteRequest,
    mode: DeliveryMode,
    webhooks: Webhooks,
    runtimes: Runtimes,
) -> Runtime:
    """Refuse, before anything is taken, what the caller may not run; the runtime (its
    current generation) it runs on."""
    if request.webhook_url is not None:
        if mode is not DeliveryMode.WEBHOOK:
            raise ValidationError("webhook_url requires the header Prefer: respond-async")
        webhooks.check(request.webhook_url)
    check_sub_paths(principal.volumes, request.sub_paths)
    limit = principal.profile.max_timeout
    if request.timeout > limit:
        raise RateLimited(f"timeout {request.timeout}s exceeds the plan limit of {limit}s")
    return runtime_for(runtimes, principal.profile.runtime, request.language)


def runtime_for(runtimes: Runtimes, name: str, language: str) -> Runtime:
    """The current generation of ``name`` for a request in ``language``: 503 when it is not
    installed (the operator's to fix), 400 when it has no interpreter for the language."""
    runtime = runtimes.get(name)
    if runtime.interpreter(language) is None:
        raise ValidationError(
            f"language {language} is not available in runtime {name} (it has: "
            f"{', '.join(runtime.languages) or 'none'})"
        )
    return runtime


def check_sub_paths(volumes: tuple[Volume, ...], sub_paths: list[str] | None) -> None:
    """Refuse, before anything runs, a sub-path outside the key's volumes."""
    try:
        volume_mounts(((v.slug, Path("/"), v.read_only) for v in volumes), sub_paths or ())
    except ValueError as exc:
        raise ValidationError(f"sub_paths: {exc}") from None


def hold(
    limiter: ConcurrencyLimiter,
    threads: ThreadClaims,
    principal: Principal,
    request: ExecuteRequest,
) -> contextlib.ExitStack:
    """Take the organisation's concurrency slot and the thread (429, 409 when taken). Both
    are checked and taken with no ``await`` in between, so concurrent requests on the event
    loop cannot overshoot; the stack releases them."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(limiter.slot(principal.org))
        if request.thread_id is not None:
            stack.enter_context(threads.claim(principal.org.id, request.thread_id))
        return stack.pop_all()


def record_for(principal: Principal, request: ExecuteRequest, mode: DeliveryMode) -> Execution:
    webhook = mode is DeliveryMode.WEBHOOK
    return Execution(
        trace_id=new_trace_id(),
        org_id=principal.org.id,
        key_id=principal.key.id,
        language=request.language,
        delivery_mode=mode,
        created_at=time.time(),
        timeout=request.timeout,
        status=ExecutionStatus.QUEUED if webhook else ExecutionStatus.RUNNING,
        thread_id=request.thread_id,
        metadata=dict(request.metadata or {}),
        webhook_url=request.webhook_url,
        webhook_delivery_status=WebhookStatus.PENDING if request.webhook_url else None,
    )
