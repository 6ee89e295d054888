"""Start a long streaming execution and cancel it halfway.

    BAPONI_API_KEY=sk-local-... .venv/bin/python examples/cancel.py

Set BAPONI_BASE_URL if the server is not on http://127.0.0.1:8080.
"""

from __future__ import annotations

import os
import warnings

from baponi import Baponi, OutputEvent, ResultEvent, ThreadBusyError

warnings.filterwarnings("ignore", message="Base URL")  # plain HTTP is fine on loopback

# A minute of ticks, plus a background child: cancelling kills the whole sandbox.
FOREVER = """
import subprocess, time
subprocess.Popen(["sleep", "600"])
for i in range(120):
    print(f"tick {i}")
    time.sleep(0.5)
"""

client = Baponi(base_url=os.environ.get("BAPONI_BASE_URL", "http://127.0.0.1:8080"))

with client.execute_stream(FOREVER, timeout=120) as stream:
    ticks, cancelled = 0, False
    for event in stream:
        if isinstance(event, OutputEvent):
            print(event.data, end="", flush=True)
            ticks += event.data.count("\n")
            if ticks >= 3 and not cancelled:  # an event may carry several lines
                cancelled = True
                # Same as POST /v1/executions/{trace_id}/cancel; answers at once.
                print(f"cancel -> {stream.cancel().status}")
        elif isinstance(event, ResultEvent):
            # The stream is not cut: it ends with the result, like any other ending.
            result = event.result
            print(
                f"result: status={event.status} error={result.error!r} exit_code={result.exit_code}"
            )
    trace_id = stream.trace_id
assert trace_id is not None

record = client.get_execution(trace_id)
print(f"record: status={record.status} error={record.error!r} duration_ms={record.duration_ms}")

# A finished execution cannot be cancelled again: 409 conflict.
try:
    client.cancel_execution(trace_id)
except ThreadBusyError as exc:  # the SDK maps every 409 to ThreadBusyError
    print(f"second cancel -> {exc.status_code}: {exc}")
