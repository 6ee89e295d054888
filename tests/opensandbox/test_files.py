"""The execd filesystem operations on a real long-lived sandbox (the default runtime image
in bubblewrap), each done inside it: FileInfo, list, search, move, permissions, replace,
mkdir, rm, uploads and downloads (ranges, lines), hostile names, and a link planted by
the sandbox's code at a host file, which no operation reads or changes."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from baponi_core._errors import ValidationError
from baponi_core._sandboxes import files, filestream
from baponi_core._sandboxes.errors import (
    FileNotFound,
    InvalidFileContent,
    MissingQuery,
    RangeNotSatisfiable,
    RuntimeFailure,
)
from baponi_core._sandboxes.files import Permission
from baponi_core._sandboxes.filesinfo import FileType
from baponi_core._sandboxes.live import Live
from tests.opensandbox.live import Sandboxes

HOME = "/home/baponi"
ODD = ["with space", "new\nline", "-dash", "--", "quo'te\"s", "ünï", "*?[g]", "if=x"]


def sh(sandboxes: Sandboxes, live: Live, script: str, *args: str) -> str:
    done = sandboxes.sh(live, script, *args)
    assert done.status == 0, done.stderr
    return done.stdout.decode()


async def chunks_of(data: bytes, size: int = 1 << 16) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def download(sandboxes: Sandboxes, live: Live, path: str, **how: object) -> tuple[object, bytes]:
    async def read() -> tuple[object, bytes]:
        found = await filestream.download(live, path, **how)  # type: ignore[arg-type]
        return found, b"".join([c async for c in found.chunks])

    return sandboxes.call(read)


def upload(sandboxes: Sandboxes, live: Live, path: str, data: bytes, **perm: object) -> None:
    sandboxes.call(filestream.upload, live, path, chunks_of(data), Permission(**perm))  # type: ignore[arg-type]


def test_info_is_keyed_as_given_with_paths_expanded(sandboxes: Sandboxes, live: Live) -> None:
    sh(sandboxes, live, "mkdir -p ~/'some dir' && printf abc > ~/'some dir/f' && ln -s f ~/l")
    before = datetime.now(UTC) - timedelta(minutes=5)
    found = sandboxes.call(files.info, live, ["~/some dir/f", "$HOME/l", "${WHERE}", "~"])
    assert list(found) == ["~/some dir/f", "$HOME/l", "${WHERE}", "~"]
    file = found["~/some dir/f"]
    assert (file.path, file.type, file.size, file.mode) == (f"{HOME}/some dir/f", "file", 3, 644)
    assert (file.owner, file.group) == ("baponi", "baponi")
    assert file.modified_at.tzinfo is not None and file.created_at.tzinfo is not None
    assert file.modified_at > before - timedelta(days=3650)
    assert found["$HOME/l"].type is FileType.SYMLINK  # the link itself, not its target
    assert found["${WHERE}"].path == f"{HOME}/some dir"  # relative to the home
    assert found["~"].type is FileType.DIRECTORY
    with pytest.raises(FileNotFound):
        sandboxes.call(files.info, live, ["~/some dir/f", "~/missing"])
    assert sandboxes.call(files.info, live, []) == {}
    with pytest.raises(ValidationError):
        sandboxes.call(files.info, live, ["a\0b"])


def test_list_goes_depth_first_in_lexical_order_and_never_follows_links(
    sandboxes: Sandboxes, live: Live
) -> None:
    sh(
        sandboxes,
        live,
        "cd ~ && mkdir -p t/b/deep/deeper t/a && touch t/c t/b/x t/a/y t/b/deep/deeper/z"
        " && ln -s /etc t/link && ln -s t tl",
    )
    names = lambda found: [f.path.removeprefix(f"{HOME}/t/") for f in found]  # noqa: E731
    assert names(sandboxes.call(files.list_directory, live, "~/t", 1)) == [
        "a", "b", "c", "link"
    ]  # fmt: skip
    assert names(sandboxes.call(files.list_directory, live, "~/t", 3)) == [
        "a", "a/y", "b", "b/deep", "b/deep/deeper", "b/x", "c", "link"
    ]  # fmt: skip
    assert sandboxes.call(files.list_directory, live, "~/t", 0) == []
    for refused in ("~/tl", "~/t/c"):  # a link to a directory, a file
        with pytest.raises(ValidationError):
            sandboxes.call(files.list_directory, live, refused, 1)
    with pytest.raises(ValidationError):
        sandboxes.call(files.list_directory, live, "~/t", -1)
    with pytest.raises(FileNotFound):
        sandboxes.call(files.list_directory, live, "~/nothing", 1)


def test_search_matches_base_names_of_files_only(sandboxes: Sandboxes, live: Live) -> None:
    sh(sandboxes, live, "cd ~ && mkdir -p s/x.py s/sub && touch s/a.py s/sub/b.py s/sub/c.txt")
    found = sandboxes.call(files.search, live, "~/s", "*.py")
    assert [f.path for f in found] == [f"{HOME}/s/a.py", f"{HOME}/s/sub/b.py"]
    assert len(sandboxes.call(files.search, live, "~/s")) == 3  # "**": every file
    with pytest.raises(FileNotFound):
        sandboxes.call(files.search, live, "~/none", "*")
    with pytest.raises(MissingQuery):
        sandboxes.call(files.search, live, "", "*")


def test_move_makes_the_parent_and_refuses_an_existing_destination(
    sandboxes: Sandboxes, live: Live
) -> None:
    sh(sandboxes, live, "echo 1 > ~/one; echo 2 > ~/two")
    sandboxes.call(files.move, live, [("~/one", "~/new/dir/one")])
    assert sh(sandboxes, live, "cat ~/new/dir/one; test ! -e ~/one && echo gone") == "1\ngone\n"
    with pytest.raises(RuntimeFailure):
        sandboxes.call(files.move, live, [("~/two", "~/new/dir/one")])
    assert sh(sandboxes, live, "cat ~/two ~/new/dir/one") == "2\n1\n"  # both as they were
    with pytest.raises(FileNotFound):
        sandboxes.call(files.move, live, [("~/missing", "~/x")])


def test_permissions_set_the_mode_and_refuse_bad_ones(sandboxes: Sandboxes, live: Live) -> None:
    sh(sandboxes, live, "touch ~/p")
    sandboxes.call(files.set_permissions, live, {"~/p": Permission(mode=640)})
    assert sh(sandboxes, live, "stat -c %a ~/p") == "640\n"
    sandboxes.call(files.set_permissions, live, {"~/p": Permission(mode=0, owner="baponi")})
    assert sh(sandboxes, live, "stat -c %a:%U ~/p") == "640:baponi\n"  # 0: unchanged
    for bad in (789, 17777, -1):
        with pytest.raises(ValidationError):
            sandboxes.call(files.set_permissions, live, {"~/p": Permission(mode=bad)})
    with pytest.raises(ValidationError):
        sandboxes.call(files.set_permissions, live, {"~/p": Permission(owner="a:b")})
    with pytest.raises(RuntimeFailure):  # the sandbox's user cannot give files away
        sandboxes.call(files.set_permissions, live, {"~/p": Permission(owner="root")})
    with pytest.raises(FileNotFound):
        sandboxes.call(files.set_permissions, live, {"~/nope": Permission(mode=600)})


def test_replace_counts_every_occurrence_and_keeps_the_mode(
    sandboxes: Sandboxes, live: Live
) -> None:
    sh(sandboxes, live, "printf 'a-b-a-b-a' > ~/r && chmod 751 ~/r && touch ~/empty")
    counts = sandboxes.call(files.replace, live, {"~/r": ("a", "XY"), "~/empty": ("q", "z")})
    assert counts == {"~/r": 3, "~/empty": 0}
    assert sh(sandboxes, live, "cat ~/r; echo; stat -c %a ~/r") == "XY-b-XY-b-XY\n751\n"
    with pytest.raises(ValidationError):
        sandboxes.call(files.replace, live, {"~/r": ("", "x")})
    with pytest.raises(FileNotFound):
        sandboxes.call(files.replace, live, {"~/absent": ("a", "b")})
    sh(sandboxes, live, "head -c 1048576 /dev/zero | tr '\\0' a > ~/many")
    with pytest.raises(ValidationError):  # 1 MiB of "a" each made 100 bytes: refused
        sandboxes.call(files.replace, live, {"~/many": ("a", "b" * 100)})
    assert sh(sandboxes, live, "tr -d a < ~/many | wc -c") == "0\n"  # as it was


def test_mkdir_applies_the_mode_to_what_it_creates_only(sandboxes: Sandboxes, live: Live) -> None:
    sh(sandboxes, live, "mkdir ~/m && chmod 755 ~/m")
    sandboxes.call(files.make_directories, live, {"~/m/a/b": Permission(mode=700)})
    modes = sh(sandboxes, live, "stat -c '%n %a' ~/m ~/m/a ~/m/a/b")
    assert modes == f"{HOME}/m 755\n{HOME}/m/a 700\n{HOME}/m/a/b 700\n"
    sandboxes.call(files.make_directories, live, {"~/m/a/b": Permission(mode=750)})
    assert sh(sandboxes, live, "stat -c %a ~/m/a/b") == "700\n"  # it existed: left alone
    sh(sandboxes, live, "touch ~/file")
    with pytest.raises(RuntimeFailure):
        sandboxes.call(files.make_directories, live, {"~/file/sub": Permission()})


def test_delete_removes_files_only_and_rm_rf_removes_trees(
    sandboxes: Sandboxes, live: Live
) -> None:
    sh(sandboxes, live, "mkdir -p ~/d/e && touch ~/d/e/f ~/g && ln -s d ~/dl")
    sandboxes.call(files.delete_files, live, ["~/g", "~/dl"])  # a link goes, not its target
    assert sh(sandboxes, live, "ls ~") == "d\n"
    with pytest.raises(RuntimeFailure):
        sandboxes.call(files.delete_files, live, ["~/d"])
    with pytest.raises(FileNotFound):
        sandboxes.call(files.delete_files, live, ["~/g"])
    sandboxes.call(files.remove_directories, live, ["~/d", "~/never-was"])
    assert sh(sandboxes, live, "ls -A ~") == ""
    sh(sandboxes, live, "touch ~/kept")
    with pytest.raises(ValidationError):  # an unset variable is no path, not the home
        sandboxes.call(files.remove_directories, live, ["$UNSET"])
    assert sh(sandboxes, live, "ls -A ~") == "kept\n"
    sandboxes.call(files.delete_files, live, [])


def test_downloads_whole_by_range_and_by_lines(sandboxes: Sandboxes, live: Live) -> None:
    sh(sandboxes, live, "printf '0123456789' > ~/digits; printf 'l1\\nl2\\nl3\\nl4\\n' > ~/lines")
    found, data = download(sandboxes, live, "~/digits")
    assert data == b"0123456789" and found.size == 10 and found.span is None  # type: ignore[attr-defined]
    for header, want in [
        ("bytes=2-5", b"2345"),
        ("bytes=7-", b"789"),
        ("bytes=-3", b"789"),
        ("bytes=8-100", b"89"),
        ("bytes=0-0, 4-5", b"0"),  # the first range only
    ]:
        found, data = download(sandboxes, live, "~/digits", range_header=header)
        assert data == want, header
        span = found.span  # type: ignore[attr-defined]
        assert (span.start, span.length, span.size) == (want[0] - 48, len(want), 10)
    for bad in ("bytes=10-", "bytes=5-2", "bytes=-", "lines=1-2", "bytes=x-1"):
        with pytest.raises(RangeNotSatisfiable):
            download(sandboxes, live, "~/digits", range_header=bad)
    assert download(sandboxes, live, "~/lines", offset=2, limit=2)[1] == b"l2\nl3\n"
    assert download(sandboxes, live, "~/lines", offset=3)[1] == b"l3\nl4\n"
    assert download(sandboxes, live, "~/lines", limit=1)[1] == b"l1\n"
    with pytest.raises(ValidationError):
        download(sandboxes, live, "~/lines", offset=1, range_header="bytes=0-1")
    with pytest.raises(ValidationError):
        download(sandboxes, live, "~/lines", offset=0)
    with pytest.raises(FileNotFound):
        download(sandboxes, live, "~/absent")
    sh(sandboxes, live, "mkfifo ~/fifo")
    for not_a_file in ("~", "~/fifo", "/dev/zero"):
        with pytest.raises(ValidationError):
            download(sandboxes, live, not_a_file)


def test_hostile_names_are_only_ever_names(sandboxes: Sandboxes, live: Live) -> None:
    for i, name in enumerate(ODD):
        path = f"{HOME}/{name}"
        upload(sandboxes, live, path, f"content {i}".encode(), mode=600)
        assert download(sandboxes, live, path)[1] == f"content {i}".encode()
        assert sandboxes.call(files.info, live, [path])[path].mode == 600
        sandboxes.call(files.move, live, [(path, f"{HOME}/moved/{name}")])
    listed = sandboxes.call(files.list_directory, live, "~/moved", 1)
    assert sorted(f.path for f in listed) == sorted(f"{HOME}/moved/{n}" for n in ODD)
    assert sh(sandboxes, live, "ls -A ~ | wc -l") == "1\n"  # nothing made elsewhere


def test_a_link_to_a_host_file_reaches_only_the_sandboxs_view(
    sandboxes: Sandboxes, live: Live, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("HOST SECRET")
    secret.chmod(0o644)
    target = str(secret)
    sh(sandboxes, live, 'ln -s "$1" ~/link; ln -s "$(dirname "$1")" ~/dirlink', target)
    with pytest.raises(FileNotFound):  # the sandbox has no such file
        download(sandboxes, live, "~/link")
    with pytest.raises(ValidationError):
        sandboxes.call(files.replace, live, {"~/link": ("HOST", "OWNED")})
    with pytest.raises(RuntimeFailure):
        sandboxes.call(files.set_permissions, live, {"~/link": Permission(mode=777)})
    with pytest.raises(FileNotFound):
        sandboxes.call(files.search, live, "~/dirlink", "*")
    upload(sandboxes, live, "~/link", b"replaced the link")  # the link itself, replaced
    assert download(sandboxes, live, "~/link")[1] == b"replaced the link"
    sh(sandboxes, live, 'ln -sf "$1" ~/link2', target)
    sandboxes.call(files.delete_files, live, ["~/link2"])
    sandboxes.call(files.remove_directories, live, ["~/dirlink"])
    assert secret.read_text() == "HOST SECRET" and secret.stat().st_mode & 0o777 == 0o644


def test_a_big_upload_streams_through_with_memory_bounded(sandboxes: Sandboxes, live: Live) -> None:
    size, chunk = 64 << 20, bytes(range(256)) * 256  # 64 KiB

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(size // len(chunk)):
            yield chunk

    tracemalloc.start()
    try:
        sandboxes.call(filestream.upload, live, "~/big.bin", chunks(), Permission(mode=600))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak} bytes held for a {size}-byte upload"
    assert sh(sandboxes, live, "stat -c '%s %a' ~/big.bin") == f"{size} 600\n"
    data = download(sandboxes, live, "~/big.bin", range_header=f"bytes={size - 3}-")[1]
    assert data == chunk[-3:]


@pytest.mark.slow
def test_an_upload_cut_short_or_too_large_changes_nothing(sandboxes: Sandboxes, live: Live) -> None:
    sh(sandboxes, live, "echo original > ~/keep")

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise OSError("the client went away")

    with pytest.raises(OSError):
        sandboxes.call(filestream.upload, live, "~/keep", broken(), Permission())
    limit = live.handle.shape.limits.file_size_bytes

    async def huge() -> AsyncIterator[bytes]:
        for _ in range(limit // (1 << 20) + 1):
            yield bytes(1 << 20)

    with pytest.raises(InvalidFileContent):
        sandboxes.call(filestream.upload, live, "~/keep", huge(), Permission())
    assert sh(sandboxes, live, "cat ~/keep; ls -A ~") == "original\nkeep\n"  # no leftovers
