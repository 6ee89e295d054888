"""Values sealed at rest: AES-256-GCM under keys kept in one file of the home.

The key file (``connectors.keys``, mode 0600, made on first use) holds one key per line,
newest first; it is never in the database, so a copy of the database alone reveals
nothing. A sealed value is ``version (1) | key id (8) | nonce (12) | ciphertext+tag``,
with associated data binding it to its owner (a connector's and its organisation's
ids), so that a value copied onto another row does not open. The key id is derived from
the key, so a replaced key file is told apart from a damaged value.

Rotation adds a new key first (:meth:`Keyring.add_key`), re-seals every value with it,
then drops the older keys (:meth:`Keyring.keep_newest`): at every step the file holds a
key for every value stored.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from baponi_core._errors import CredentialError

VERSION = b"\x01"
KEY_ID_BYTES = 8
NONCE_BYTES = 12  # random per value: at most a few thousand values per key, far from 2**32
HEADER = len(VERSION) + KEY_ID_BYTES + NONCE_BYTES


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"baponi sealing key id\0" + key).digest()[:KEY_ID_BYTES]


class Keyring:
    """The keys of ``path``, read each time they are needed: a rotation or a replaced
    file takes effect at once, in the server as in the CLI."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def keys(self) -> list[bytes]:
        """The keys, newest first; raises CredentialError when the file is missing or unreadable."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd) as opened:
                if os.fstat(opened.fileno()).st_mode & 0o077:  # as ssh does with its keys
                    raise CredentialError(f"the key file {self.path} is open to others: chmod 600")
                text = opened.read()
            keys = [base64.urlsafe_b64decode(line) for line in text.split()]
        except (OSError, ValueError) as exc:
            raise CredentialError(f"the key file {self.path} cannot be read: {exc}") from None
        if not keys or any(len(key) != 32 for key in keys):
            raise CredentialError(f"the key file {self.path} holds no valid key")
        return keys

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        """``plaintext`` sealed with the newest key (the file is made if there is none)."""
        if not self.path.exists():
            self._first()
        key = self.keys()[0]
        nonce = secrets.token_bytes(NONCE_BYTES)
        return VERSION + key_id(key) + nonce + AESGCM(key).encrypt(nonce, plaintext, associated)

    def open(self, sealed: bytes, associated: bytes) -> bytes:
        """The plaintext of ``sealed``; CredentialError when no key of the file opens it."""
        if len(sealed) < HEADER + 16 or sealed[:1] != VERSION:
            raise CredentialError("the sealed value is damaged")
        wanted, nonce = sealed[1 : 1 + KEY_ID_BYTES], sealed[1 + KEY_ID_BYTES : HEADER]
        for key in self.keys():
            if key_id(key) == wanted:
                try:
                    return AESGCM(key).decrypt(nonce, sealed[HEADER:], associated)
                except InvalidTag:
                    raise CredentialError("the sealed value is damaged") from None
        raise CredentialError(f"the value was sealed with a key that {self.path} does not hold")

    def _first(self) -> None:
        """Make the file with a first key, unless another process just did: two making it
        at once must not each seal with a key of their own."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as out:
            out.write(_text([AESGCM.generate_key(bit_length=256)]))
            out.flush()
            os.fsync(out.fileno())

    def add_key(self) -> None:
        """Put a new key first; older ones stay, to open what they sealed."""
        existing = self.keys() if self.path.exists() else []
        self._write([AESGCM.generate_key(bit_length=256), *existing])

    def keep_newest(self) -> None:
        """Drop every key but the newest (once nothing is sealed with them any more)."""
        self._write(self.keys()[:1])

    def _write(self, keys: list[bytes]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = _text(keys)
        temporary = self.path.with_name(f"{self.path.name}.new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)


def _text(keys: list[bytes]) -> str:
    return "".join(f"{base64.urlsafe_b64encode(key).decode()}\n" for key in keys)
