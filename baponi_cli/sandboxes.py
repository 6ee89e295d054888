"""``baponi sandboxes list|kill``: the operator's view of long-lived (OpenSandbox)
sandboxes, every organisation's. A kill is asked of the server that runs the sandbox
through the database; it ends the sandbox within a second."""

from __future__ import annotations

import argparse
import datetime as dt
import time
from typing import Any

from baponi_core._config import Settings
from baponi_core._errors import NotFound
from baponi_core._records import Sandbox
from baponi_core._services.admin import Admin

EPILOG = """\
Long-lived sandboxes are made through the OpenSandbox API (/opensandbox/v1, see
docs/opensandbox.md); they end when deleted, at their expiry, after their idle
lifetime, when killed here, or when the server stops.

examples:
  baponi sandboxes list              the live ones
  baponi sandboxes list --all        the ended ones too (the newest 1,000)
  baponi sandboxes kill sbx_0123456789abcdef
"""


def add_commands(commands: Any, home: argparse.ArgumentParser) -> None:
    from baponi_cli.manage import with_admin  # manage adds these commands: imports us first

    actions = commands.add_parser(
        "sandboxes",
        help="long-lived sandboxes: list, kill",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[home], help="list every organisation's")
    listing.add_argument("--all", action="store_true", help="the ended ones too")

    def list_them(args: argparse.Namespace, settings: Settings) -> int:
        async def action(admin: Admin) -> list[str]:
            orgs = {org.id: org.name for org in await admin.store.list_orgs()}
            return [_line(s, orgs) for s in await admin.store.all_sandboxes(not args.all)]

        lines = with_admin(settings, action)
        print("\n".join(lines) if lines else "no sandboxes")
        return 0

    listing.set_defaults(run=list_them)
    kill = actions.add_parser("kill", parents=[home], help="end a live sandbox now")
    kill.add_argument("sandbox_id", metavar="ID")

    def kill_it(args: argparse.Namespace, settings: Settings) -> int:
        async def action(admin: Admin) -> Sandbox:
            found = await admin.store.request_sandbox_end(args.sandbox_id, time.time())
            if found is None:
                raise NotFound(f"no live sandbox {args.sandbox_id}")
            return found

        with_admin(settings, action)
        print(f"asked the server to end {args.sandbox_id}; it does within a second")
        return 0

    kill.set_defaults(run=kill_it)


def _line(sandbox: Sandbox, orgs: dict[str, str]) -> str:
    def when(seconds: float) -> str:
        return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")

    end = (
        f"ended {when(sandbox.ended_at)}"
        if sandbox.ended_at
        else f"expires {when(sandbox.expires_at)}"
    )
    reason = f" ({sandbox.reason})" if sandbox.reason else ""
    return (
        f"{sandbox.id}  {orgs.get(sandbox.org_id, sandbox.org_id)}  {sandbox.state.value}{reason}"
        f"  runtime={sandbox.runtime}  cpus={sandbox.cpus:g} memory={sandbox.memory_mb}M"
        f"  created {when(sandbox.created_at)}  {end}"
    )
