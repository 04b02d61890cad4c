from __future__ import annotations

from typing import Any

import pytest

from enclava.auth import passwords


def test_production_hasher_is_argon2id_with_strong_parameters(
    cheap_password_hashing: Any,
) -> None:
    hasher = cheap_password_hashing
    encoded = hasher.hash("a password")
    assert encoded.startswith("$argon2id$")
    # At least the OWASP minimum for Argon2id (19 MiB, 2 iterations).
    assert hasher.memory_cost >= 19 * 1024 and hasher.time_cost >= 2


def test_verify_and_rehash_rules() -> None:
    encoded = passwords.hash_password("s3cret passphrase")
    assert passwords.verify_password(encoded, "s3cret passphrase")
    assert not passwords.verify_password(encoded, "s3cret passphrasE")
    # Unknown users are checked against a dummy hash: same work, always False.
    assert not passwords.verify_password(None, "enclava-timing-equaliser")
    assert not passwords.verify_password("not-a-hash", "x")
    assert not passwords.needs_rehash(encoded)


@pytest.mark.parametrize("password", ["", "x" * 1024, "pässwörd ✓"])
def test_any_string_round_trips(password: str) -> None:
    assert passwords.verify_password(passwords.hash_password(password), password)
