"""execd's bash sessions: runs that share a working directory and exported environment.

There is no shell kept running per session. Each run is a command of its own
(:class:`~baponi_core._sandboxes.commands.Commands`, so the same event stream, timeout
and interrupt), a ``bash -c`` of one constant script given the session's directory
and the command as arguments, never spliced into it: the script restores the
session's state from that directory (its ``export -p`` and a ``cd``), ``eval``s the
command, and on its exit, whatever ends it short of a kill, writes the state back and
exits with the command's status. The state lives inside the sandbox, in the sandbox's
own ``/tmp``: the server never reads it, so a process that rewrites it changes only
its own session's runs.

A run killed (its timeout, an interrupt) keeps the state of the run before it.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
from dataclasses import dataclass

from baponi_core._errors import Conflict, RateLimited
from baponi_core._sandboxes.commands import CommandRun, Commands, NewCommand
from baponi_core._sandboxes.errors import ContextNotFound, RuntimeFailure
from baponi_core._sandboxes.files import resolve
from baponi_core._sandboxes.live import Live

ROOT = "/tmp/.baponi-sessions"  # noqa: S108 (inside the sandbox: its own private /tmp)
MAX_SESSIONS = 32  # per sandbox
MESSAGE_BYTES = 300  # of what a failed set-up said, in its error

# $1 the session's directory, $2 a starting directory (may be empty).
CREATE = r"""mkdir -p -m 700 -- "$1" || exit
if [ -n "$2" ]; then mkdir -p -- "$2" && cd -- "$2" || exit; fi
printf "cd -- %q\n" "$PWD" > "$1/state"
"""

# $1 the session's directory, $2 the command, $3 this run's directory (may be empty).
# The saved state unsets what was exported before it is sourced, so that an ``unset``
# holds too. ``>|`` and ``command -p`` stand whatever ``set -C`` or PATH the command
# left behind.
RUN = r"""__baponi_dir=$1 __baponi_command=$2 __baponi_cwd=$3
set --
if [ -r "$__baponi_dir/env" ]; then
  unset $(compgen -e) 2>/dev/null
  . "$__baponi_dir/env" 2>/dev/null
fi
[ -r "$__baponi_dir/state" ] && . "$__baponi_dir/state" 2>/dev/null
if [ -n "$__baponi_cwd" ]; then cd -- "$__baponi_cwd" || exit 1; fi
trap '__baponi_status=$?
export -p >| "$__baponi_dir/env.new" &&
  command -p mv -f -- "$__baponi_dir/env.new" "$__baponi_dir/env"
printf "cd -- %q\n" "$PWD" >| "$__baponi_dir/state.new" &&
  command -p mv -f -- "$__baponi_dir/state.new" "$__baponi_dir/state"
exit "$__baponi_status"' EXIT
unset __baponi_cwd
eval "$__baponi_command"
"""


@dataclass
class Session:
    id: str
    current: CommandRun | None = None  # its run, while there is one

    @property
    def directory(self) -> str:
        return f"{ROOT}/{self.id}"

    @property
    def busy(self) -> bool:
        return self.current is not None and self.current.running


class Sessions:
    """The bash sessions of one sandbox."""

    def __init__(self, live: Live, commands: Commands) -> None:
        self.live, self.commands = live, commands
        self._sessions: dict[str, Session] = {}

    async def create(self, cwd: str | None = None) -> Session:
        """A new session, starting in ``cwd`` (made if missing) or the home. Paths are
        the sandbox's, as the files API reads them (``~``, ``$VAR``, from the home)."""
        if len(self._sessions) >= MAX_SESSIONS:
            raise RateLimited(f"this sandbox has {MAX_SESSIONS} bash sessions already", 1)
        session = Session(secrets.token_hex(16))
        start = resolve(self.live, cwd) if cwd else ""
        made = await self.live.run(("bash", "-c", CREATE, "bash", session.directory, start))
        if made.status != 0:
            said = made.stderr[-MESSAGE_BYTES:].decode(errors="replace").strip()
            raise RuntimeFailure(f"the session could not be set up: {said or made.status}")
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise ContextNotFound(f"session {session_id} not found")
        return session

    async def run(
        self, session_id: str, command: str, cwd: str | None, timeout_ms: int | None
    ) -> CommandRun:
        """Start one run; one at a time per session, since each writes its state back."""
        session = self.get(session_id)
        if session.busy:
            raise RuntimeFailure(f"session {session_id} is busy with a run")
        where = resolve(self.live, cwd) if cwd else ""
        argv = ("bash", "-c", RUN, "bash", session.directory, command, where)
        session.current = await self.commands.start(
            NewCommand(command=command, timeout_ms=timeout_ms, argv=argv)
        )
        return session.current

    async def delete(self, session_id: str) -> None:
        """Forget the session, kill its run, and remove its state (not if paused: it
        is in the sandbox's /tmp, a few bytes, and goes with the sandbox)."""
        session = self.get(session_id)
        del self._sessions[session_id]
        if session.current is not None and session.current.running:
            await session.current.process.signal(signal.SIGKILL)
        with contextlib.suppress(Conflict):
            await self.live.run(("rm", "-rf", "--", session.directory))
