"""Run as an unprivileged user by test_unprivileged: a sandbox of a server that is not
root on an image runtime (bound by its path, which this user reaches). Prints what the
sandbox said as one JSON document."""

import json
import sys
from pathlib import Path

import anyio

from baponi_core._runtimes import Runtimes
from baponi_core._sandbox import CodeRun, SandboxRuntime, Shape, run_to_end

SCRIPT = b"cat /marker; echo; echo $MARKER; pwd; id -u; test -e /usr/bin/python3 || echo no-python"


async def main(base: Path) -> None:
    runtime = Runtimes(base / "runtimes").get("bb")
    async with SandboxRuntime.open(base / "run", [base / "shared"]) as sandboxes:
        job = CodeRun(language="bash", code=SCRIPT, shape=Shape(runtime=runtime), timeout_s=20)
        outcome = await run_to_end(sandboxes, job)
    print(json.dumps({"code": outcome.exit_code, "out": outcome.stdout.decode()}))


anyio.run(main, Path(sys.argv[1]))
