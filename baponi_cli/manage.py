"""``baponi keys|orgs|profiles|volumes|connections|connectors|runtimes|signing-keys``: the
operator's commands on the store and the runtimes directory, run beside a server or without
one (they take no lock on the home)."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

from baponi_cli import connectors, sandboxes
from baponi_cli.options import (
    add_home,
    add_profile_options,
    add_runtimes,
    name_value,
    retention,
    retention_text,
    size,
    size_text,
)
from baponi_cli.options import profile_limits as given_limits
from baponi_core._config import Settings
from baponi_core._errors import ValidationError
from baponi_core._net.policy import Mode
from baponi_core._records import DEFAULT_RETENTION_DAYS, Profile, Volume
from baponi_core._runtimes import Runtimes
from baponi_core._services.admin import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_ORG,
    DEFAULT_PROFILE,
    Admin,
    network_policy,
)
from baponi_core._services.runtimes import Listed, RuntimeAdmin, import_image
from baponi_core._storage.signing import UrlSigner
from baponi_core._store import store_for

VOLUMES_EPILOG = """\
A managed volume keeps its files on this server's disk (under --home). Each
key bound to it (baponi keys create --volume SLUG) sees it at /data/<slug>/ in
every execution, read-only when the volume is. Volumes and storage connections
share one set of slugs per organisation.

examples:
  baponi volumes create reports --org acme
  baponi volumes create reference --read-only --org acme
  baponi volumes create scratch --quota 2G --org acme   a filesystem of 2 GiB
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

RUNTIMES_EPILOG = """\
A runtime is the read-only root filesystem sandboxes run on, with the image's
environment and working directory and an interpreter per language. Each profile
names one (default: the runtime named default); imports are kept in --runtimes
(default <home>/runtimes), which several servers may share.

SOURCE is an OCI image layout directory (oci:DIR[:TAG], or just DIR), an OCI
archive (oci-archive:FILE), a docker save archive (docker-archive:FILE, or just
FILE), an image reference where a registry is reachable (docker://REF), or
host: for the host's /usr read-only with /usr/local hidden (the old behaviour:
sandboxes then see whatever the host has installed).

examples:
  baponi runtimes import default oci:/srv/images/baponi-default
  baponi runtimes import slim docker-archive:slim.tar
  baponi runtimes import default oci:/srv/images/next --replace
  baponi runtimes import legacy host:
  baponi profiles set small --org acme --runtime slim
  baponi runtimes list
  baponi runtimes delete slim      refused while a profile names it
"""

RETENTION_HELP = (
    "how long executions (records, output, stored events) are kept after their end: "
    "1d, 30d, any number of days, or unlimited"
)
UNCHANGED = object()  # --retention not given (None is "unlimited")

Action = Callable[[Admin], Awaitable[Any]]
PROFILE_DEFAULTS = Profile(id="", org_id="", name="")


def with_admin(settings: Settings, action: Action) -> Any:
    """Run ``action`` on the home's store (the default organisation made if missing)."""

    async def run() -> Any:
        store = store_for(settings)
        settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        await store.open()
        try:
            admin = Admin(store, Runtimes(settings.runtimes))
            await admin.ensure_default_org()
            return await action(admin)
        finally:
            await store.close()

    return asyncio.run(run())


def add_commands(commands: Any) -> None:
    home = argparse.ArgumentParser(add_help=False)
    add_home(home)
    org = argparse.ArgumentParser(add_help=False)
    org.add_argument("--org", default=DEFAULT_ORG, help="organisation (default: %(default)s)")
    keys = _keys(commands, home, org)
    connectors.add_commands(commands, keys, home, org)
    _orgs(commands, home)
    _signing_keys(commands, home)
    _volumes(commands, home, org)
    _profiles(commands, home, org)
    _runtimes(commands, home)
    sandboxes.add_commands(commands, home)


# keys


def _keys(commands: Any, home: argparse.ArgumentParser, org: argparse.ArgumentParser) -> Any:
    """``keys ...``; the group, for more actions."""
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
    create.add_argument(
        "--connector",
        dest="connectors",
        action="append",
        default=[],
        metavar="NAME",
        help="inject this connector's credentials into the key's executions (repeatable)",
    )
    create.set_defaults(run=_keys_create)
    keys.add_parser(
        "list", parents=[home, org], help="list keys (never their secrets)"
    ).set_defaults(run=_keys_list)
    revoke = keys.add_parser("revoke", parents=[home, org], help="revoke a key by id")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_keys_revoke)
    return keys


def _keys_create(args: argparse.Namespace, settings: Settings) -> int:
    async def action(admin: Admin) -> str:
        _, secret = await admin.create_key(
            args.org, args.name, args.profile, args.volumes, args.connections, args.connectors
        )
        return secret

    print(with_admin(settings, action))
    return 0


def _keys_list(args: argparse.Namespace, settings: Settings) -> int:
    async def action(admin: Admin) -> list[str]:
        org = await admin.org(args.org)
        profiles = {p.id: p.name for p in await admin.store.list_profiles(org.id)}
        bound = await admin.store.key_volumes(org.id)
        injected = await admin.store.key_connectors(org.id)
        connections = {v.slug for v in await admin.store.list_volumes(org.id) if v.url}
        return [
            f"{k.id}  {k.prefix}...  {k.name}  profile={profiles.get(k.profile_id, '?')}"
            + _bindings(bound.get(k.id, []), connections)
            + (f"  connectors={','.join(injected[k.id])}" if k.id in injected else "")
            + ("  (revoked)" if k.revoked_at else "")
            for k in await admin.store.list_keys(org.id)
        ]

    print("\n".join(with_admin(settings, action)))
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


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    with_admin(settings, lambda admin: admin.revoke_key(args.org, args.key_id))
    print(f"revoked {args.key_id}")
    return 0


# organisations


def _orgs(commands: Any, home: argparse.ArgumentParser) -> None:
    orgs = commands.add_parser("orgs", help="organisations").add_subparsers(
        dest="action", required=True
    )
    create = orgs.add_parser("create", parents=[home], help="create an organisation")
    create.add_argument("name")
    create.add_argument(
        "--max-concurrency",
        type=int,
        default=DEFAULT_MAX_CONCURRENCY,
        help="executions running at once (default: %(default)s)",
    )
    create.add_argument(
        "--retention",
        type=retention,
        default=DEFAULT_RETENTION_DAYS,
        metavar="DAYS",
        help=f"{RETENTION_HELP} (default: {retention_text(DEFAULT_RETENTION_DAYS)})",
    )
    create.set_defaults(run=_orgs_create)
    change = orgs.add_parser("set", parents=[home], help="change an organisation's limits")
    change.add_argument("name")
    change.add_argument("--max-concurrency", type=int, help="executions running at once")
    change.add_argument(
        "--retention", type=retention, default=UNCHANGED, metavar="DAYS", help=RETENTION_HELP
    )
    change.set_defaults(run=_orgs_set)
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


def _orgs_create(args: argparse.Namespace, settings: Settings) -> int:
    org = with_admin(
        settings, lambda admin: admin.create_org(args.name, args.max_concurrency, args.retention)
    )
    print(
        f"created organisation {org.name} ({org.id}), max concurrency {org.max_concurrency}, "
        f"retention {retention_text(org.retention_days)}"
    )
    return 0


def _orgs_set(args: argparse.Namespace, settings: Settings) -> int:
    if args.max_concurrency is None and args.retention is UNCHANGED:
        raise SystemExit("baponi: orgs set: give --max-concurrency, --retention or both")

    async def action(admin: Admin) -> Any:
        if args.max_concurrency is not None:
            await admin.set_max_concurrency(args.name, args.max_concurrency)
        if args.retention is not UNCHANGED:
            await admin.set_retention(args.name, args.retention)
        return await admin.org(args.name)

    org = with_admin(settings, action)
    print(
        f"organisation {org.name}: max concurrency {org.max_concurrency}, "
        f"retention {retention_text(org.retention_days)}"
    )
    return 0


def _orgs_list(args: argparse.Namespace, settings: Settings) -> int:
    orgs = with_admin(settings, lambda admin: admin.store.list_orgs())
    print(
        "\n".join(
            f"{o.name}  {o.id}  max_concurrency={o.max_concurrency}  "
            f"retention={retention_text(o.retention_days)}"
            for o in orgs
        )
    )
    return 0


def _orgs_webhook_secret(args: argparse.Namespace, settings: Settings) -> int:
    print(with_admin(settings, lambda admin: admin.webhook_secret(args.name, args.rotate)))
    return 0


# signing keys


def _signing_keys(commands: Any, home: argparse.ArgumentParser) -> None:
    signing = commands.add_parser(
        "signing-keys", help="keys of the signed file URLs"
    ).add_subparsers(dest="action", required=True)
    signing.add_parser(
        "rotate",
        parents=[home],
        help="add a new key to sign with; older keys keep verifying until their URLs expire",
    ).set_defaults(run=_signing_rotate)


def _signing_rotate(args: argparse.Namespace, settings: Settings) -> int:
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    kid = UrlSigner.rotate(settings.signing_keys)
    print(f"signing with new key {kid}; URLs signed before stay valid until they expire")
    return 0


# volumes and storage connections


def _volumes(commands: Any, home: argparse.ArgumentParser, org: argparse.ArgumentParser) -> None:
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
            _connection_options(create)
        else:
            create.add_argument(
                "--quota",
                type=size,
                metavar="SIZE",
                help="the most it may hold, e.g. 500M: a filesystem of that size, so writes "
                "past it fail with ENOSPC (needs a root server; default: no quota)",
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


def _connection_options(create: argparse.ArgumentParser) -> None:
    create.add_argument(
        "--url", required=True, help="s3://BUCKET[/PREFIX], gs://..., gcs://, az://, abfs://"
    )
    for flag, dest, metavar, text in (
        ("--option", "options", "NAME=VALUE", "an fsspec storage option, e.g. endpoint_url=..."),
        (
            "--option-from-env",
            "env_options",
            "NAME=VARIABLE",
            "a storage option read from an environment variable, for secrets",
        ),
    ):
        create.add_argument(
            flag,
            dest=dest,
            type=name_value,
            action="append",
            default=[],
            metavar=metavar,
            help=f"{text} (repeatable)",
        )


def _volumes_create(args: argparse.Namespace, settings: Settings) -> int:
    volume = with_admin(
        settings,
        lambda admin: admin.create_volume(
            args.org, args.slug, args.read_only, quota_bytes=args.quota
        ),
    )
    print(f"created volume {volume.slug} ({volume.id}), {_mode(volume.read_only)}{_quota(volume)}")
    return 0


def _connections_create(args: argparse.Namespace, settings: Settings) -> int:
    options = dict(args.options)
    for name, variable in args.env_options:
        if variable not in os.environ:
            raise SystemExit(f"baponi: environment variable {variable} is not set")
        options[name] = os.environ[variable]
    volume = with_admin(
        settings,
        lambda admin: admin.create_volume(
            args.org, args.slug, args.read_only, url=args.url, options=options
        ),
    )
    print(
        f"created storage connection {volume.slug} ({volume.id}) to {volume.url}, "
        f"{_mode(volume.read_only)}"
    )
    return 0


def _volumes_list(args: argparse.Namespace, settings: Settings) -> int:
    connections = args.command == "connections"
    volumes = with_admin(settings, lambda admin: admin.list_volumes(args.org))
    print("\n".join(_describe_volume(v) for v in volumes if v.is_connection == connections))
    return 0


def _volumes_delete(args: argparse.Namespace, settings: Settings) -> int:
    connection = args.command == "connections"
    with_admin(settings, lambda admin: admin.delete_volume(args.org, args.slug, connection))
    kind = "storage connection" if connection else "volume"
    what = "its cached copy goes" if connection else "its files go"
    print(f"deleted {kind} {args.slug}")
    print(f"({what} at the server's next sweep: at its start, then every 10 minutes)")
    return 0


def _mode(read_only: bool) -> str:
    return "read-only" if read_only else "read-write"


def _quota(volume: Volume) -> str:
    return "" if volume.quota_bytes is None else f", quota {size_text(volume.quota_bytes)}"


def _describe_volume(v: Volume) -> str:
    text = f"{v.slug}  {v.id}  {_mode(v.read_only)}"
    if v.quota_bytes is not None:
        text += f"  quota={size_text(v.quota_bytes)}"
    if v.is_connection:  # option names only: their values are credentials
        text += f"  {v.url}  options={','.join(sorted(v.options)) or '-'}"
    return text


# sandbox profiles


def _profiles(commands: Any, home: argparse.ArgumentParser, org: argparse.ArgumentParser) -> None:
    profiles = commands.add_parser(
        "profiles", help="sandbox profiles (resource limits)"
    ).add_subparsers(dest="action", required=True)
    change = profiles.add_parser(
        "set",
        parents=[home, org],
        help="create a profile or change its limits",
        description="Unset limits keep their current value, or for a new profile the "
        f"default: {_describe_limits(PROFILE_DEFAULTS)}.",
    )
    change.add_argument("name")
    add_profile_options(change, default="unchanged", env=False)
    change.add_argument(
        "--runtime", metavar="NAME", help="the runtime its sandboxes run on (baponi runtimes list)"
    )
    add_runtimes(change)
    change.add_argument(
        "--network",
        choices=[m.value for m in Mode],
        help="what its sandboxes may reach: nothing (none, the default for a new profile), "
        "the --allow hosts (allowlist), or any public host (open); replaces the policy, "
        "with the rules given (default: unchanged)",
    )
    for flag, text in (
        ("--allow", "a host allowlist lets through"),
        ("--deny", "a host refused, whatever else allows it"),
    ):
        change.add_argument(
            flag,
            action="append",
            default=[],
            metavar="DOMAIN[:PORT]",
            help=f"{text} (repeatable; *.example.com for every name below example.com; "
            "no port: any port); only with --network",
        )
    change.set_defaults(run=_profiles_set)
    profiles.add_parser("list", parents=[home, org], help="list profiles").set_defaults(
        run=_profiles_list
    )


def _profiles_set(args: argparse.Namespace, settings: Settings) -> int:
    limits = given_limits(args)
    if args.network is None and (args.allow or args.deny):
        raise ValidationError("--allow and --deny need --network allowlist or open")
    network = None if args.network is None else network_policy(args.network, args.allow, args.deny)
    profile = with_admin(
        settings,
        lambda admin: admin.save_profile(args.org, args.name, args.runtime, network, **limits),
    )
    print(_describe_profile(profile))
    return 0


def _profiles_list(args: argparse.Namespace, settings: Settings) -> int:
    async def action(admin: Admin) -> list[Profile]:
        return await admin.store.list_profiles((await admin.org(args.org)).id)

    print("\n".join(_describe_profile(p) for p in with_admin(settings, action)))
    return 0


def _describe_profile(p: Profile) -> str:
    return f"{p.name}: {_describe_limits(p)} runtime={p.runtime} network={p.network}"


def _describe_limits(p: Profile) -> str:
    return (
        f"cpus={p.cpus:g} memory={p.memory_mb}MiB pids={p.pids} "
        f"max_timeout={p.max_timeout}s tmp={p.tmp_mb}MiB output={p.output_kb}KiB"
    )


# runtimes


def _runtimes(commands: Any, home: argparse.ArgumentParser) -> None:
    where = argparse.ArgumentParser(add_help=False)
    add_runtimes(where)
    text = "runtimes: the root filesystems sandboxes run on"
    actions = commands.add_parser(
        "runtimes",
        help=text,
        description=text[0].upper() + text[1:] + ".",
        epilog=RUNTIMES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(dest="action", required=True)
    load = actions.add_parser(
        "import",
        parents=[home, where],
        help="make an image (or the host) a runtime",
        epilog=RUNTIMES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    load.add_argument("name")
    load.add_argument(
        "source", help="oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE, docker://REF or host:"
    )
    load.add_argument(
        "--replace",
        action="store_true",
        help="replace an existing runtime; running sandboxes keep the copy they have",
    )
    load.set_defaults(run=_runtimes_import)
    actions.add_parser(
        "list", parents=[home, where], help="list runtimes, their size, languages and profiles"
    ).set_defaults(run=_runtimes_list)
    delete = actions.add_parser(
        "delete", parents=[home, where], help="delete a runtime no profile names"
    )
    delete.add_argument("name")
    delete.set_defaults(run=_runtimes_delete)


def _with_runtimes(settings: Settings, action: Callable[[RuntimeAdmin], Awaitable[Any]]) -> Any:
    return with_admin(
        settings, lambda admin: action(RuntimeAdmin(admin.store, Runtimes(settings.runtimes)))
    )


def _runtimes_import(args: argparse.Namespace, settings: Settings) -> int:
    # No store: an import touches the runtimes directory only.
    description = import_image(Runtimes(settings.runtimes), args.name, args.source, args.replace)
    languages = ", ".join(sorted(description.interpreters)) or "none"
    print(
        f"imported runtime {args.name} from {args.source}: "
        f"{description.size / (1 << 20):.1f}M, languages {languages}"
    )
    return 0


def _runtimes_list(args: argparse.Namespace, settings: Settings) -> int:
    print("\n".join(_describe_runtime(r) for r in _with_runtimes(settings, lambda r: r.list())))
    return 0


def _runtimes_delete(args: argparse.Namespace, settings: Settings) -> int:
    _with_runtimes(settings, lambda runtimes: runtimes.delete(args.name))
    print(f"deleted runtime {args.name} (sandboxes running on it keep it until they end)")
    return 0


def _describe_runtime(r: Listed) -> str:
    d = r.description
    size = "host /usr" if d.host else f"{d.size / (1 << 20):.1f}M"
    return (
        f"{r.name}  size={size}  languages={','.join(sorted(d.interpreters)) or '-'}  "
        f"profiles={','.join(r.profiles) or '-'}  source={d.source}  generation={r.generation}"
    )
