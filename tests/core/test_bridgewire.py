"""What the kernel bridge may say (``_sandboxes/bridgewire.py``): each of its messages
parses, and anything else a replaced bridge could write is refused as a whole line."""

from __future__ import annotations

import json

import pytest

from baponi_core._sandboxes import bridgewire as wire


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ({"kind": "ready"}, wire.Ready),
        ({"kind": "status", "state": "busy"}, wire.Status),
        ({"kind": "count", "count": 3}, wire.Count),
        ({"kind": "stream", "name": "stderr", "text": "x\n"}, wire.StreamText),
        ({"kind": "data", "data": {"text/plain": "2", "image/png": "iVBO"}}, wire.Data),
        ({"kind": "error", "ename": "E", "evalue": "v", "traceback": ["t"]}, wire.Error),
        ({"kind": "reply", "status": "ok", "count": None}, wire.Reply),
        ({"kind": "died", "message": "gone"}, wire.Died),
    ],
)
def test_each_message_of_the_bridge_parses(line: dict[str, object], kind: type) -> None:
    assert isinstance(wire.parse_line(json.dumps(line).encode()), kind)


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'"ready"',
        b'{"kind": "ready"',
        b'{"kind": "shell", "command": "rm -rf /"}',
        b'{"state": "busy"}',
        b'{"kind": "status"}',
        b'{"kind": "count", "count": -1}',
        b'{"kind": "count", "count": "3"}',
        b'{"kind": "stream", "name": "stdin", "text": "x"}',
        b'{"kind": "stream", "name": "stdout", "text": 7}',
        b'{"kind": "data", "data": ["text/plain"]}',
        b'{"kind": "error", "ename": "E", "evalue": "v", "traceback": "not a list"}',
        b'{"kind": "reply", "status": "ok", "count": -2}',
        b"\xff\xfe",
    ],
)
def test_anything_else_is_refused(line: bytes) -> None:
    assert wire.parse_line(line) is None


def test_names_and_mime_maps_are_bounded() -> None:
    long_name = {"kind": "error", "ename": "E" * 1025, "evalue": "", "traceback": []}
    assert wire.parse_line(json.dumps(long_name).encode()) is None
    many = {"kind": "data", "data": {f"type/{n}": "" for n in range(65)}}
    assert wire.parse_line(json.dumps(many).encode()) is None
    fine = {"kind": "data", "data": {f"type/{n}": "" for n in range(64)}}
    assert isinstance(wire.parse_line(json.dumps(fine).encode()), wire.Data)
