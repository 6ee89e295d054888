"""A long-lived sandbox through the official `opensandbox` SDK, unmodified, against a
local server: create one from a runtime, run commands in it (its files and environment
kept between them), a background job with its logs, pause and resume, then kill it.

    scripts/setup.sh serve            # in one terminal: prints a first API key
    OPEN_SANDBOX_API_KEY=sk-local-... .venv/bin/python examples/opensandbox_quickstart.py

Set OPEN_SANDBOX_DOMAIN if the server is not on http://127.0.0.1:8080/opensandbox.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

from opensandbox import SandboxSync
from opensandbox.config.connection_sync import ConnectionConfigSync
from opensandbox.models.execd import Execution, RunCommandOpts

domain = os.environ.get("OPEN_SANDBOX_DOMAIN", "http://127.0.0.1:8080/opensandbox")
config = ConnectionConfigSync(domain=domain)  # the key: $OPEN_SANDBOX_API_KEY


def stdout(execution: Execution) -> str:
    return "".join(message.text for message in execution.logs.stdout)


# "default" is the server's default runtime (baponi runtimes list shows them all).
sandbox = SandboxSync.create(
    "default", connection_config=config, timeout=timedelta(minutes=5), env={"GREETING": "hello"}
)
try:
    print(f"created {sandbox.id}: {sandbox.get_info().status.state}")
    sandbox.commands.run("echo 'kept between commands' > ~/notes.txt")
    print(stdout(sandbox.commands.run('echo "$GREETING"; cat ~/notes.txt')), end="")

    job = sandbox.commands.run(
        "for i in 1 2 3; do echo step $i; sleep 0.3; done", opts=RunCommandOpts(background=True)
    )
    while sandbox.commands.get_command_status(job.id).running:
        time.sleep(0.2)
    print(sandbox.commands.get_background_command_logs(job.id).content, end="")

    sandbox.pause()
    print(f"paused: {sandbox.get_info().status.state}")
    sandbox = SandboxSync.resume(sandbox.id, connection_config=config)
    notes = stdout(sandbox.commands.run("cat ~/notes.txt"))
    print(f"resumed: {sandbox.get_info().status.state}; {notes}", end="")
finally:
    sandbox.kill()
print(f"killed: {sandbox.get_info().status.state}")
