"""``baponi``: run the server, and manage organisations, sandbox profiles, API keys,
volumes and storage connections."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from baponi_cli import logs, manage, serve
from baponi_cli.options import runtimes_dir
from baponi_core._config import Settings
from baponi_core._errors import BaponiError, CannotStart

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
  baponi runtimes import default oci:./image-layout   the runtime sandboxes run on
  baponi runtimes import slim docker-archive:slim.tar
  baponi profiles set small --org acme --runtime slim
"""


class Parser(argparse.ArgumentParser):
    """argparse's parser, which says a bad command line in one line (argparse prints the
    usage first); ``--help`` still shows it all."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    top = Parser(
        prog="baponi",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.add_command(commands)
    manage.add_commands(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.configure("WARNING", "%(levelname)s %(name)s: %(message)s")
    settings = Settings.at(getattr(args, "home", None), runtimes_dir=runtimes_dir(args))
    try:
        code: int = args.run(args, settings)
    except BaponiError as exc:
        print(f"baponi: {exc.message}", file=sys.stderr)
        return 1
    except CannotStart as exc:
        print(f"baponi: cannot start: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
