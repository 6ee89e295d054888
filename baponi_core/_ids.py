"""Identifiers and API key secrets."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "sk-local-"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def new_trace_id() -> str:
    """``trc_`` and 16 URL-safe characters: matches the SDK's ``^trc_[a-zA-Z0-9_-]{1,20}$``."""
    return "trc_" + secrets.token_urlsafe(12)


def new_api_key() -> str:
    """``sk-<region>-<token>`` as Baponi's keys are; the token carries 256 bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: str) -> str:
    """Keys are random 256-bit tokens, so a plain SHA-256 is a sound, fast digest to store."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
