"""The output a PTY session keeps for replay (``baponi_core/_sandboxes/terminals.py``):
bounded, addressed by offsets from its first byte, each byte with its channel."""

from __future__ import annotations

from baponi_core._sandboxes.terminals import Channel, Output


def joined(output: Output, since: int) -> bytes:
    return b"".join(chunk.data for chunk in output.since(since))


def test_offsets_count_from_the_first_byte_and_channels_stay_apart() -> None:
    output = Output(limit=100)
    output.append(Channel.STDOUT, b"abc")
    output.append(Channel.STDOUT, b"def")  # joins the chunk before it
    output.append(Channel.STDERR, b"XY")
    assert output.end == 8 and output.start == 0
    assert [(c.offset, c.channel, c.data) for c in output.since(0)] == [
        (0, Channel.STDOUT, b"abcdef"),
        (6, Channel.STDERR, b"XY"),
    ]
    assert [(c.offset, c.data) for c in output.since(4)] == [(4, b"ef"), (6, b"XY")]
    assert output.since(8) == [] and output.since(50) == []


def test_only_the_last_limit_bytes_are_kept() -> None:
    output = Output(limit=10)
    written = b""
    for i in range(30):
        piece = bytes([65 + i % 26]) * (i % 4 + 1)
        output.append(Channel.STDOUT if i % 3 else Channel.STDERR, piece)
        written += piece
    assert output.end == len(written) and output.size == 10
    assert output.start == len(written) - 10
    assert joined(output, 0) == written[-10:]  # from the oldest kept, if later
    assert joined(output, output.end - 3) == written[-3:]


def test_a_change_wakes_who_waits() -> None:
    output = Output()
    before = output.changed
    output.append(Channel.STDOUT, b"x")
    assert before.is_set() and not output.changed.is_set()
