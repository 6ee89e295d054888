"""What the tools answer, as content blocks: an execution's text, a downloaded file."""

from __future__ import annotations

import base64

from mcp.types import ContentBlock, ImageContent, TextContent

from baponi_core._models import SandboxResult

INLINE_MAX_BYTES = 1 << 20  # files up to this size come with their content

# The formats chat clients show as images, by their first bytes (the name may lie).
IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def result_text(result: SandboxResult) -> str:
    """The result as the official SDK's ``result_to_llm_text`` writes it: stdout, a
    ``[stderr]`` block, ``[exit code: N]`` when non-zero, an ``[error]`` block, each only
    when present, or ``(no output)``."""
    parts: list[str] = []
    if result.stdout:
        parts.append(result.stdout)
    if result.stderr:
        parts.append(f"[stderr]\n{result.stderr}")
    if result.exit_code != 0:
        parts.append(f"[exit code: {result.exit_code}]")
    if result.error:
        parts.append(f"[error]\n{result.error}")
    return "\n\n".join(parts) if parts else "(no output)"


def image_type(data: bytes) -> str | None:
    for signature, mime_type in IMAGE_SIGNATURES:
        if data.startswith(signature):
            return mime_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def as_text(data: bytes) -> str | None:
    """The file as text, if it is UTF-8 without NUL bytes (which no text file holds)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\0" in text else text


def file_blocks(data: bytes | None) -> tuple[str | None, str, list[ContentBlock]]:
    """(MIME type, a description, the content blocks) of a file's bytes; ``data`` is None
    when the file is too large to be shown."""
    if data is None:
        return None, f"larger than {INLINE_MAX_BYTES >> 20} MiB, so not shown", []
    mime_type = image_type(data)
    if mime_type is not None:
        encoded = base64.b64encode(data).decode("ascii")
        return (
            mime_type,
            f"{mime_type}, shown below",
            [ImageContent(type="image", data=encoded, mime_type=mime_type)],
        )
    text = as_text(data)
    if text is None:
        return None, "binary, so not shown", []
    if not text:
        return "text/plain", "empty", []
    return "text/plain", "text, shown below", [TextContent(type="text", text=text)]
