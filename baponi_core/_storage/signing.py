"""Signed URLs for the local backend: an HMAC over everything the URL grants.

A token is ``<key id>.<payload>.<mac>``; the payload (base64url JSON) names the method, the
storage root, the path, the exact size of an upload and the expiry, so changing any of them
breaks the MAC. Keys live in one file under the server home, newest first: rotating adds a
key and keeps the old ones verifying until the URLs they signed have expired.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from baponi_core._errors import Forbidden

KEEP_KEYS = 3  # the newest signs; older ones only verify


Method = Literal["GET", "PUT"]  # what a signed URL allows


@dataclass(frozen=True)
class Grant:
    """What a valid token allows."""

    method: Method
    root: tuple[str, ...]  # e.g. ("thread", org_id, thread_id)
    path: str
    size: int | None  # exact byte count of an upload
    expires: int


class UrlSigner:
    """Signs with the newest key of ``path``; re-reads the file when it changes, so a
    rotation by the CLI takes effect in a running server."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: int | None = None
        self._keys: list[tuple[str, bytes]] = []

    @classmethod
    def load(cls, path: Path) -> UrlSigner:
        """The signer of ``path``, whose first key is made (mode 0600) on first use."""
        if not path.exists():
            cls._write(path, [_new_key()])
        signer = cls(path)
        signer.keys  # noqa: B018 (read now: a broken file should fail the start)
        return signer

    @property
    def keys(self) -> list[tuple[str, bytes]]:
        changed = self.path.stat().st_mtime_ns
        if changed != self._seen:
            keys = []
            for line in self.path.read_text().split():
                kid, _, secret = line.partition(":")
                keys.append((kid, base64.urlsafe_b64decode(secret)))
            if not keys:
                raise ValueError(f"no signing key in {self.path}")
            self._keys, self._seen = keys, changed
        return self._keys

    @classmethod
    def rotate(cls, path: Path) -> str:
        """Add a new signing key (keeping the previous ones for verification); its id."""
        key = _new_key()
        cls._write(path, [key, *cls.load(path).keys][:KEEP_KEYS])
        return key[0]

    @staticmethod
    def _write(path: Path, keys: list[tuple[str, bytes]]) -> None:
        text = "".join(f"{kid}:{base64.urlsafe_b64encode(k).decode()}\n" for kid, k in keys)
        temporary = path.with_suffix(".new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(temporary, path)

    def sign(self, grant: Grant) -> str:
        kid, key = self.keys[0]
        payload = {
            "m": grant.method,
            "r": list(grant.root),
            "p": grant.path,
            "n": grant.size,
            "e": grant.expires,
        }
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{kid}.{body}.{_mac(key, kid, body).decode()}"

    def verify(self, token: str, method: str) -> Grant:
        """The grant of ``token`` if it is intact, unexpired and for ``method``."""
        kid, _, rest = token.partition(".")
        body, _, mac = rest.partition(".")
        key = dict(self.keys).get(kid)
        # Bytes, not str: compare_digest raises on a str with a non-ASCII character, and a
        # token is whatever the URL's path held.
        if key is None or not hmac.compare_digest(_mac(key, kid, body), _utf8(mac)):
            raise Forbidden("signature does not match")
        payload: dict[str, Any] = json.loads(_unb64(body))
        grant = Grant(
            method=payload["m"],
            root=tuple(payload["r"]),
            path=payload["p"],
            size=payload["n"],
            expires=payload["e"],
        )
        if grant.expires < time.time():
            raise Forbidden("this signed URL has expired")
        if grant.method != method:
            raise Forbidden(f"this URL is signed for {grant.method}, not {method}")
        return grant


def _new_key() -> tuple[str, bytes]:
    return secrets.token_hex(4), secrets.token_bytes(32)


def _mac(key: bytes, kid: str, body: str) -> bytes:
    digest = hmac.new(key, _utf8(f"{kid}.{body}"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=")


def _utf8(text: str) -> bytes:
    """Any str as bytes, lone surrogates included (a decoded URL may hold them)."""
    return text.encode("utf-8", "surrogatepass")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
