"""Request paths of the Files API: relative, normalised, and never able to leave their root."""

from __future__ import annotations

import json
import os

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from baponi_core._errors import ValidationError
from baponi_core._storage.paths import MAX_NAME_BYTES, MAX_PATH_BYTES, parts
from tests.harness import Server, unique

ROOT = "/srv/storage/root"
FORBIDDEN_CHARS = {"/", "\x00", "\\"}

# Dense in the characters that matter, plus anything at all (lone surrogates included: JSON
# can carry them).
tricky = st.sampled_from(["a", "b", ".", "/", "\\", "\x00", "\n", "\x7f", "é", "\ud800", " "])
# Paths built from segments, so that '..', '.', empty and odd segments meet often.
segmented = st.builds(
    lambda lead, names: lead + "/".join(names),
    st.sampled_from(["", "", "/", "./", "//"]),
    st.lists(
        st.sampled_from(["a", "b", "", ".", "..", "...", "a..", "é", "a b"])
        | st.text(alphabet=tricky, max_size=3),
        max_size=6,
    ),
)
paths = (
    segmented
    | st.text(alphabet=tricky, max_size=24)
    | st.text(max_size=24)
    | st.text(alphabet=st.characters(codec=None), max_size=12)
)
segments = st.text(
    alphabet=st.characters(
        blacklist_characters="/\\\x7f", blacklist_categories=("Cc", "Cs"), codec="utf-8"
    ),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))
separators = st.sampled_from(["/", "//", "/./", "/././/"])


def check_components(found: tuple[str, ...]) -> None:
    """What every accepted path must be: plain names that stay below the root."""
    for name in found:
        assert name not in ("", ".", "..")
        assert not FORBIDDEN_CHARS & set(name)
        assert all(ord(c) >= 32 and ord(c) != 127 for c in name)
        assert len(name.encode()) <= MAX_NAME_BYTES
    joined = os.path.normpath(os.path.join(ROOT, *found))
    assert os.path.commonpath([ROOT, joined]) == ROOT
    assert len(joined) - len(ROOT) == len("/".join(found)) + (1 if found else 0)


@given(path=paths, allow_root=st.booleans())
@example(path="a//b/./c", allow_root=False)
@example(path="./", allow_root=True)
@example(path="..a/b..", allow_root=False)
@settings(max_examples=400, deadline=None)
def test_parts_refuses_or_gives_safe_components(path: str, allow_root: bool) -> None:
    try:
        found = parts(path, allow_root=allow_root)
    except ValidationError as exc:
        assert exc.message
        return
    assert isinstance(found, tuple)
    check_components(found)
    if not allow_root:
        assert found, "an empty path must not name a file"
    # Normalised form is a fixed point: parsing the joined components gives them back.
    assert parts("/".join(found), allow_root=True) == found


@given(names=st.lists(segments, min_size=1, max_size=6), data=st.data())
@settings(max_examples=200, deadline=None)
def test_redundant_separators_and_dots_normalise_away(
    names: list[str], data: st.DataObject
) -> None:
    path = names[0]
    for name in names[1:]:
        path += data.draw(separators) + name
    if data.draw(st.booleans()):
        path = "./" + path
    if data.draw(st.booleans()):
        path += data.draw(st.sampled_from(["/", "/.", "//"]))
    if len(path.encode()) > MAX_PATH_BYTES:
        return
    assert parts(path) == tuple(names)


@given(names=st.lists(segments, min_size=0, max_size=4), position=st.integers(0, 4))
@settings(max_examples=200, deadline=None)
def test_any_dotdot_segment_is_refused(names: list[str], position: int) -> None:
    names.insert(min(position, len(names)), "..")
    with pytest.raises(ValidationError, match=r"'\.\.'"):
        parts("/".join(names), allow_root=True)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a//b/./c", ("a", "b", "c")),
        ("a//b/./c/", ("a", "b", "c")),
        ("./a", ("a",)),
        ("a/./././b//", ("a", "b")),
        ("..a/b../...", ("..a", "b..", "...")),
        ("données/ü.txt", ("données", "ü.txt")),
        ("x" * MAX_NAME_BYTES, ("x" * MAX_NAME_BYTES,)),
    ],
)
def test_accepted_examples(path: str, expected: tuple[str, ...]) -> None:
    assert parts(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "../x",
        "..",
        "a/..",
        "a/../b",
        "./../x",
        "/x",
        "//x",
        "/",
        "a\\b",
        "..\\x",
        "a\x00b",
        "a\nb",
        "a\tb",
        "a\x7fb",
        "a\x1bb",
        "\ud800",
        "x" * (MAX_NAME_BYTES + 1),
        "é" * 128,  # 128 characters, 256 bytes
        "a/" * (MAX_PATH_BYTES // 2) + "b",
    ],
)
def test_refused_examples(path: str) -> None:
    for allow_root in (False, True):
        with pytest.raises(ValidationError):
            parts(path, allow_root=allow_root)


@pytest.mark.parametrize("path", [None, "", ".", "./", ".//", "./."])
def test_empty_paths_name_the_root_only_where_allowed(path: str | None) -> None:
    assert parts(path, allow_root=True) == ()
    with pytest.raises(ValidationError):
        parts(path)


def test_path_length_limit_counts_bytes() -> None:
    longest = "/".join(["é" * 100] * 5) + "/" + "a" * (MAX_PATH_BYTES - 5 * 201)
    assert len(longest.encode()) == MAX_PATH_BYTES
    assert len(parts(longest)) == 6
    with pytest.raises(ValidationError, match="maximum of 1024 bytes"):
        parts(longest + "a")


# -- the same rules at the server -------------------------------------------------------------


@pytest.fixture(scope="module")
def thread(server: Server) -> str:
    """A thread that exists (an upload URL makes its home) and holds no files."""
    thread_id = unique("paths")
    with server.client() as api:
        made = api.post(
            "/v1/files/upload_url", json={"id": thread_id, "path": "x", "content_length": 1}
        )
    assert made.status_code == 200, made.text
    return thread_id


@given(path=paths)
@example(path="\ud800")
@example(path="a/../../etc/passwd")
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_server_applies_the_same_rules(api: httpx.Client, thread: str, path: str) -> None:
    """The server refuses exactly the paths ``parts`` refuses, with its message; an accepted
    path that holds nothing is a clean 404, never a 500 or a file from elsewhere."""
    try:
        parts(path)
        refusal = None
    except ValidationError as exc:
        refusal = exc.message
    # ensure_ascii: a lone surrogate travels as a JSON escape, as any client may send it
    payload = json.dumps({"id": thread, "path": path})
    response = api.post(
        "/v1/files/download_url", content=payload, headers={"Content-Type": "application/json"}
    )
    body = response.json()
    assert set(body) == {"error", "message"}, response.text
    if refusal is not None:
        assert response.status_code == 400, response.text
        assert body == {"error": "validation_error", "message": refusal}
    else:
        assert response.status_code == 404, response.text
        assert body["error"] == "not_found"
