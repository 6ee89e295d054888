"""Webhook delivery: POST each finished execution's record to its ``webhook_url``, signed.

The store is the queue: a record whose delivery is ``pending`` carries the time of its next
try, so deliveries survive a restart and resume where they stopped. A try is booked (attempt
counted, next try scheduled) before it is made, so a crash mid-try cannot lose the retry.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import ssl
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import anyio
import httpcore2

from baponi_core._config import RETRY_DELAYS_S
from baponi_core._errors import CannotStart, ValidationError
from baponi_core._models import ExecutionView
from baponi_core._net.addresses import GuardedBackend, RefusedTarget, reachable
from baponi_core._records import Execution, WebhookStatus
from baponi_core._store import Store

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Baponi-Signature"
BATCH = 32
PARALLEL = 8
IDLE_S = 60.0
TIMEOUTS = {"connect": 10.0, "read": 15.0, "write": 15.0, "pool": 15.0}
USER_AGENT = b"baponi-selfhosted-webhooks/1"


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


async def secret_for(store: Store, org_id: str, rotate: bool = False) -> str:
    """The organisation's signing secret, made on first use. Two first uses at once agree:
    the write only fills an empty secret, and both read back the one that won."""
    secret = None if rotate else await store.webhook_secret(org_id)
    if secret is None:
        await store.set_webhook_secret(org_id, new_secret(), replace=rotate)
        secret = await store.webhook_secret(org_id)
        assert secret is not None
    return secret


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """``t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


class Webhooks:
    def __init__(
        self,
        store: Store,
        *,
        allow_private: bool = False,
        ca_file: Path | None = None,
        retry_delays: Sequence[float] = RETRY_DELAYS_S,
    ) -> None:
        self.store = store
        self.allow_private = allow_private
        self.retry_delays = tuple(retry_delays)
        context = ssl.create_default_context()
        if ca_file is not None:
            try:
                context.load_verify_locations(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:  # SSLError: not PEM certificates
                raise CannotStart(f"webhook CA file {ca_file}: {exc.strerror or exc}") from None
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=context,
            max_connections=PARALLEL,
            network_backend=GuardedBackend(allow_private),
        )
        self._wake = anyio.Event()
        self._limiter = anyio.CapacityLimiter(PARALLEL)
        self._inflight: set[str] = set()

    def check(self, url: str) -> None:
        """Refuse at once what delivery would refuse anyway, without a lookup: a private
        address, a local name, in whatever spelling."""
        if not self.allow_private and not reachable(urllib.parse.urlsplit(url).hostname or ""):
            raise ValidationError(
                "webhook_url must not point to a private, loopback or link-local address"
            )

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Deliver what is due, forever. Tries run side by side (at most ``PARALLEL``), so a
        slow receiver never holds up the others; each end of a try wakes the loop."""
        async with anyio.create_task_group() as tries:
            while True:
                self._wake = anyio.Event()
                started = False
                now = time.time()  # one reading for the query and for the decision below
                try:
                    for record in await self.store.due_webhooks(now, BATCH):
                        if record.trace_id not in self._inflight:
                            self._inflight.add(record.trace_id)
                            tries.start_soon(self._attempt, record)
                            started = True
                    next_at = await self.store.next_webhook_at()
                except Exception:
                    log.exception("webhook delivery loop failed; retrying")
                    next_at = now + self.retry_delays[0]
                if started:
                    continue
                # Due at ``now`` means the query returned it: it is in flight, and the end of
                # its try wakes us. Otherwise sleep until the next try is due.
                if next_at is None or next_at <= now:
                    wait = IDLE_S
                else:
                    wait = max(next_at - time.time(), 0)
                with anyio.move_on_after(min(wait, IDLE_S)):
                    await self._wake.wait()

    async def close(self) -> None:
        await self._pool.aclose()

    async def _attempt(self, record: Execution) -> None:
        try:
            async with self._limiter:
                await self._try(record)
        except Exception:
            log.exception("webhook for %s: delivery failed", record.trace_id)
        finally:
            self._inflight.discard(record.trace_id)
            self.wake()

    async def _try(self, record: Execution) -> None:
        record.webhook_attempts += 1
        last = record.webhook_attempts > len(self.retry_delays)
        if not last:
            record.webhook_next_at = time.time() + self.retry_delays[record.webhook_attempts - 1]
        else:
            record.webhook_next_at = None
            record.webhook_delivery_status = WebhookStatus.FAILED
        await self.store.update_execution(record)  # booked before it is made
        delivered, permanent = await self._post(record)
        if delivered:
            record.webhook_delivery_status, record.webhook_next_at = WebhookStatus.DELIVERED, None
        elif permanent and not last:
            record.webhook_delivery_status, record.webhook_next_at = WebhookStatus.FAILED, None
        else:
            return
        await self.store.update_execution(record)

    async def _post(self, record: Execution) -> tuple[bool, bool]:
        """Make one try; answer (delivered, failed for good)."""
        assert record.webhook_url is not None
        view = ExecutionView.of(record).model_copy(
            update={"webhook_delivery_status": WebhookStatus.PENDING}
        )
        body = view.model_dump_json().encode()
        secret = await secret_for(self.store, record.org_id)
        headers = [
            (b"Content-Type", b"application/json"),
            (b"User-Agent", USER_AGENT),
            (SIGNATURE_HEADER.encode(), signature(secret, body, int(time.time())).encode()),
            (b"Baponi-Delivery-Attempt", str(record.webhook_attempts).encode()),
        ]
        try:
            async with self._pool.stream(
                "POST",
                record.webhook_url,
                headers=headers,
                content=body,
                extensions={"timeout": TIMEOUTS},
            ) as response:
                status = response.status
        except RefusedTarget as exc:
            log.warning("webhook for %s refused: %s", record.trace_id, exc)
            return False, True
        except Exception as exc:  # any other failure is worth another try
            log.warning("webhook for %s, try %d: %s", record.trace_id, record.webhook_attempts, exc)
            return False, False
        if 200 <= status < 300:
            return True, False
        log.warning(
            "webhook for %s, try %d: HTTP %d", record.trace_id, record.webhook_attempts, status
        )
        return False, False
