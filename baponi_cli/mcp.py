"""``baponi-mcp``: the MCP server over stdio, for Claude Desktop and other local clients.

It needs no configuration: it opens the embedded default (SQLite and storage under
--home, $BAPONI_HOME or ~/.baponi) and acts as the default organisation with its default
profile; the local user is trusted, so no API key is needed. Nothing but JSON-RPC is
written to stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio

from baponi_cli import logs
from baponi_cli.options import (
    add_home,
    add_profile_options,
    add_runtimes,
    add_storage_arguments,
    env_option,
    port_number,
    profile_limits,
    runtimes_dir,
    storage_settings,
)
from baponi_core._app import Core
from baponi_core._config import Settings
from baponi_core._errors import BaponiError, CannotStart
from baponi_core._sandbox import SandboxError
from baponi_core._services.admin import check_limits
from baponi_mcp import serve_stdio

DESCRIPTION = """\
The Baponi MCP server over stdio: tools sandbox_execute and files_download.

State lives under --home ($BAPONI_HOME, default ~/.baponi), the same layout as
`baponi serve`'s; one server process uses a home at a time, so give each its own when
both run. Executions run as the default organisation with its default profile; the
limit options below override that profile for this process only. Download URLs of local
storage are served by this process on 127.0.0.1 (--files-port).
"""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="baponi-mcp",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_home(top)
    env_option(
        top,
        "--public-url",
        "base of the signed file URLs handed out, for a proxy in front of --files-port",
        shown="this process's own file server on 127.0.0.1",
        metavar="URL",
    )
    env_option(
        top,
        "--files-port",
        "loopback port serving the signed file URLs of local storage",
        default="0",
        shown="a free port chosen at start",
        type=port_number,
        metavar="PORT",
    )
    add_storage_arguments(top)
    add_runtimes(top)
    env_option(
        top,
        "--max-concurrency",
        "executions running at once",
        shown="the organisation's",
        type=int,
        metavar="N",
    )
    add_profile_options(top, default="the profile's", env=True)
    env_option(
        top,
        "--log-level",
        "logging on stderr",
        default="warning",
        choices=["debug", "info", "warning", "error"],
    )
    return top


async def serve(args: argparse.Namespace, settings: Settings, limits: dict[str, Any]) -> None:
    async with Core(settings) as core:
        principal = await core.admin.local_principal(limits, args.max_concurrency)
        await serve_stdio(core, principal, args.files_port)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.configure(args.log_level, "%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        limits = profile_limits(args)
        check_limits(limits, args.max_concurrency)  # before anything starts
        # No grace at shutdown: when the client is gone, nobody waits for a result.
        settings = Settings.at(
            args.home,
            public_url=args.public_url,
            shutdown_grace_s=0.0,
            runtimes_dir=runtimes_dir(args),
            **storage_settings(args),
        )
        anyio.run(serve, args, settings, limits)
    except BaponiError as exc:
        print(f"baponi-mcp: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, SandboxError, CannotStart) as exc:  # no bubblewrap, home in use, bad db
        print(f"baponi-mcp: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
