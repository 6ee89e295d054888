"""Run by test_disks in a mount namespace of its own (``unshare --mount``): a home being
unmounted as idle while another user asks for it. Prints one JSON document."""

import json
import os
import sys
from pathlib import Path

import anyio
import anyio.lowlevel

from baponi_core._storage.disks import Disks

SIZE = 1 << 20


def mounted(path: Path) -> bool:
    return os.path.ismount(path)


async def main(base: Path) -> None:
    home = base / "home"
    home.mkdir(mode=0o700)
    disks = Disks(owner=os.getuid())
    async with disks.hold(home, SIZE):
        (home / "kept").write_text("kept")
    seen: dict[str, object] = {}

    async def use_again() -> None:
        async with disks.hold(home, SIZE):
            await anyio.sleep(0.2)  # the retirement has finished meanwhile
            seen["mounted"] = mounted(home)
            seen["file"] = (home / "kept").read_text()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(disks.close)  # unmounts the idle home: a subprocess, awaited
        await anyio.lowlevel.checkpoint()  # let it take the home's lock first
        tasks.start_soon(use_again)
    seen["mounted_after"] = mounted(home)
    await disks.close()
    seen["mounted_at_the_end"] = mounted(home)
    print(json.dumps(seen))


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]))
