"""``baponi serve``: the REST API with the MCP endpoint at /mcp, on uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

from baponi_cli.manage import with_admin
from baponi_cli.options import (
    add_home,
    add_runtimes,
    add_storage_arguments,
    count,
    delays,
    delays_text,
    env_option,
    flag_from_env,
    interval,
    pool_sizes,
    port_number,
    positive_seconds,
    seconds,
    storage_settings,
)
from baponi_cli.startup import claim_home, known_failures, listen
from baponi_core._app import Core
from baponi_core._config import DEFAULT_PORT, RETRY_DELAYS_S, Settings
from baponi_core._sandbox.pool import DEFAULT_SPEC
from baponi_core._services.admin import DEFAULT_ORG
from baponi_http import IDLE_TIMEOUT_S

DEFAULTS = Settings(home=Path())


def add_command(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the HTTP server")
    add_home(serve)
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    serve.add_argument(
        "--port", type=port_number, default=DEFAULT_PORT, help="port (default: %(default)s)"
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--access-log", action="store_true", help="log every request")
    env_option(
        serve,
        "--public-url",
        "base of the signed file URLs the server hands out, e.g. https://sandbox.example",
        shown="the URL the client used",
        metavar="URL",
    )
    env_option(
        serve,
        "--shutdown-grace",
        "on SIGTERM, how long running executions may finish before they are killed",
        default=f"{DEFAULTS.shutdown_grace_s:g}",
        type=seconds,
        metavar="SECONDS",
    )
    env_option(
        serve,
        "--idle-timeout",
        "close a connection that is idle, or stalls in the middle of a request, for this long",
        default=f"{IDLE_TIMEOUT_S}",
        type=positive_seconds,
        metavar="SECONDS",
    )
    serve.add_argument(
        "--allow-private-webhooks",
        action="store_true",
        default=flag_from_env("--allow-private-webhooks"),
        help="let webhooks reach private, loopback and link-local addresses "
        "(default: refused; or $BAPONI_ALLOW_PRIVATE_WEBHOOKS=1)",
    )
    serve.add_argument(
        "--allow-private-egress",
        action="store_true",
        default=flag_from_env("--allow-private-egress"),
        help="FOR TESTS ONLY: let sandboxes whose network policy lets them out reach private, "
        "loopback and link-local addresses, this machine included "
        "(default: refused; or $BAPONI_ALLOW_PRIVATE_EGRESS=1)",
    )
    env_option(
        serve,
        "--webhook-ca-file",
        "extra certificate authorities trusted for webhook targets",
        shown="the system's only",
        metavar="PEM",
    )
    env_option(
        serve,
        "--webhook-retry-delays",
        "seconds between webhook tries; one try more than delays",
        default=delays_text(RETRY_DELAYS_S),
        type=delays,
        metavar="S,S,...",
    )
    env_option(
        serve,
        "--retention-sweep-interval",
        "seconds between two deletions of the executions past their organisation's retention "
        "(baponi orgs set NAME --retention)",
        default=f"{DEFAULTS.retention_sweep_s:g}",
        type=interval,
        metavar="SECONDS",
    )
    env_option(
        serve,
        "--pool",
        "sandboxes prepared ahead of requests, each used once, per language for each "
        "sandbox shape in use: python=N,node=N,bash=N, or a total spread over the three "
        "(python first); 0 turns the pool off (root only; see docs/performance.md)",
        default=DEFAULT_SPEC,
        type=pool_sizes,
        metavar="SPEC",
    )
    env_option(
        serve,
        "--sandboxes-per-org",
        "long-lived (OpenSandbox) sandboxes one organisation may have alive at once",
        default=f"{DEFAULTS.sandboxes_per_org}",
        type=count,
        metavar="N",
    )
    env_option(
        serve,
        "--sandboxes-per-server",
        "long-lived sandboxes alive at once on the whole server",
        default=f"{DEFAULTS.sandboxes_per_server}",
        type=count,
        metavar="N",
    )
    env_option(
        serve,
        "--sandbox-max-lifetime",
        "the longest a long-lived sandbox may live, renewals included; longer timeouts "
        "are shortened to it",
        default=f"{DEFAULTS.sandbox_max_lifetime_s:g}",
        type=positive_seconds,
        metavar="SECONDS",
    )
    env_option(
        serve,
        "--sandbox-idle-timeout",
        "end a long-lived sandbox that has had no request and run no command for this long",
        default=f"{DEFAULTS.sandbox_idle_s:g}",
        type=positive_seconds,
        metavar="SECONDS",
    )
    serve.add_argument(
        "--sandbox-paused-time-counts",
        action="store_true",
        default=flag_from_env("--sandbox-paused-time-counts"),
        help="let a paused long-lived sandbox's expiry come all the same (default: paused "
        "time is added to its lifetime; or $BAPONI_SANDBOX_PAUSED_TIME_COUNTS=1)",
    )
    add_storage_arguments(serve)
    add_runtimes(serve)
    serve.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here: the other commands start without the web stack.
    import uvicorn

    from baponi_http import BoundedHttpTools, DrainingServer, create_app
    from baponi_mcp import McpEndpoint

    settings = dataclasses.replace(
        settings,
        **storage_settings(args),
        allow_private_webhooks=args.allow_private_webhooks,
        allow_private_egress=args.allow_private_egress,
        webhook_ca_file=Path(args.webhook_ca_file) if args.webhook_ca_file else None,
        webhook_retry_delays=args.webhook_retry_delays,
        shutdown_grace_s=args.shutdown_grace,
        public_url=args.public_url,
        retention_sweep_s=args.retention_sweep_interval,
        pool=args.pool,
        sandboxes_per_org=args.sandboxes_per_org,
        sandboxes_per_server=args.sandboxes_per_server,
        sandbox_max_lifetime_s=float(args.sandbox_max_lifetime),
        sandbox_idle_s=float(args.sandbox_idle_timeout),
        sandbox_paused_time_counts=args.sandbox_paused_time_counts,
    )
    claim_home(settings.home)  # say so now, before the port is taken
    sock = listen(args.host, args.port)
    with known_failures(settings.home):
        first_key = with_admin(settings, lambda admin: admin.first_start())
    if first_key:
        print(f"First start: created organisation '{DEFAULT_ORG}' and its first API key:\n")
        print(f"    {first_key}\n")
        print("Keep it: it is shown only once. More with: baponi keys create\n", flush=True)
    logging.getLogger().setLevel(args.log_level.upper())  # ours follow --log-level too

    async def serve() -> bool:
        async with contextlib.AsyncExitStack() as stack:
            with known_failures(settings.home):
                core = await stack.enter_async_context(Core(settings))
            where = f"http://{args.host}:{args.port} (home: {settings.home})"
            print(f"Baponi listening on {where}", flush=True)
            app = create_app(settings, [McpEndpoint(settings)], core=core)
            config = uvicorn.Config(
                app,
                http=BoundedHttpTools,
                log_level=args.log_level,
                access_log=args.access_log,
                server_header=False,
                timeout_keep_alive=args.idle_timeout,
                timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 15,
            )
            server = DrainingServer(config, app)
            await server.serve([sock])
            return server.started

    # The event loop uvicorn would pick itself (uvloop where installed): the stdlib loop
    # doubled the time of a whole execution here.
    loop_factory = uvicorn.Config(app="").get_loop_factory()  # no app needed to know it
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        started = runner.run(serve())
    return 0 if started else 1
