"""Run as an unprivileged user by test_handle: a runtime of a server that is not root,
with a home and a read-only volume. Prints what it saw as one JSON document."""

import json
import os
import sys
from pathlib import Path

import anyio

from baponi_core._sandbox import Command, Mount, SandboxRuntime, Shape
from baponi_core._sandbox.rootfs import BASE_ENV

SCRIPT = (
    "id -u; cat /data/v/in.txt; echo w > made.txt; touch /data/v/x 2>&1 | grep -c Read-only; "
    "cat /run/secrets/c/token; stat -c '%a %u' /run/secrets/c/token"
)


def launched(marker: str) -> bool:
    """Whether a process (bwrap) mentions ``marker`` on its command line."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                return True
        except OSError:
            continue
    return False


async def main(base: Path) -> None:
    shared = base / "shared"
    async with SandboxRuntime.open(base / "run", [shared]) as runtime:
        sandbox = await runtime.prepare(Shape())
        launched_at_prepare = launched(sandbox.id)
        await sandbox.attach(shared / "home", (Mount(shared / "vol", (), "/data/v", True),))
        command = Command(
            argv=("/bin/bash", "-c", SCRIPT), env=BASE_ENV, secrets={"c/token": b"t0ken\n"}
        )
        process = await sandbox.start(command)
        out = b""
        while chunk := await process.stdout.receive():
            out += chunk
        status = await process.wait()
        process.close()
        await sandbox.close()
    slots = base / "run" / "slots"
    report = {
        "slots_left": sorted(p.name for p in slots.iterdir() if not p.name.startswith(".")),
        "launched_at_prepare": launched_at_prepare,
        "status": status,
        "out": out.decode(),
        "uid": os.getuid(),
    }
    print(json.dumps(report))


anyio.run(main, Path(sys.argv[1]))
