"""Webhook delivery mode: submit, get a 202 at once, and wait (by polling or by webhook).

    BAPONI_API_KEY=sk-local-... .venv/bin/python examples/webhook.py

With BAPONI_WEBHOOK_URL=https://... set (for instance examples/webhook_receiver.py), the
result is also POSTed there, signed. Set BAPONI_BASE_URL if the server is not on
http://127.0.0.1:8080.
"""

from __future__ import annotations

import os
import time
import warnings

from baponi import APIValidationError, Baponi

warnings.filterwarnings("ignore", message="Base URL")  # plain HTTP is fine on loopback

SLOW = "import time; time.sleep(2); print('done after 2 s')"

client = Baponi(base_url=os.environ.get("BAPONI_BASE_URL", "http://127.0.0.1:8080"))

# 1. No webhook_url: the server answers 202 before the code runs; poll for the end.
handle = client.execute_webhook(SLOW)
print(f"accepted {handle.trace_id}: {handle.poll().status}")  # queued or running
status = handle.wait(poll_interval=0.5, timeout=60)  # polls GET /v1/executions/{id}
print(f"{status.status}: {status.stdout!r}")

# 2. With webhook_url: the finished record is POSTed there, signed with the org's secret.
url = os.environ.get("BAPONI_WEBHOOK_URL")
if url is None:
    print("set BAPONI_WEBHOOK_URL=https://... to try a delivery")
    raise SystemExit(0)
try:
    handle = client.execute_webhook(SLOW, webhook_url=url)
except APIValidationError as exc:  # e.g. a private address on a server that refuses them
    raise SystemExit(f"refused: {exc}") from None
status = handle.wait(poll_interval=0.5, timeout=60)
print(f"{status.status}; delivery to {status.webhook_url}: {status.webhook_delivery_status}")

# Delivery starts when the execution ends; a failed try is retried later (5 s, 30 s, ...).
deadline = time.monotonic() + 30
while status.webhook_delivery_status == "pending" and time.monotonic() < deadline:
    time.sleep(0.5)
    status = handle.poll()
print(f"delivery: {status.webhook_delivery_status}")
