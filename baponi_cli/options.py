"""Command-line options shared by ``baponi`` and ``baponi-mcp``: argument types, the
storage options, and the one table of sandbox profile limits.

Every option with an environment variable takes its default from it; help texts show
the defaults argparse holds (``%(default)s``), so they never restate a number.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from baponi_core._config import DEFAULT_THREAD_QUOTA, DEFAULT_VOLUME_SIZE
from baponi_core._models import decimal
from baponi_core._sandbox.pool import PoolSizes
from baponi_core._sandbox.uids import DEFAULT_UIDS, UidRange

SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

# The limits a sandbox profile sets: flag -> (profile field, type, metavar, help).
PROFILE_OPTIONS: dict[str, tuple[str, type[Any], str, str]] = {
    "--cpus": ("cpus", float, "N", "CPU cores per sandbox (cgroup quota), e.g. 0.5"),
    "--memory": ("memory_mb", int, "MIB", "memory per sandbox in MiB, /tmp and an ephemeral home"),
    "--pids": ("pids", int, "N", "processes and threads per sandbox at once"),
    "--max-timeout": ("max_timeout", int, "SECONDS", "largest timeout a request may ask for"),
    "--tmp": ("tmp_mb", int, "MIB", "size of /tmp in MiB"),
    "--output": ("output_kb", int, "KIB", "stdout and stderr cap, KiB each"),
}


def env_name(flag: str) -> str:
    """The environment variable of an option: ``--max-timeout`` -> ``BAPONI_MAX_TIMEOUT``."""
    return "BAPONI_" + flag.lstrip("-").replace("-", "_").upper()


def from_env(flag: str, default: Any = None) -> Any:
    return os.environ.get(env_name(flag), default)


def env_option(
    parser: argparse.ArgumentParser,
    flag: str,
    text: str,
    *,
    default: Any = None,
    shown: str = "%(default)s",
    **options: Any,
) -> None:
    """An option whose default is read from its environment variable, else ``default``;
    its help ends with both (``shown`` says what no default means)."""
    parser.add_argument(
        flag,
        default=from_env(flag, default),
        help=f"{text} (default: {shown}; or ${env_name(flag)})",
        **options,
    )


def pool_sizes(text: str) -> PoolSizes:
    try:
        return PoolSizes.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--pool: {exc}") from None


def port_number(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError("must be between 0 and 86400 seconds")
    return value


def interval(text: str) -> float:
    """Seconds between two runs of something: more than 0."""
    value = seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def retention(text: str) -> int | None:
    """Days, written ``30d``, or ``unlimited`` (None)."""
    if text.strip().lower() == "unlimited":
        return None
    days = decimal(text.strip().lower().removesuffix("d"), max_digits=6)
    if days is None or not text.strip().lower().endswith("d"):
        raise argparse.ArgumentTypeError(f"expected days such as 1d or 30d, or unlimited: {text!r}")
    return days


def retention_text(days: int | None) -> str:
    """What :func:`retention` reads back as ``days``."""
    return "unlimited" if days is None else f"{days}d"


def positive_seconds(text: str) -> int:
    """Whole seconds, at least one (what uvicorn's timeouts take)."""
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 86400:
        raise argparse.ArgumentTypeError(f"expected whole seconds 1..86400, got {text!r}")
    return int(text)


def count(text: str) -> int:
    """A whole number from 1."""
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1")
    return int(text)


def delays(text: str) -> tuple[float, ...]:
    return tuple(seconds(part) for part in text.split(","))


def delays_text(values: tuple[float, ...]) -> str:
    return ",".join(f"{d:g}" for d in values)


def size(text: str) -> int:
    """Bytes, with an optional K, M, G or T suffix (powers of 1024)."""
    number, scale = text[:-1], SIZE_UNITS.get(text[-1:].upper())
    if scale is None:
        number, scale = text, 1
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 10G, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 bytes")
    return value


def size_text(value: int) -> str:
    """The shortest exact spelling of ``value`` that :func:`size` reads back."""
    for unit, scale in reversed(SIZE_UNITS.items()):
        if value % scale == 0:
            return f"{value // scale}{unit}"
    return str(value)


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a JSON object") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def name_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def flag_from_env(flag: str) -> bool:
    name = env_name(flag)
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise SystemExit(f"baponi: {name} must be 1/true/yes/on or 0/false/no/off, not {value!r}")


def add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", help="state directory (default: $BAPONI_HOME or ~/.baponi)")


def add_runtimes(parser: argparse.ArgumentParser) -> None:
    """Where the runtimes are: shared by the server, ``baponi-mcp`` and the commands that
    manage them."""
    env_option(
        parser,
        "--runtimes",
        "the runtimes directory: the root filesystems sandboxes run on (baponi runtimes)",
        shown="<home>/runtimes",
        metavar="DIR",
    )


def runtimes_dir(args: argparse.Namespace) -> Path | None:
    given = getattr(args, "runtimes", None)
    return Path(given).expanduser().resolve() if given else None


def uid_range(text: str) -> UidRange:
    try:
        return UidRange.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """Where thread homes and volumes live, and who sandboxes reach them as; shared by
    ``baponi serve`` and ``baponi-mcp``."""
    env_option(
        parser,
        "--storage",
        "where thread homes and volumes live: a directory, or s3://bucket/prefix, "
        "gs://bucket/prefix, az://container/prefix",
        shown="--home",
        metavar="URL",
    )
    env_option(
        parser,
        "--storage-options",
        "fsspec options of a cloud --storage, e.g. credentials or an endpoint_url",
        default="{}",
        shown="the provider's usual environment variables",
        type=json_object,
        metavar="JSON",
    )
    env_option(
        parser,
        "--thread-quota",
        "bytes one thread home may hold, e.g. 500M or 10G: each home is a filesystem of "
        "that size, so writes past it fail (ENOSPC) and uploads beyond it are refused",
        default=size_text(DEFAULT_THREAD_QUOTA),
        type=size,
        metavar="SIZE",
    )
    env_option(
        parser,
        "--volume-size",
        "the size of the filesystem of a volume without a --quota (each managed volume is a "
        "filesystem of its own when the server is root: a sparse image that takes on the disk "
        "what its files take); the default is more than most disks, so such a volume is "
        "bounded by the disk",
        default=size_text(DEFAULT_VOLUME_SIZE),
        type=size,
        metavar="SIZE",
    )
    parser.add_argument(
        "--sampled-quota",
        action="store_true",
        help="keep thread homes as plain directories whose size is sampled while code runs "
        "(a run growing one past the quota is stopped): what a server that is not root, or "
        "has no loop devices, does anyway",
    )
    env_option(
        parser,
        "--sandbox-uids",
        "host uids for sandboxes when the server is root, FIRST-LAST: each running sandbox "
        "gets one of its own, so per-user kernel limits are not shared; no host account or "
        "subordinate id range may use them, nor another server's range",
        default=str(DEFAULT_UIDS),
        type=uid_range,
        metavar="RANGE",
    )


def storage_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "storage_url": args.storage,
        "storage_options": args.storage_options,
        "thread_quota_bytes": args.thread_quota,
        "volume_size_bytes": args.volume_size,
        "sampled_quota": args.sampled_quota,
        "sandbox_uids": args.sandbox_uids,
    }


def add_profile_options(parser: argparse.ArgumentParser, default: str, env: bool) -> None:
    """One option per profile limit; ``env``: each also read from its variable."""
    for flag, (field, kind, metavar, text) in PROFILE_OPTIONS.items():
        if env:
            env_option(parser, flag, text, shown=default, dest=field, type=kind, metavar=metavar)
        else:
            parser.add_argument(
                flag, dest=field, type=kind, metavar=metavar, help=f"{text} ({default})"
            )


def profile_limits(args: argparse.Namespace) -> dict[str, Any]:
    """The profile limits given, by field."""
    limits = {}
    for field, *_ in PROFILE_OPTIONS.values():
        value = getattr(args, field)
        if value is not None:
            limits[field] = value
    return limits
