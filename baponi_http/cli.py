"""``baponi``: run the server and manage organisations, sandbox profiles, API keys,
volumes and storage connections."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from baponi_core.config import DEFAULT_PORT, RETRY_DELAYS_S, Settings
from baponi_core.errors import BaponiError
from baponi_core.homelock import HomeInUse, lock_home
from baponi_core.services.admin import DEFAULT_ORG, DEFAULT_PROFILE, Admin
from baponi_core.store.sqlite import SqliteStore

DESCRIPTION = """\
Baponi, self-hosted: a sandbox for AI agents' code that speaks Baponi's API.

State (SQLite database, thread homes) lives under --home, or $BAPONI_HOME,
or ~/.baponi. Each API key belongs to an organisation and is bound to a
sandbox profile, which sets the resources of every execution made with it,
and to volumes and storage connections, mounted at /data/<slug>/ in every
execution made with it.
"""

EPILOG = """\
examples:
  baponi serve                                 start on 127.0.0.1:8080
  baponi keys create --org acme --name ci      print a new key for acme
  baponi orgs create acme --max-concurrency 5
  baponi profiles set small --org acme --cpus 0.5 --memory 256 --max-timeout 60
  baponi keys create --org acme --profile small
  baponi volumes create reports --org acme
  baponi connections create lake --org acme --url s3://my-bucket/data \\
      --option-from-env key=AWS_ACCESS_KEY_ID --option-from-env secret=AWS_SECRET_ACCESS_KEY
  baponi keys create --org acme --volume reports --connection lake
"""

VOLUMES_EPILOG = """\
A managed volume keeps its files on this server's disk (under --home). Each
key bound to it (baponi keys create --volume SLUG) sees it at /data/<slug>/ in
every execution, read-only when the volume is. Volumes and storage connections
share one set of slugs per organisation.

examples:
  baponi volumes create reports --org acme
  baponi volumes create reference --read-only --org acme
  baponi keys create --org acme --volume reports --volume reference
  baponi volumes list --org acme
  baponi volumes delete reports --org acme     unbinds it; the server removes its files
"""

CONNECTIONS_EPILOG = """\
A storage connection is a bucket of your own (s3://, gs://, gcs://, az:// or
abfs://), mounted like a volume at /data/<slug>/ in the executions of the keys
bound to it (baponi keys create --connection SLUG). Its credentials are fsspec
storage options kept in the server's database; sandboxed code never sees them,
and listings show only their names. Use --option-from-env for secrets, so that
they appear neither in the process list nor in shell history.

examples:
  baponi connections create lake --org acme --url s3://my-bucket/data \\
      --option-from-env key=AWS_ACCESS_KEY_ID \\
      --option-from-env secret=AWS_SECRET_ACCESS_KEY \\
      --option endpoint_url=https://s3.eu-west-1.amazonaws.com
  baponi connections create archive --read-only --url gs://acme-archive \\
      --option-from-env token=GOOGLE_APPLICATION_CREDENTIALS
  baponi keys create --org acme --connection lake
  baponi connections list --org acme
"""


async def _with_admin(settings: Settings, action: Callable[[Admin], Awaitable[Any]]) -> Any:
    store = SqliteStore(settings.database)
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    await store.open()
    try:
        admin = Admin(store)
        await admin.ensure_default_org()
        return await action(admin)
    finally:
        await store.close()


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from baponi_http.app import create_app
    from baponi_http.server import DrainingServer

    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(lock_home(settings.home))  # say so now, before the port is taken
    settings = dataclasses.replace(
        settings,
        **storage_settings(args),
        allow_private_webhooks=args.allow_private_webhooks,
        webhook_ca_file=Path(args.webhook_ca_file) if args.webhook_ca_file else None,
        webhook_retry_delays=args.webhook_retry_delays,
        shutdown_grace_s=args.shutdown_grace,
        public_url=args.public_url,
    )
    first_key = asyncio.run(_with_admin(settings, lambda admin: admin.first_start()))
    if first_key:
        print(f"First start: created organisation '{DEFAULT_ORG}' and its first API key:\n")
        print(f"    {first_key}\n")
        print("Keep it: it is shown only once. More with: baponi keys create\n", flush=True)
    print(f"Baponi listening on http://{args.host}:{args.port} (home: {settings.home})", flush=True)
    logging.getLogger().setLevel(args.log_level.upper())  # ours follow --log-level too
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 15,
    )
    DrainingServer(config, app).run()
    return 0


def _keys_create(args: argparse.Namespace, settings: Settings) -> int:
    async def action(admin: Admin) -> str:
        _, secret = await admin.create_key(
            args.org, args.name, args.profile, args.volumes, args.connections
        )
        return secret

    print(asyncio.run(_with_admin(settings, action)))
    return 0


def _keys_list(args: argparse.Namespace, settings: Settings) -> int:
    async def action(admin: Admin) -> list[str]:
        org = await admin.org(args.org)
        profiles = {p.id: p.name for p in await admin.store.list_profiles(org.id)}
        bound = await admin.store.key_volumes(org.id)
        connections = {v.slug for v in await admin.store.list_volumes(org.id) if v.url}
        return [
            f"{k.id}  {k.prefix}...  {k.name}  profile={profiles.get(k.profile_id, '?')}"
            + _bindings(bound.get(k.id, []), connections)
            + ("  (revoked)" if k.revoked_at else "")
            for k in await admin.store.list_keys(org.id)
        ]

    print("\n".join(asyncio.run(_with_admin(settings, action))))
    return 0


def _bindings(slugs: list[str], connections: set[str]) -> str:
    text = ""
    for label, chosen in (
        ("volumes", [s for s in slugs if s not in connections]),
        ("connections", [s for s in slugs if s in connections]),
    ):
        if chosen:
            text += f"  {label}={','.join(chosen)}"
    return text


def _volumes_create(args: argparse.Namespace, settings: Settings) -> int:
    volume = asyncio.run(
        _with_admin(
            settings, lambda admin: admin.create_volume(args.org, args.slug, args.read_only)
        )
    )
    print(f"created volume {volume.slug} ({volume.id}), {_mode(volume.read_only)}")
    return 0


def _connections_create(args: argparse.Namespace, settings: Settings) -> int:
    options = dict(args.options)
    for name, variable in args.env_options:
        if variable not in os.environ:
            raise SystemExit(f"baponi: environment variable {variable} is not set")
        options[name] = os.environ[variable]
    volume = asyncio.run(
        _with_admin(
            settings,
            lambda admin: admin.create_volume(
                args.org, args.slug, args.read_only, url=args.url, options=options
            ),
        )
    )
    print(
        f"created storage connection {volume.slug} ({volume.id}) to {volume.url}, "
        f"{_mode(volume.read_only)}"
    )
    return 0


def _volumes_list(args: argparse.Namespace, settings: Settings) -> int:
    connections = args.command == "connections"
    volumes = asyncio.run(_with_admin(settings, lambda admin: admin.list_volumes(args.org)))
    print("\n".join(_describe_volume(v) for v in volumes if v.is_connection == connections))
    return 0


def _volumes_delete(args: argparse.Namespace, settings: Settings) -> int:
    connection = args.command == "connections"
    asyncio.run(
        _with_admin(settings, lambda admin: admin.delete_volume(args.org, args.slug, connection))
    )
    kind = "storage connection" if connection else "volume"
    what = "its cached copy goes" if connection else "its files go"
    print(f"deleted {kind} {args.slug}")
    print(f"({what} at the server's next sweep: at its start, then every 10 minutes)")
    return 0


def _mode(read_only: bool) -> str:
    return "read-only" if read_only else "read-write"


def _describe_volume(v: Any) -> str:
    text = f"{v.slug}  {v.id}  {_mode(v.read_only)}"
    if v.is_connection:  # option names only: their values are credentials
        text += f"  {v.url}  options={','.join(sorted(v.options)) or '-'}"
    return text


def _option(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    asyncio.run(_with_admin(settings, lambda admin: admin.revoke_key(args.org, args.key_id)))
    print(f"revoked {args.key_id}")
    return 0


def _orgs_create(args: argparse.Namespace, settings: Settings) -> int:
    org = asyncio.run(
        _with_admin(settings, lambda admin: admin.create_org(args.name, args.max_concurrency))
    )
    print(f"created organisation {org.name} ({org.id}), max concurrency {org.max_concurrency}")
    return 0


def _orgs_set(args: argparse.Namespace, settings: Settings) -> int:
    org = asyncio.run(
        _with_admin(
            settings, lambda admin: admin.set_max_concurrency(args.name, args.max_concurrency)
        )
    )
    print(f"organisation {org.name}: max concurrency {org.max_concurrency}")
    return 0


def _orgs_webhook_secret(args: argparse.Namespace, settings: Settings) -> int:
    print(
        asyncio.run(
            _with_admin(settings, lambda admin: admin.webhook_secret(args.name, args.rotate))
        )
    )
    return 0


def _signing_rotate(args: argparse.Namespace, settings: Settings) -> int:
    from baponi_core.storage.signing import UrlSigner

    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    kid = UrlSigner.rotate(settings.signing_keys)
    print(f"signing with new key {kid}; URLs signed before stay valid until they expire")
    return 0


def _orgs_list(args: argparse.Namespace, settings: Settings) -> int:
    orgs = asyncio.run(_with_admin(settings, lambda admin: admin.store.list_orgs()))
    print("\n".join(f"{o.name}  {o.id}  max_concurrency={o.max_concurrency}" for o in orgs))
    return 0


PROFILE_OPTIONS = {  # flag: (profile field, type, help)
    "--cpus": ("cpus", float, "CPU cores (cgroup quota), e.g. 0.5"),
    "--memory": ("memory_mb", int, "memory in MiB, /tmp and an ephemeral home included"),
    "--pids": ("pids", int, "processes and threads at once"),
    "--max-timeout": ("max_timeout", int, "largest timeout a request may ask for, seconds"),
    "--tmp": ("tmp_mb", int, "size of /tmp in MiB"),
    "--output": ("output_kb", int, "stdout and stderr cap, KiB each"),
}


def _profiles_set(args: argparse.Namespace, settings: Settings) -> int:
    limits = {
        field: getattr(args, field)
        for field, _, _ in PROFILE_OPTIONS.values()
        if getattr(args, field) is not None
    }
    profile = asyncio.run(
        _with_admin(settings, lambda admin: admin.save_profile(args.org, args.name, **limits))
    )
    print(_describe_profile(profile))
    return 0


def _profiles_list(args: argparse.Namespace, settings: Settings) -> int:
    async def action(admin: Admin) -> list[Any]:
        return await admin.store.list_profiles((await admin.org(args.org)).id)

    print("\n".join(_describe_profile(p) for p in asyncio.run(_with_admin(settings, action))))
    return 0


def _describe_profile(p: Any) -> str:
    return (
        f"{p.name}: cpus={p.cpus:g} memory={p.memory_mb}MiB pids={p.pids} "
        f"max_timeout={p.max_timeout}s tmp={p.tmp_mb}MiB output={p.output_kb}KiB"
    )


def _flag_from_env(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise SystemExit(f"baponi: {name} must be 1/true/yes/on or 0/false/no/off, not {value!r}")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError("must be between 0 and 86400 seconds")
    return value


def _delays(text: str) -> tuple[float, ...]:
    return tuple(_seconds(part) for part in text.split(","))


def _size(text: str) -> int:
    """Bytes, with an optional K, M, G or T suffix (powers of 1024)."""
    number, unit = text[:-1], text[-1:].upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(unit)
    if scale is None:
        number, scale = text, 1
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 10G, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 bytes")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a JSON object") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def port_number(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """Where thread homes and volumes live; shared by ``baponi serve`` and ``baponi-mcp``."""
    parser.add_argument(
        "--storage",
        default=os.environ.get("BAPONI_STORAGE"),
        metavar="URL",
        help="where thread homes and volumes live: a directory, or s3://bucket/prefix, "
        "gs://bucket/prefix, az://container/prefix (default: --home; or $BAPONI_STORAGE)",
    )
    parser.add_argument(
        "--storage-options",
        type=_json_object,
        default=os.environ.get("BAPONI_STORAGE_OPTIONS", "{}"),
        metavar="JSON",
        help="fsspec options of a cloud --storage, e.g. credentials or an endpoint_url "
        "(default: the provider's usual environment variables; or $BAPONI_STORAGE_OPTIONS)",
    )
    parser.add_argument(
        "--thread-quota",
        type=_size,
        default=os.environ.get("BAPONI_THREAD_QUOTA", "10G"),
        metavar="SIZE",
        help="bytes one thread home may hold, e.g. 500M or 10G; an execution growing it "
        "further is stopped, an upload beyond it refused (default: 10G; or $BAPONI_THREAD_QUOTA)",
    )


def storage_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "storage_url": args.storage,
        "storage_options": args.storage_options,
        "thread_quota_bytes": args.thread_quota,
    }


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="baponi",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument("--home", help="state directory (default: $BAPONI_HOME or ~/.baponi)")
    org = argparse.ArgumentParser(add_help=False)
    org.add_argument("--org", default=DEFAULT_ORG, help=f"organisation (default: {DEFAULT_ORG})")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[home], help="run the HTTP server")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    serve.add_argument(
        "--port", type=port_number, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})"
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument(
        "--public-url",
        default=os.environ.get("BAPONI_PUBLIC_URL"),
        metavar="URL",
        help="base of the signed file URLs the server hands out, e.g. https://sandbox.example "
        "(default: the URL the client used; or $BAPONI_PUBLIC_URL)",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=_seconds,
        default=os.environ.get("BAPONI_SHUTDOWN_GRACE", "30"),
        metavar="SECONDS",
        help="on SIGTERM, how long running executions may finish before they are killed "
        "(default: 30, or $BAPONI_SHUTDOWN_GRACE)",
    )
    serve.add_argument(
        "--allow-private-webhooks",
        action="store_true",
        default=_flag_from_env("BAPONI_ALLOW_PRIVATE_WEBHOOKS"),
        help="let webhooks reach private, loopback and link-local addresses "
        "(default: refused; or $BAPONI_ALLOW_PRIVATE_WEBHOOKS=1)",
    )
    serve.add_argument(
        "--webhook-ca-file",
        default=os.environ.get("BAPONI_WEBHOOK_CA_FILE"),
        metavar="PEM",
        help="extra certificate authorities trusted for webhook targets "
        "(or $BAPONI_WEBHOOK_CA_FILE)",
    )
    serve.add_argument(
        "--webhook-retry-delays",
        type=_delays,
        default=os.environ.get(
            "BAPONI_WEBHOOK_RETRY_DELAYS", ",".join(f"{d:g}" for d in RETRY_DELAYS_S)
        ),
        metavar="S,S,...",
        help="seconds between webhook tries; one try more than delays "
        "(default: 5,30,120,600,1800, or $BAPONI_WEBHOOK_RETRY_DELAYS)",
    )
    add_storage_arguments(serve)
    serve.set_defaults(run=_serve)

    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser(
        "create", parents=[home, org], help="create a key; prints it alone on stdout"
    )
    create.add_argument("--name", default="default", help="a label for the key")
    create.add_argument(
        "--profile", default=DEFAULT_PROFILE, help="sandbox profile the key is bound to"
    )
    create.add_argument(
        "--volume",
        dest="volumes",
        action="append",
        default=[],
        metavar="SLUG",
        help="mount this volume at /data/<slug>/ in the key's executions (repeatable)",
    )
    create.add_argument(
        "--connection",
        dest="connections",
        action="append",
        default=[],
        metavar="SLUG",
        help="mount this storage connection at /data/<slug>/ likewise (repeatable)",
    )
    create.set_defaults(run=_keys_create)
    keys.add_parser(
        "list", parents=[home, org], help="list keys (never their secrets)"
    ).set_defaults(run=_keys_list)
    revoke = keys.add_parser("revoke", parents=[home, org], help="revoke a key by id")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_keys_revoke)

    orgs = commands.add_parser("orgs", help="organisations").add_subparsers(
        dest="action", required=True
    )
    for name, run, text in (
        ("create", _orgs_create, "create an organisation"),
        ("set", _orgs_set, "change an organisation's limits"),
    ):
        sub = orgs.add_parser(name, parents=[home], help=text)
        sub.add_argument("name")
        sub.add_argument(
            "--max-concurrency",
            type=int,
            default=8 if name == "create" else None,
            required=name == "set",
            help="executions running at once (default: 8)",
        )
        sub.set_defaults(run=run)
    orgs.add_parser("list", parents=[home], help="list organisations").set_defaults(run=_orgs_list)
    secret = orgs.add_parser(
        "webhook-secret",
        parents=[home],
        help="print the secret webhooks are signed with",
        description="Receivers check the Baponi-Signature header (t=<unix>,v1=<hex>): the "
        'HMAC-SHA256 of "<t>.<body>" keyed with this secret.',
    )
    secret.add_argument("name", nargs="?", default=DEFAULT_ORG)
    secret.add_argument("--rotate", action="store_true", help="replace it with a new secret")
    secret.set_defaults(run=_orgs_webhook_secret)

    signing = commands.add_parser(
        "signing-keys", help="keys of the signed file URLs"
    ).add_subparsers(dest="action", required=True)
    signing.add_parser(
        "rotate",
        parents=[home],
        help="add a new key to sign with; older keys keep verifying until their URLs expire",
    ).set_defaults(run=_signing_rotate)

    _volume_commands(commands, home, org)

    profiles = commands.add_parser(
        "profiles", help="sandbox profiles (resource limits)"
    ).add_subparsers(dest="action", required=True)
    prof_set = profiles.add_parser(
        "set",
        parents=[home, org],
        help="create a profile or change its limits",
        description="Unset limits keep their current value (or the default: 1 CPU, 1024 MiB, "
        "256 pids, 3600 s max timeout, 256 MiB /tmp, 1024 KiB output per stream).",
    )
    prof_set.add_argument("name")
    for flag, (field, kind, text) in PROFILE_OPTIONS.items():
        prof_set.add_argument(flag, dest=field, type=kind, help=text)
    prof_set.set_defaults(run=_profiles_set)
    profiles.add_parser("list", parents=[home, org], help="list profiles").set_defaults(
        run=_profiles_list
    )
    return top


def _volume_commands(
    commands: Any, home: argparse.ArgumentParser, org: argparse.ArgumentParser
) -> None:
    """``volumes`` and ``connections``: create, list, delete."""
    for group, text, epilog in (
        ("volumes", "volumes on this server, mounted at /data/<slug>/", VOLUMES_EPILOG),
        ("connections", "storage connections: your own buckets", CONNECTIONS_EPILOG),
    ):
        kind = "storage connection" if group == "connections" else "volume"
        actions = commands.add_parser(
            group,
            help=text,
            description=text[0].upper() + text[1:] + ".",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        ).add_subparsers(dest="action", required=True)
        create = actions.add_parser(
            "create",
            parents=[home, org],
            help=f"create a {kind}",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        create.add_argument("slug", help="1-63 of a-z, 0-9 and '-': the directory /data/<slug>/")
        create.add_argument(
            "--read-only", action="store_true", help="sandboxes may read it, never write it"
        )
        if group == "connections":
            create.add_argument(
                "--url",
                required=True,
                help="s3://BUCKET[/PREFIX], gs://..., gcs://, az://, abfs://",
            )
            create.add_argument(
                "--option",
                dest="options",
                type=_option,
                action="append",
                default=[],
                metavar="NAME=VALUE",
                help="an fsspec storage option, e.g. endpoint_url=https://... (repeatable)",
            )
            create.add_argument(
                "--option-from-env",
                dest="env_options",
                type=_option,
                action="append",
                default=[],
                metavar="NAME=VARIABLE",
                help="a storage option read from an environment variable, for secrets (repeatable)",
            )
        create.set_defaults(run=_connections_create if group == "connections" else _volumes_create)
        listing = f"list {kind}s" + (
            " (option names, never their values)" if kind != "volume" else ""
        )
        actions.add_parser("list", parents=[home, org], help=listing).set_defaults(
            run=_volumes_list
        )
        delete = actions.add_parser(
            "delete", parents=[home, org], help=f"delete a {kind} and unbind it from every key"
        )
        delete.add_argument("slug")
        delete.set_defaults(run=_volumes_delete)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.at(getattr(args, "home", None))
    try:
        code: int = args.run(args, settings)
    except BaponiError as exc:
        print(f"baponi: {exc.message}", file=sys.stderr)
        return 1
    except HomeInUse as exc:
        print(f"baponi: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
