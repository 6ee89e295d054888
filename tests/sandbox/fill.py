"""Run by test_bounds, as root and as an unprivileged user: a sandbox with small /tmp,
/dev/shm and ephemeral home, each written past its size. Prints, as one JSON document,
how each write ended: the errno and the bytes written."""

import json
import sys
from pathlib import Path

import anyio

from baponi_core._sandbox import Command, Limits, SandboxRuntime, Shape
from baponi_core._sandbox.rootfs import BASE_ENV
from baponi_core._sandbox.spec import MiB

LIMITS = Limits(tmp_bytes=8 * MiB, shm_bytes=4 * MiB, home_bytes=6 * MiB)
PROBE = """
import errno, json
def fill(path):
    written = 0
    try:
        with open(path, "wb") as f:
            while True:
                written += f.write(b"x" * (1 << 16))
                f.flush()
    except OSError as e:
        return [errno.errorcode[e.errno], written]
print(json.dumps({d: fill(f"{d}/fill") for d in ("/tmp", "/dev/shm", "/home/baponi")}))
"""


async def main(base: Path) -> None:
    (base / "shared").mkdir(exist_ok=True)
    async with SandboxRuntime.open(base / "run", [base / "shared"]) as runtime:
        sandbox = await runtime.prepare(Shape(LIMITS))
        await sandbox.attach(None)  # an ephemeral home: a tmpfs of home_bytes
        process = await sandbox.start(Command(argv=("/usr/bin/python3", "-c", PROBE), env=BASE_ENV))
        out = b""
        while chunk := await process.stdout.receive():
            out += chunk
        await process.wait()
        process.close()
        await sandbox.close()
    print(json.dumps({"root": runtime.owner is not None, "filled": json.loads(out)}))


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]))
