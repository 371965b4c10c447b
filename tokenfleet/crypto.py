"""Encryption at rest: MultiFernet over the configured keys, and the key file fallback.

The first key encrypts; every key decrypts, so a new key can be put in front and the
old ones retired once :meth:`Cipher.rotate` has re-encrypted what is stored.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import InvalidConfig

log = logging.getLogger(__name__)


class Cipher:
    """Encrypts and decrypts payloads; holds keys and never shows them."""

    def __init__(self, keys: Sequence[bytes | str]) -> None:
        if not keys:
            raise InvalidConfig("at least one encryption key is needed", field="encryption_keys")
        fernets = []
        for index, key in enumerate(keys):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                raise InvalidConfig(
                    f"encryption key #{index + 1} is not a valid Fernet key "
                    "(32 url-safe base64-encoded bytes)",
                    field="encryption_keys",
                ) from None
        self._fernet = MultiFernet(fernets)
        self.key_count = len(fernets)

    def encrypt(self, payload: bytes) -> bytes:
        return self._fernet.encrypt(payload)

    def decrypt(self, token: bytes) -> bytes:
        try:
            return self._fernet.decrypt(token)
        except InvalidToken:
            raise InvalidConfig(
                "stored secret cannot be decrypted with any configured key "
                "(was a key removed before 'tokenfleet keys rotate' ran?)",
                field="encryption_keys",
            ) from None

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt ``token`` under the primary key."""
        return self._fernet.rotate(token)

    def __repr__(self) -> str:
        return f"<Cipher keys={self.key_count}>"


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


def load_or_create_key_file(path: Path) -> list[str]:
    """Read keys (one per line, primary first) from ``path``, creating it 0600 if absent."""
    if path.exists():
        keys = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not keys:
            raise InvalidConfig(f"key file {path} is empty", field="key_file")
        return keys
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    # Write aside, then hard-link into place: the link fails if another process won the
    # race, and nobody ever reads a half-written file.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)  # mkstemp creates it 0600
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        return load_or_create_key_file(path)
    finally:
        tmp.unlink(missing_ok=True)
    log.warning(
        "no encryption key configured: created a new one in %s (mode 0600). "
        "Back it up; without it stored secrets cannot be read.",
        path,
    )
    return [key]
