"""A real long-lived sandbox for core-level tests of the execd operations: the default
runtime image in a bubblewrap sandbox of this test process's own runtime (on a thread of
its own, as tests/sandbox's), kept open as a ``Live``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio.from_thread

from baponi_core._records import SandboxState
from baponi_core._runtimes import Runtimes
from baponi_core._sandbox import Shape
from baponi_core._sandbox.spec import Limits, MiB
from baponi_core._sandboxes.live import Completed, Live
from tests.harness import runtime_on_a_thread, shared_runtimes, unique
from tests.store.test_contract import sandbox

T = TypeVar("T")
LIMITS = Limits(cpus=0.5, memory_bytes=512 * MiB, file_size_bytes=256 * MiB)
ENV = {"GREETING": "hi there", "WHERE": "some dir"}


@dataclass
class Sandboxes:
    portal: anyio.from_thread.BlockingPortal
    make: Callable[[], Live]

    def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kw: Any) -> T:
        async def go() -> T:
            return await fn(*args, **kw)

        return self.portal.call(go)

    def sh(self, live: Live, script: str, *args: str) -> Completed:
        """``script`` run by the sandbox's own code (its user, its view)."""
        return self.call(live.run, ["sh", "-c", script, "sh", *args])


def live_sandboxes(root: Path) -> Iterator[Sandboxes]:
    with runtime_on_a_thread(root / "run", []) as (portal, runtime):
        image = Runtimes(shared_runtimes()).get("default")

        async def make() -> Live:
            handle = await runtime.prepare(Shape(LIMITS, image, freezable=True))
            await handle.attach(None)
            record = dataclasses.replace(
                sandbox("org_test", unique("sbx")), state=SandboxState.RUNNING, env=ENV
            )
            return Live(record, handle)

        yield Sandboxes(portal, lambda: portal.call(make))
