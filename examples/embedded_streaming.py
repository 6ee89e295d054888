"""Run sandboxed code from your own async program, with no server in between: open the
core on a home, follow a run's output as it is written, then start one in the background
and wait for it.

    .venv/bin/python examples/embedded_streaming.py

State lives in BAPONI_HOME (else ~/.baponi). A home is open in one program at a time:
stop a `baponi serve` of the same home first, or set BAPONI_HOME to another directory.
"""

from __future__ import annotations

import anyio

from baponi_core import Embedded, OutputEvent, ResultEvent, StatusEvent

COUNTDOWN = """
import sys, time
for i in range(3, 0, -1):
    print(f"{i}...", flush=True)
    time.sleep(0.3)
print("liftoff", file=sys.stderr)
open("log.txt", "w").write("launched\\n")
"""


async def main() -> None:
    async with Embedded() as baponi:  # the home of BAPONI_HOME, else ~/.baponi
        # The default organisation and its default profile; no API key involved, every
        # limit of that profile applies.
        session = baponi.session()

        async with session.stream(COUNTDOWN, thread_id="embedded-example") as execution:
            partial = {"stdout": "", "stderr": ""}  # output comes in chunks, not in lines
            async for event in execution.events():
                if isinstance(event, StatusEvent):
                    print(f"[seq {event.seq}] {event.trace_id} is {event.status}")
                elif isinstance(event, OutputEvent):
                    *lines, partial[event.stream] = (partial[event.stream] + event.data).split("\n")
                    for line in lines:
                        print(f"[{event.stream}] {line}")
                elif isinstance(event, ResultEvent):
                    print(
                        f"[seq {event.seq}] ended: {event.status}, exit code "
                        f"{event.result.exit_code}"
                    )

        # The thread keeps its home: the next run sees what the first one wrote.
        background = await session.submit(
            "cat log.txt", language="bash", thread_id="embedded-example"
        )
        result = await background.result()
        print(f"background run: {result.stdout.strip()!r}, success={result.success}")
        print("in the thread's home:", await session.read_file("embedded-example", "log.txt"))


anyio.run(main)
