"""Encryption at rest: MultiFernet keys, key rotation, and the generated key file."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from tokenfleet.crypto import Cipher, generate_key, load_or_create_key_file
from tokenfleet.errors import InvalidConfig


def test_old_keys_still_decrypt_and_rotate_moves_to_the_primary() -> None:
    old, new = generate_key(), generate_key()
    token = Cipher([old]).encrypt(b"payload")
    both = Cipher([new, old])
    assert both.decrypt(token) == b"payload"
    rotated = both.rotate(token)
    assert Cipher([new]).decrypt(rotated) == b"payload"
    with pytest.raises(InvalidConfig, match="cannot be decrypted"):
        Cipher([new]).decrypt(token)


def test_a_bad_key_names_its_position_and_not_its_value() -> None:
    with pytest.raises(InvalidConfig) as info:
        Cipher([generate_key(), "not-a-key-xyz"])
    assert "#2" in info.value.message and "not-a-key-xyz" not in info.value.message
    with pytest.raises(InvalidConfig):
        Cipher([])


def test_repr_shows_no_key() -> None:
    key = generate_key()
    assert key not in repr(Cipher([key]))


def test_first_run_creates_a_0600_key_file_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state" / "fernet.key"
    keys = load_or_create_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "created a new one" in caplog.text and str(path) in caplog.text
    assert keys[0] not in caplog.text
    assert load_or_create_key_file(path) == keys
    Cipher(keys)


def test_processes_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "fernet.key"
    results: list[list[str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(load_or_create_key_file(path)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({tuple(r) for r in results}) == 1
    assert not list(tmp_path.glob(".*tmp"))


def test_an_empty_key_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "fernet.key"
    path.write_text("\n")
    with pytest.raises(InvalidConfig, match="empty"):
        load_or_create_key_file(path)
