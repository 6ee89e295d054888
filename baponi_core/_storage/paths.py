"""Paths from requests: relative to a storage root, normalised, and never able to leave it."""

from __future__ import annotations

from baponi_core._errors import ValidationError

MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255


def parts(path: str | None, *, allow_root: bool = False) -> tuple[str, ...]:
    """The components of ``path``: ``a//b/./c/`` is ``("a", "b", "c")``. Absolute paths,
    ``..``, NUL, backslashes and control characters are refused, never resolved."""
    if path is None:
        if allow_root:
            return ()
        raise ValidationError("path is required")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError("path must be valid UTF-8") from None
    if "\\" in path or any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise ValidationError("path must not contain NUL, backslashes or control characters")
    if path.startswith("/"):
        raise ValidationError("path must be relative to the storage root (no leading '/')")
    if size > MAX_PATH_BYTES:
        raise ValidationError(f"path exceeds maximum of {MAX_PATH_BYTES} bytes")
    found = tuple(p for p in path.split("/") if p not in ("", "."))
    if ".." in found:
        raise ValidationError("path must not contain '..' segments")
    if any(len(p.encode()) > MAX_NAME_BYTES for p in found):
        raise ValidationError(f"a path segment exceeds {MAX_NAME_BYTES} bytes")
    if not found and not allow_root:
        raise ValidationError("path must name a file")
    return found
