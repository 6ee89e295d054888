"""The pool: sandboxes prepared ahead of their requests, each handed out once.

For every shape requests have used lately (``Shape`` is the key, whole: limits, and
whatever else a sandbox is before its request) and every language, the pool keeps up to
its size of sandboxes set up with :meth:`SandboxRuntime.prepare` (``ahead``: namespaces,
root, seccomp, cgroup joined, init ready), Python's with its interpreter already started
and waiting (:mod:`warm`). :meth:`Pool.take` hands one out, or None, and the caller
takes the cold path: start-up and refilling never make a request wait. A sandbox taken
is the taker's to close; nothing is ever given back.

Before hand-out each sandbox is checked: younger than ``max_age_s``, its init alive and
listened to, its waiting interpreter still blocked reading its stdin, its cgroup holding
exactly the processes it held when it was prepared. One that fails is discarded (closed), never
repaired. Refills run in the background one at a time, each sandbox at the least CPU
share (``cpu.shares`` 2, ``cpu.weight`` 1) until it is handed out, so that preparing
takes only the CPU requests leave idle. A shape no request has used for ``SHAPE_IDLE_S`` is
forgotten and its sandboxes closed; so is the least recent one beyond ``MAX_SHAPES``.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio

from baponi_core._sandbox import warm
from baponi_core._sandbox.handle import SETUP_TIMEOUT_S, Process, Sandbox, SandboxError
from baponi_core._sandbox.runtime import SandboxRuntime
from baponi_core._sandbox.spec import Shape

log = logging.getLogger(__name__)

LANGUAGES = ("python", "node", "bash")
DEFAULT_SPEC = "python=2,node=1,bash=1"
MAX_AGE_S = 300.0  # a prepared sandbox older than this is replaced
SHAPE_IDLE_S = 600.0  # a shape unused this long is forgotten
MAX_SHAPES = 4  # shapes kept prepared at once, the most recently used
RETRY_S = 5.0  # after a failed preparation
STARTED_POLL_S = 0.005  # how often a starting interpreter is looked at
# How often what is kept is looked over (cgroup and /proc reads, on the event loop): not
# at every hand-out, which wakes the refill; each is looked at again when it is taken.
SWEEP_S = 1.0
_ITEM = re.compile(r"^(python|node|bash)=(\d{1,3})$")


@dataclass(frozen=True)
class PoolSizes:
    """How many prepared sandboxes to keep, per language, for each shape in use."""

    per_language: Mapping[str, int]

    @classmethod
    def parse(cls, spec: str) -> PoolSizes:
        """``python=2,node=1,bash=1`` (a language left out: none), or a total spread
        over the languages in that order (``4``: 2, 1, 1), ``0``: no pool. ValueError
        when it is neither."""
        spec = spec.strip()
        if spec.isdigit():
            total = int(spec)
            if total > 999:
                raise ValueError("a pool of at most 999 sandboxes")
            return cls(
                {
                    lang: (total + len(LANGUAGES) - 1 - i) // len(LANGUAGES)
                    for i, lang in enumerate(LANGUAGES)
                }
            )
        sizes: dict[str, int] = {}
        for item in spec.split(","):
            found = _ITEM.match(item.strip())
            if found is None or found[1] in sizes:
                raise ValueError(
                    f"{item.strip()!r}: expected LANGUAGE=N (python, node, bash) or a total"
                )
            sizes[found[1]] = int(found[2])
        return cls({lang: sizes.get(lang, 0) for lang in LANGUAGES})

    @property
    def total(self) -> int:
        return sum(self.per_language.values())

    def __str__(self) -> str:
        return ",".join(f"{lang}={n}" for lang, n in self.per_language.items())


@dataclass
class Prepared:
    """A sandbox handed out: launched, not attached; ``waiting`` its interpreter."""

    sandbox: Sandbox
    waiting: Process | None
    made: float = field(default_factory=time.monotonic)
    members: frozenset[int] | None = None  # its cgroup's processes, as left

    def fresh(self, max_age_s: float) -> bool:
        if time.monotonic() - self.made > max_age_s:
            return False
        if self.waiting is not None:
            pid = self.sandbox.host_pid(self.waiting)
            if self.waiting.status is not None or pid is None or not warm.reading_stdin(pid):
                return False  # it has ended, or is ending, or does something
        return self.sandbox.intact(self.members)


Key = tuple[Shape, str]


async def _started(sandbox: Sandbox, waiting: Process) -> None:
    """Wait until the interpreter has started and waits for its program; SandboxError
    if it does not within the set-up time."""
    with anyio.move_on_after(SETUP_TIMEOUT_S):
        while waiting.status is None:
            pid = sandbox.host_pid(waiting)
            if pid is not None and warm.reading_stdin(pid):
                return
            await anyio.sleep(STARTED_POLL_S)
    raise SandboxError("the interpreter did not start")


class Pool:
    """Prepared sandboxes for one runtime; :meth:`run` keeps it filled."""

    def __init__(
        self, runtime: SandboxRuntime, sizes: PoolSizes, max_age_s: float = MAX_AGE_S
    ) -> None:
        self.runtime = runtime
        self.sizes = sizes
        self.max_age_s = max_age_s
        self._ready: dict[Key, list[Prepared]] = {}
        self._shapes: OrderedDict[Shape, float] = OrderedDict()  # last use, most recent last
        self._wake = anyio.Event()
        self._swept = -SWEEP_S  # when what is kept was last looked over
        self._unswept = False  # a look over was put off (too soon after the last)
        self._closed = False
        self.discarded = 0  # found stale or disturbed at hand-out or while kept

    @property
    def enabled(self) -> bool:
        return self.sizes.total > 0 and self.runtime.prepares_ahead

    def want(self, shape: Shape) -> None:
        """Keep sandboxes of ``shape`` prepared (a request used it, or will)."""
        if not self.enabled or self._closed:
            return
        self._shapes[shape] = time.monotonic()
        self._shapes.move_to_end(shape)
        self._wake.set()

    def take(self, shape: Shape, language: str) -> Prepared | None:
        """A prepared sandbox of ``shape`` for ``language``, now, or None (the cold
        path). The one handed out is the caller's to close."""
        self.want(shape)
        kept = self._ready.get((shape, language), [])
        while kept:
            prepared = kept.pop(0)
            if prepared.fresh(self.max_age_s):
                prepared.sandbox.foreground()
                return prepared
            self._discard(prepared)
        return None

    def kept(self) -> list[Prepared]:
        """What it holds now, of every shape and language."""
        return [prepared for ready in self._ready.values() for prepared in ready]

    def count(self, shape: Shape, language: str) -> int:
        return len(self._ready.get((shape, language), []))

    async def run(self) -> None:
        """Refill, forever: one sandbox at a time, for whichever key lacks one most."""
        while not self._closed:
            self._sweep()
            key = self._next()
            if key is None:
                with anyio.move_on_after(self._next_check()):
                    await self._wake.wait()
                self._wake = anyio.Event()
                continue
            try:
                prepared = await self._prepare(*key)
            except SandboxError as exc:
                log.warning("could not prepare a sandbox for the pool: %s", exc)
                await anyio.sleep(RETRY_S)
                continue
            if self._closed or key[0] not in self._shapes:
                await _end(prepared, wait=False)
            else:
                self._ready.setdefault(key, []).append(prepared)

    async def close(self) -> None:
        """End every sandbox kept: no process, cgroup, mount or uid of them is left."""
        self._closed = True
        self._wake.set()
        kept = self.kept()
        self._ready.clear()
        for prepared in kept:
            await _end(prepared)

    async def _prepare(self, shape: Shape, language: str) -> Prepared:
        sandbox = await self.runtime.prepare(shape, ahead=True, background=True)
        waiting = None
        try:
            command = warm.command(language, shape)
            if command is not None:
                waiting = await sandbox.start(command, early=True)
                await _started(sandbox, waiting)
                for name in command.files:  # read by now
                    sandbox.forget(name)
            return Prepared(sandbox, waiting, members=sandbox.members())
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _end(Prepared(sandbox, waiting), wait=False)
            raise

    def _next(self) -> Key | None:
        """The key furthest below its size, most recent shapes first."""
        best: tuple[int, Key] | None = None
        for shape in reversed(self._shapes):
            for language, size in self.sizes.per_language.items():
                lack = size - self.count(shape, language)
                if lack > 0 and (best is None or lack > best[0]):
                    best = (lack, (shape, language))
        return None if best is None else best[1]

    def _sweep(self) -> None:
        """Forget idle shapes (and shapes beyond the most recent few); discard what has
        grown old or was disturbed while it waited (that, at most every SWEEP_S)."""
        now = time.monotonic()
        looked_over = now - self._swept >= SWEEP_S
        self._unswept = not looked_over
        if looked_over:
            self._swept = now
        while self._shapes and (
            len(self._shapes) > MAX_SHAPES or now - next(iter(self._shapes.values())) > SHAPE_IDLE_S
        ):
            self._shapes.popitem(last=False)
        for key in list(self._ready):
            kept = self._ready[key]
            if key[0] not in self._shapes:
                del self._ready[key]
                for prepared in kept:
                    self._close(prepared)
                continue
            for prepared in [p for p in kept if looked_over and not p.fresh(self.max_age_s)]:
                kept.remove(prepared)
                self._discard(prepared)

    def _next_check(self) -> float:
        """How long the loop may sleep before something kept grows too old, or a look
        over that was put off is due."""
        now = time.monotonic()
        made = [p.made for ready in self._ready.values() for p in ready]
        due = [min(made) + self.max_age_s] if made else [now + SHAPE_IDLE_S]
        if self._unswept:
            due.append(self._swept + SWEEP_S)
        return max(0.1, min(due) - now)

    def _discard(self, prepared: Prepared) -> None:
        self.discarded += 1
        self._close(prepared)
        self._wake.set()

    def _close(self, prepared: Prepared) -> None:
        if prepared.waiting is not None:
            prepared.waiting.close()
        self.runtime.close_later(prepared.sandbox)


async def _end(prepared: Prepared, wait: bool = True) -> None:
    """Close a sandbox never handed out, and our ends of its waiting interpreter's pipes."""
    if prepared.waiting is not None:
        prepared.waiting.close()
    await prepared.sandbox.close(wait=wait)
