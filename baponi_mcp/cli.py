"""``baponi-mcp``: the MCP server over stdio, for Claude Desktop and other local clients.

It needs no configuration: it opens the embedded default (SQLite and storage under
--home, $BAPONI_HOME or ~/.baponi) and acts as the default organisation with its default
profile; the local user is trusted, so no API key is needed. Nothing but JSON-RPC is
written to stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from baponi_core.app import Core
from baponi_core.config import Settings
from baponi_core.errors import BaponiError, ValidationError
from baponi_core.homelock import HomeInUse
from baponi_core.sandbox import SandboxError
from baponi_core.services.admin import PROFILE_BOUNDS
from baponi_core.store import Principal
from baponi_http.app import create_files_app
from baponi_http.cli import add_storage_arguments, port_number, storage_settings
from baponi_http.server import serving
from baponi_mcp.server import LocalAccess, build_server
from baponi_mcp.stdin import RelayedStdin

log = logging.getLogger("baponi_mcp")

DESCRIPTION = """\
The Baponi MCP server over stdio: tools sandbox_execute and files_download.

State lives under --home ($BAPONI_HOME, default ~/.baponi), the same layout as
`baponi serve`'s; one server process uses a home at a time, so give each its own when
both run. Executions run as the default organisation with its default profile; the
limit options below override that profile for this process only. Download URLs of local
storage are served by this process on 127.0.0.1 (--files-port).
"""

# flag: (profile field, type, metavar, help); each also read from BAPONI_<FLAG>, e.g.
# BAPONI_MAX_TIMEOUT for --max-timeout.
LIMIT_OPTIONS: dict[str, tuple[str, type[Any], str, str]] = {
    "--cpus": ("cpus", float, "N", "CPU cores per sandbox, e.g. 0.5"),
    "--memory": ("memory_mb", int, "MIB", "memory per sandbox in MiB"),
    "--pids": ("pids", int, "N", "processes and threads per sandbox"),
    "--max-timeout": ("max_timeout", int, "SECONDS", "largest timeout a call may ask for"),
    "--tmp": ("tmp_mb", int, "MIB", "size of /tmp in MiB"),
    "--output": ("output_kb", int, "KIB", "stdout and stderr cap, KiB each"),
}


def env_name(flag: str) -> str:
    return "BAPONI_" + flag.lstrip("-").replace("-", "_").upper()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="baponi-mcp",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--home", help="state directory (default: $BAPONI_HOME or ~/.baponi)")
    top.add_argument(
        "--public-url",
        default=os.environ.get("BAPONI_PUBLIC_URL"),
        metavar="URL",
        help="base of the signed file URLs handed out, for a proxy in front of --files-port "
        "(default: $BAPONI_PUBLIC_URL, else this process's own file server on 127.0.0.1)",
    )
    top.add_argument(
        "--files-port",
        type=port_number,
        metavar="PORT",
        default=os.environ.get("BAPONI_FILES_PORT", 0),
        help="loopback port serving the signed file URLs of local storage (default: a free "
        "port chosen at start; or $BAPONI_FILES_PORT)",
    )
    add_storage_arguments(top)
    top.add_argument(
        "--max-concurrency",
        type=int,
        metavar="N",
        default=os.environ.get("BAPONI_MAX_CONCURRENCY"),
        help="executions running at once (default: the organisation's; or $BAPONI_MAX_CONCURRENCY)",
    )
    for flag, (field, kind, metavar, text) in LIMIT_OPTIONS.items():
        top.add_argument(
            flag,
            dest=field,
            type=kind,
            metavar=metavar,
            default=os.environ.get(env_name(flag)),
            help=f"{text} (default: the profile's; or ${env_name(flag)})",
        )
    top.add_argument(
        "--log-level",
        default=os.environ.get("BAPONI_LOG_LEVEL", "warning"),
        choices=["debug", "info", "warning", "error"],
        help="logging on stderr (default: warning, or $BAPONI_LOG_LEVEL)",
    )
    return top


def limits_of(args: argparse.Namespace) -> dict[str, Any]:
    """The profile limits given on the command line or in the environment, checked."""
    limits = {}
    for field, *_ in LIMIT_OPTIONS.values():
        value = getattr(args, field)
        if value is None:
            continue
        low, high = PROFILE_BOUNDS[field]
        if not low <= value <= high:
            raise ValidationError(f"{field} must be between {low:g} and {high:g}")
        limits[field] = value
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ValidationError("max concurrency must be at least 1")
    return limits


def with_limits(
    principal: Principal, limits: dict[str, Any], max_concurrency: int | None
) -> Principal:
    """``principal`` with its limits overridden for this process (nothing is stored)."""
    org = principal.org
    if max_concurrency is not None:
        org = dataclasses.replace(org, max_concurrency=max_concurrency)
    profile = dataclasses.replace(principal.profile, **limits)
    return dataclasses.replace(principal, org=org, profile=profile)


async def serve(args: argparse.Namespace, settings: Settings, limits: dict[str, Any]) -> None:
    async with Core(settings) as core, anyio.create_task_group() as tasks:
        stdin = RelayedStdin()
        tasks.start_soon(_end_on_signal, stdin)
        principal = with_limits(await core.admin.local_principal(), limits, args.max_concurrency)
        async with _file_server(core, args.files_port) as files_url:
            log.info("serving MCP on stdio (home: %s, files: %s)", settings.home, files_url)
            # Running calls are cancelled when stdin ends (the client closed it, or a signal
            # came): their sandboxes are killed before the core closes.
            await build_server(LocalAccess(core, principal, files_url)).run_stdio_async()
        tasks.cancel_scope.cancel()


@asynccontextmanager
async def _file_server(core: Core, port: int) -> AsyncIterator[str]:
    """The signed-file routes on loopback, when storage is local (a home has one server
    process, so no `baponi serve` can answer them). Cloud URLs are the provider's own."""
    if not core.files.serves_urls:
        yield f"http://127.0.0.1:{port}"  # never in a URL: nothing is signed locally
        return
    async with serving(create_files_app(core), "127.0.0.1", port) as url:
        yield url


async def _end_on_signal(stdin: RelayedStdin) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            log.info("signal received: ending the session")
            stdin.end()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        limits = limits_of(args)
        # No grace at shutdown: when the client is gone, nobody waits for a result.
        settings = Settings.at(
            args.home,
            public_url=args.public_url,
            shutdown_grace_s=0.0,
            **storage_settings(args),
        )
        anyio.run(serve, args, settings, limits)
    except BaponiError as exc:
        print(f"baponi-mcp: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, SandboxError, HomeInUse) as exc:  # e.g. no bubblewrap, home in use
        print(f"baponi-mcp: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
