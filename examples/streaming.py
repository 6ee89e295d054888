"""Stream an execution's output as it is written, then drop a stream and pick it up again.

    BAPONI_API_KEY=sk-local-... .venv/bin/python examples/streaming.py

Set BAPONI_BASE_URL if the server is not on http://127.0.0.1:8080.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

from baponi import Baponi, ExecutionEvent, OutputEvent, ResultEvent, StatusEvent

warnings.filterwarnings("ignore", message="Base URL")  # plain HTTP is fine on loopback

COUNTDOWN = """
import sys, time
for i in range(5, 0, -1):
    print(f"{i}...")  # streamed as written (Python runs unbuffered in the sandbox)
    time.sleep(0.5)
print("liftoff", file=sys.stderr)
"""


def show(event: ExecutionEvent) -> None:
    """Print one event: output goes to the matching stream, the rest is a one-line note."""
    if isinstance(event, OutputEvent):
        out = sys.stderr if event.stream == "stderr" else sys.stdout
        print(event.data, end="", file=out, flush=True)
    elif isinstance(event, StatusEvent):
        print(f"[seq {event.seq}] {event.trace_id} is {event.status}")
    elif isinstance(event, ResultEvent):
        print(f"[seq {event.seq}] ended: {event.status}, exit code {event.result.exit_code}")
    else:  # a keepalive, sent after 5 s without any other event
        print(f"[seq {event.seq}] keepalive")


client = Baponi(base_url=os.environ.get("BAPONI_BASE_URL", "http://127.0.0.1:8080"))

# 1. Follow an execution live: each line arrives while the code still runs.
with client.execute_stream(COUNTDOWN) as stream:
    for event in stream:
        show(event)
    result = stream.get_final_result()
print(f"success={result.success}\n")

# 2. Disconnect on purpose after two lines. The execution goes on in the background.
# (Count newlines, not events: an output event carries whatever was written in the last
# 25 ms, which may be part of a line or several lines.)
stream = client.execute_stream(COUNTDOWN)
lines = 0
for event in stream:
    show(event)
    if isinstance(event, OutputEvent):
        lines += event.data.count("\n")
    if lines >= 2:
        break
trace_id, last_seq = stream.trace_id, stream.last_seq
stream.close()
assert trace_id is not None
print(f"-- disconnected after seq {last_seq}; reconnecting in 1 s --")
time.sleep(1)  # output written meanwhile is kept by the server, not lost

# Ask only for what came after the last event seen: nothing is shown twice.
with client.reconnect_stream(trace_id, after_seq=last_seq) as stream:
    for event in stream:
        show(event)
    print(f"stdout of the whole run: {stream.get_final_result().stdout!r}")
