"""The execd filesystem API on a long-lived sandbox.

Every operation is a process of the runtime's coreutils and findutils, run inside the
sandbox as its user: nothing on the host opens, follows or changes a file the sandbox
made, so a link planted by its code resolves in the sandbox's own view, whatever it
names. Paths are arguments (absolute, so none reads as an option); the scripts are
constants. What those processes print is parsed strictly (:mod:`filesinfo`) and bounded.
"""

from __future__ import annotations

import posixpath
import re
import secrets
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import TypeVar

from baponi_core._errors import ValidationError
from baponi_core._sandbox.rootfs import HOME
from baponi_core._sandboxes.errors import FileNotFound, MissingQuery, RuntimeFailure
from baponi_core._sandboxes.filesinfo import FORMAT, NAME, FileInfo, FileType, parse
from baponi_core._sandboxes.live import RUN_TIMEOUT_S, Completed, Live

# Our processes find the runtime's tools, never ones the sandbox's environment points at,
# and speak in the C locale (byte order, plain messages).
TOOLS_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
MAX_PATHS = 256  # of one request: every one is an argument of one process
PATH_BYTES = 4096  # PATH_MAX
LISTING_BYTES = 32 << 20  # a list or search that says more is refused (about 200k files)
EDIT_BYTES = 64 << 20  # the largest file /files/replace rewrites (it is held in memory)
MISSING, EXISTS, IS_DIRECTORY = 3, 4, 5  # exit statuses of the scripts below
S = TypeVar("S", bound=Sized)
VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")

# own FILE MODE OWNER GROUP: each of the three that is not empty applied to FILE.
OWN = """own() {
  { test -z "$2" || chmod -- "$2" "$1"; } &&
  { test -z "$3" || chown -- "$3" "$1"; } &&
  { test -z "$4" || chgrp -- "$4" "$1"; }
}
"""
EXISTS_TEST = 'there() { test -e "$1" || test -L "$1"; }\n'
MOVE = (
    EXISTS_TEST
    + f"""there "$1" || exit {MISSING}
if there "$2"; then exit {EXISTS}; fi
mkdir -p -- "$3" && exec mv -T -- "$1" "$2"
"""
)
PERMISSIONS = (
    EXISTS_TEST
    + OWN
    + f"""there "$1" || exit {MISSING}
own "$@"
"""
)
# WRITE TEMP DEST PARENT MODE OWNER GROUP: stdin into TEMP beside DEST, then over it, so
# that a write that fails (or is cut short) leaves DEST as it was.
WRITE = (
    OWN
    + f"""t=$1 d=$2; mkdir -p -- "$3" || exit 1
if test -d "$d" && ! test -L "$d"; then exit {IS_DIRECTORY}; fi
{{ cat > "$t" && own "$t" "$4" "$5" "$6" && mv -f -T -- "$t" "$d"; }} ||
{{ rm -f -- "$t"; exit 1; }}
"""
)
# REWRITE TEMP DEST: like WRITE, DEST's mode kept.
REWRITE = """{ cat > "$1" && chmod --reference="$2" -- "$1" && mv -f -T -- "$1" "$2"; } ||
{ rm -f -- "$1"; exit 1; }
"""
# MKDIR PATH MODE OWNER GROUP: mkdir -p PATH (normalised), then owned: PATH and each of
# its parents up to the topmost that was missing, no other.
MKDIR = (
    EXISTS_TEST
    + OWN
    + """p=$1 top= d=$1
while ! there "$d"; do top=$d d=${d%/*}; test -n "$d" || break; done
mkdir -p -- "$p" || exit 1
test -n "$top" || exit 0
d=$p
until own "$d" "$2" "$3" "$4" || exit 1; test "$d" = "$top"; do d=${d%/*}; done
"""
)


@dataclass(frozen=True)
class Permission:
    """``mode``: octal digits read as a decimal number (``755``); 0 leaves it as it is.
    ``owner`` and ``group``: names (or numbers) of the sandbox's users."""

    mode: int = 0
    owner: str | None = None
    group: str | None = None

    def args(self) -> tuple[str, str, str]:
        """The MODE OWNER GROUP arguments of the scripts: empty for what stays."""
        return (_mode(self.mode), _owner(self.owner), _owner(self.group))


def resolve(live: Live, path: str) -> str:
    """``path`` as the sandbox means it: ``~`` its home, ``$VAR`` and ``${VAR}`` its
    environment's (empty when unset, as execd's), relative to its home."""
    if not path:
        raise MissingQuery("a path is required")
    if "\0" in path:
        raise ValidationError("a path cannot hold a NUL byte")
    env = live.env()
    home = env.get("HOME", HOME)
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    path = VARIABLE.sub(lambda m: env.get(m.group(1) or m.group(2), ""), path)
    try:
        size = len(path.encode())
    except UnicodeEncodeError:
        raise ValidationError("a path must be valid UTF-8") from None
    if size > PATH_BYTES:
        raise ValidationError(f"a path is at most {PATH_BYTES} bytes")
    if not path:  # "$UNSET" is no path: never the home (an rm -rf of it, say)
        raise ValidationError("the path is empty once its variables are expanded")
    return posixpath.join(home, path)


async def info(live: Live, paths: Sequence[str]) -> dict[str, FileInfo]:
    """Each path's own FileInfo (a link's, not its target's), keyed as given."""
    found = await _stat(live, {p: resolve(live, p) for p in paths})
    missing = [given for given, got in found.items() if got is None]
    if missing:
        raise FileNotFound(f"no such file or directory: {missing[0]}")
    return {given: got for given, got in found.items() if got is not None}


async def delete_files(live: Live, paths: Sequence[str]) -> None:
    """Remove files (and links); a directory is refused: DELETE /directories is rm -rf."""
    found = await info(live, paths)
    for given, file in found.items():
        if file.type is FileType.DIRECTORY:
            raise RuntimeFailure(f"{given} is a directory")
    if found:
        check(await _run(live, ["rm", "-f", "--", *(f.path for f in found.values())]), "delete")


async def move(live: Live, moves: Sequence[tuple[str, str]]) -> None:
    """Rename each ``(src, dest)`` in turn; dest's parent is made, an existing dest
    refused."""
    for src, dest in moves:
        source, target = resolve(live, src), resolve(live, dest)
        argv = ["sh", "-c", MOVE, "sh", source, target, posixpath.dirname(target)]
        check(await _run(live, argv), f"{src} -> {dest}")


async def set_permissions(live: Live, changes: Mapping[str, Permission]) -> None:
    for given, permission in changes.items():
        argv = ["sh", "-c", PERMISSIONS, "sh", resolve(live, given), *permission.args()]
        check(await _run(live, argv), given)


async def search(live: Live, path: str, pattern: str = "**") -> list[FileInfo]:
    """The files (not directories) below ``path`` whose base name matches the glob."""
    if "\0" in pattern:
        raise ValidationError("a pattern cannot hold a NUL byte")
    where = await _directory(live, path, follow=True)
    argv = ["find", "-H", where, "-type", "f", "-name", pattern or "**", "-printf", FORMAT]
    return _sorted(await _listing(live, argv))


async def list_directory(live: Live, path: str, depth: int = 1) -> list[FileInfo]:
    """What lies below ``path`` down to ``depth`` levels, links not followed, each
    directory's entries in lexical order after it (a file browser's order)."""
    if depth < 0:
        raise ValidationError("depth must be 0 or more")
    where = await _directory(live, path, follow=False)
    if depth == 0:
        return []
    argv = ["find", where, "-mindepth", "1", "-maxdepth", str(depth), "-printf", FORMAT]
    return _sorted(await _listing(live, argv))


async def replace(live: Live, edits: Mapping[str, tuple[str, str]]) -> dict[str, int]:
    """Replace every occurrence of ``old`` by ``new`` in each file, its mode kept; how
    many were replaced in each."""
    counts: dict[str, int] = {}
    for given, (old, new) in edits.items():
        if not old:
            raise ValidationError(f"the text to replace in {given} is empty")
        file = (await info(live, [given]))[given]
        if file.type is not FileType.FILE:
            raise ValidationError(f"{given} is not a regular file")
        if file.size > EDIT_BYTES:
            raise ValidationError(f"{given} is larger than {EDIT_BYTES >> 20} MiB")
        read = await _run(live, ["cat", "--", file.path], output_bytes=EDIT_BYTES + 1)
        check(read, given)
        if len(read.stdout) > EDIT_BYTES:
            raise ValidationError(f"{given} is larger than {EDIT_BYTES >> 20} MiB")
        counts[given] = read.stdout.count(old.encode())
        grows = counts[given] * (len(new.encode()) - len(old.encode()))
        if len(read.stdout) + grows > EDIT_BYTES:  # checked before it is made
            raise ValidationError(f"{given} would be larger than {EDIT_BYTES >> 20} MiB")
        if counts[given]:
            edited = read.stdout.replace(old.encode(), new.encode())
            argv = ["sh", "-c", REWRITE, "sh", temporary(file.path), file.path]
            check(await _run(live, argv, stdin=edited), given)
    return counts


async def make_directories(live: Live, dirs: Mapping[str, Permission]) -> None:
    """``mkdir -p`` each; its permission applied to the directories it created only."""
    for given, permission in dirs.items():
        path = posixpath.normpath(resolve(live, given))
        argv = ["sh", "-c", MKDIR, "sh", path, *permission.args()]
        check(await _run(live, argv), given)


async def remove_directories(live: Live, paths: Sequence[str]) -> None:
    """``rm -rf`` each (what is missing is no error)."""
    resolved = [resolve(live, p) for p in _bounded(paths)]
    if resolved:
        check(await _run(live, ["rm", "-rf", "--", *resolved]), "remove")


def temporary(path: str) -> str:
    """A new name beside ``path`` for what will replace it."""
    return posixpath.join(posixpath.dirname(path), f".baponi-{secrets.token_hex(8)}.part")


async def stat(live: Live, path: str, *, follow: bool) -> FileInfo:
    """``path``'s FileInfo (its target's when ``follow``); FileNotFound when missing (or
    a link to nothing, when ``follow``)."""
    argv = ["find", *(["-H"] if follow else []), path, "-maxdepth", "0", "-printf", FORMAT]
    found = parse((await _run(live, argv, output_bytes=1 << 16)).stdout)
    if len(found) != 1 or found[0].path != path or (follow and found[0].type is FileType.SYMLINK):
        raise FileNotFound(f"no such file or directory: {path}")
    return found[0]


async def _stat(live: Live, paths: Mapping[str, str]) -> dict[str, FileInfo | None]:
    """Each given path's FileInfo (by lstat) or None when missing: one find for all."""
    if not paths:
        return {}
    _bounded(paths)
    argv = ["find", *paths.values(), "-maxdepth", "0", "-printf", FORMAT]
    by_path = {f.path: f for f in await _listing(live, argv)}
    return {given: by_path.get(path) for given, path in paths.items()}


async def _directory(live: Live, path: str, *, follow: bool) -> str:
    if not path:
        raise MissingQuery("the query parameter path is required")
    found = await stat(live, resolve(live, path), follow=follow)
    if found.type is not FileType.DIRECTORY:
        raise ValidationError(f"{path} is not a directory")
    return found.path


async def _listing(live: Live, argv: list[str]) -> list[FileInfo]:
    done = await _run(live, argv, output_bytes=LISTING_BYTES)
    if len(done.stdout) >= LISTING_BYTES:
        raise RuntimeFailure(f"the listing is larger than {LISTING_BYTES >> 20} MiB")
    return parse(done.stdout)


def _bounded(paths: S) -> S:
    if len(paths) > MAX_PATHS:
        raise ValidationError(f"at most {MAX_PATHS} paths at once")
    return paths


def _sorted(found: list[FileInfo]) -> list[FileInfo]:
    return sorted(found, key=lambda f: f.path.split("/"))


async def _run(
    live: Live, argv: list[str], *, stdin: bytes | None = None, output_bytes: int = 1 << 16
) -> Completed:
    done = await live.run(argv, stdin=stdin, env=TOOLS_ENV, output_bytes=output_bytes)
    if done.timed_out:
        raise RuntimeFailure(f"{argv[0]} took longer than {RUN_TIMEOUT_S:g} s: gave up")
    return done


def check(done: Completed, what: str) -> None:
    """Raise what a script's status means."""
    if done.status == 0:
        return
    if done.status == MISSING:
        raise FileNotFound(f"no such file or directory: {what}")
    if done.status == EXISTS:
        raise RuntimeFailure(f"{what}: the destination exists already")
    if done.status == IS_DIRECTORY:
        raise RuntimeFailure(f"{what}: a directory is in the way")
    raise RuntimeFailure(f"{what} failed: {said(done.stderr)}")


def said(stderr: bytes) -> str:
    """The first line a tool wrote on failing, bounded: the sandbox's own words."""
    line = stderr.strip().split(b"\n", 1)[0][:300].decode(errors="replace")
    return line or "no reason given"


def _mode(mode: int) -> str:
    digits = str(mode)
    if mode < 0 or len(digits) > 4 or not set(digits) <= set("01234567"):
        raise ValidationError(f"mode {mode} is not an octal permission such as 755")
    return "" if mode == 0 else digits


def _owner(name: str | None) -> str:
    if name is None or name == "":
        return ""
    if not NAME.fullmatch(name.encode()):
        raise ValidationError(f"{name!r} is not a user or group name")
    return name
