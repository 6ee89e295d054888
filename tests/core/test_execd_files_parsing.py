"""The pure parts of execd's files, as properties: a ``Range`` header gives a span inside
the file or a 416, never anything else; what ``find -printf`` says is read exactly or
refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baponi_core._sandboxes.errors import RangeNotSatisfiable, RuntimeFailure
from baponi_core._sandboxes.filesinfo import FileType, parse
from baponi_core._sandboxes.filestream import byte_range

RECORD = b"f\x00%d\x001700000000.5\x000\x001700000001.25\x00baponi\x00baponi\x00644\x00%s\x00"


@given(st.text(max_size=40), st.integers(min_value=0, max_value=1 << 40))
def test_any_range_header_is_a_span_inside_the_file_or_a_416(header: str, size: int) -> None:
    try:
        span = byte_range(header, size)
    except RangeNotSatisfiable:
        return
    assert 0 <= span.start <= span.last < size and span.length >= 1


@given(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=1, max_value=10**6),
)
def test_well_formed_ranges_select_what_they_say(a: int, b: int, size: int) -> None:
    first, last = min(a, b), max(a, b)
    if first >= size:
        with pytest.raises(RangeNotSatisfiable):
            byte_range(f"bytes={first}-{last}", size)
        return
    span = byte_range(f"bytes={first}-{last}", size)
    assert (span.start, span.last) == (first, min(last, size - 1))
    suffix = byte_range(f"bytes=-{b + 1}", size)
    assert suffix.last == size - 1 and suffix.length == min(b + 1, size)


@given(st.binary(min_size=1, max_size=300).filter(lambda p: b"\0" not in p))
def test_a_record_is_read_exactly(path: bytes) -> None:
    (found,) = parse(RECORD % (42, path))
    assert found.type is FileType.FILE and found.size == 42 and found.mode == 644
    assert found.path == path.decode(errors="replace")
    assert found.modified_at.timestamp() == 1700000000.5
    assert found.created_at.timestamp() == 1700000001.25  # no birth time: the change time


@given(st.binary(max_size=200))
def test_anything_else_a_sandbox_could_print_is_read_or_refused(output: bytes) -> None:
    try:
        found = parse(output)
    except RuntimeFailure:
        return
    for info in found:  # what is accepted is well formed
        assert (
            info.size >= 0 and str(info.mode).isdigit() and set(str(info.mode)) <= set("01234567")
        )


@pytest.mark.parametrize(
    "forged",
    [
        RECORD % (42, b"/x") + b"f\x00",  # a record cut short
        (RECORD % (42, b"/x")).replace(b"644", b"9z9"),
        (RECORD % (42, b"/x")).replace(b"baponi", b"root:0", 1),
        (RECORD % (42, b"/x")).replace(b"1700000000.5", b"soon"),
        b"f\x00-1\x00" + (RECORD % (42, b"/x")).split(b"\x00", 2)[2],
    ],
)
def test_forged_records_are_refused(forged: bytes) -> None:
    with pytest.raises(RuntimeFailure):
        parse(forged)
