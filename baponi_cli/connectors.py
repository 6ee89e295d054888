"""``baponi connectors``: credentials injected at run time into the executions of the
keys bound to them; and ``baponi keys bind|unbind`` for keys that exist."""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from baponi_cli.options import name_value
from baponi_core._config import Settings
from baponi_core._records import Connector
from baponi_core._sealing import Keyring
from baponi_core._services.connectors import Connectors, Values

EPILOG = """\
A connector holds credentials: environment variables and files. Executions of
the keys bound to it (baponi keys create --connector NAME, or baponi keys bind)
get its variables in their environment (a connector's variable wins over a
request's of the same name) and its files read-only at
/run/secrets/<name>/<path>. Values are encrypted in the database with a key
kept in <home>/connectors.keys (back it up with the database); they are never
shown again. Prefer --env-from-env and --file to --env: a value on the command
line is visible in the process list and shell history.

examples:
  baponi connectors create warehouse --org acme \\
      --env-from-env PGPASSWORD=WAREHOUSE_PASSWORD --env PGUSER=analyst \\
      --file client.pem=@./client.pem
  baponi keys create --org acme --connector warehouse
  baponi connectors rotate warehouse --org acme --env-from-env PGPASSWORD=NEW_PASSWORD
  baponi connectors list --org acme
  baponi connectors delete warehouse --org acme
  baponi connectors rekey              a new encryption key for every connector
"""

Action = Callable[[Connectors], Awaitable[Any]]


def with_connectors(settings: Settings, action: Action) -> Any:
    from baponi_cli.manage import with_admin  # manage adds these commands: imports us first

    keyring = Keyring(settings.connector_keys)
    return with_admin(settings, lambda admin: action(Connectors(admin.store, keyring)))


def add_commands(
    commands: Any, keys: Any, home: argparse.ArgumentParser, org: argparse.ArgumentParser
) -> None:
    """``connectors ...`` under ``commands``; ``bind`` and ``unbind`` under ``keys``."""
    actions = commands.add_parser(
        "connectors",
        help="credentials injected into executions",
        description="Credentials injected into the executions of the keys bound to them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(dest="action", required=True)
    for verb, text, run in (
        ("create", "create a connector", _create),
        ("rotate", "replace all of a connector's values (the next executions get them)", _rotate),
    ):
        parser = actions.add_parser(
            verb,
            parents=[home, org],
            help=text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument("name", help="1-63 of a-z, 0-9, '_' and '-': /run/secrets/<name>/")
        _value_options(parser)
        parser.set_defaults(run=run)
    actions.add_parser(
        "list", parents=[home, org], help="list connectors (names and paths, never values)"
    ).set_defaults(run=_list)
    delete = actions.add_parser(
        "delete", parents=[home, org], help="delete a connector and unbind it from every key"
    )
    delete.add_argument("name")
    delete.set_defaults(run=_delete)
    actions.add_parser(
        "rekey",
        parents=[home],
        help="encrypt every connector with a new key, then drop the old keys",
    ).set_defaults(run=_rekey)
    for verb, text in (("bind", "bind connectors to a key"), ("unbind", "unbind them")):
        parser = keys.add_parser(verb, parents=[home, org], help=text)
        parser.add_argument("key_id")
        parser.add_argument(
            "--connector",
            dest="connectors",
            action="append",
            required=True,
            metavar="NAME",
            help="a connector (repeatable)",
        )
        parser.set_defaults(run=_bind)


def _value_options(parser: argparse.ArgumentParser) -> None:
    for flag, metavar, text in (
        ("--env", "KEY=VALUE", "an environment variable"),
        ("--env-from-env", "KEY=VARIABLE", "a variable whose value is read from ours"),
        ("--file", "PATH=@LOCALFILE", "a file at /run/secrets/<name>/PATH, read from LOCALFILE"),
    ):
        parser.add_argument(
            flag,
            dest=flag[2:].replace("-", "_"),
            type=name_value,
            action="append",
            default=[],
            metavar=metavar,
            help=f"{text} (repeatable)",
        )


def _values(args: argparse.Namespace) -> Values:
    env = dict(args.env)
    for key, variable in args.env_from_env:
        if variable not in os.environ:
            raise SystemExit(f"baponi: environment variable {variable} is not set")
        env[key] = os.environ[variable]
    files = {}
    for path, source in args.file:
        if not source.startswith("@"):
            raise SystemExit(f"baponi: --file {path}=@LOCALFILE: the file name starts with @")
        try:
            files[path] = Path(source[1:]).expanduser().read_bytes()
        except OSError as exc:
            raise SystemExit(f"baponi: cannot read {source[1:]}: {exc.strerror}") from None
    return Values(env, files)


def _create(args: argparse.Namespace, settings: Settings) -> int:
    values = _values(args)
    connector = with_connectors(settings, lambda c: c.create(args.org, args.name, values))
    print(f"created connector {connector.name} ({connector.id}): {_contents(connector)}")
    return 0


def _rotate(args: argparse.Namespace, settings: Settings) -> int:
    values = _values(args)
    connector = with_connectors(settings, lambda c: c.rotate(args.org, args.name, values))
    print(f"rotated connector {connector.name}: {_contents(connector)}")
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    connectors = with_connectors(settings, lambda c: c.list(args.org))
    print("\n".join(f"{c.name}  {c.id}  {_contents(c)}" for c in connectors))
    return 0


def _delete(args: argparse.Namespace, settings: Settings) -> int:
    with_connectors(settings, lambda c: c.delete(args.org, args.name))
    print(f"deleted connector {args.name}")
    return 0


def _rekey(args: argparse.Namespace, settings: Settings) -> int:
    count = with_connectors(settings, lambda c: c.reseal())
    print(f"encrypted {count} connector(s) with a new key; the old keys are gone")
    return 0


def _bind(args: argparse.Namespace, settings: Settings) -> int:
    bound = args.action == "bind"
    with_connectors(settings, lambda c: c.bind(args.org, args.key_id, args.connectors, bound))
    print(f"{'bound' if bound else 'unbound'} {', '.join(args.connectors)} for {args.key_id}")
    return 0


def _contents(connector: Connector) -> str:
    """Names only: the values are never shown."""
    env = ",".join(connector.env_names) or "-"
    files = ",".join(connector.file_paths) or "-"
    return f"env={env} files={files}"
