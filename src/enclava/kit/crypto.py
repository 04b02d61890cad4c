"""Keyed hashing, random tokens and authenticated encryption of secrets at rest."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


def random_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def keyed_hash(secret: str, value: str) -> str:
    """HMAC-SHA256 of ``value`` keyed with ``secret``, hex encoded (for API keys and tokens)."""
    return hmac.new(secret.encode(), value.encode(), hashlib.sha256).hexdigest()


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _fernet_key(material: str) -> bytes:
    # Any configured string becomes a valid Fernet key by hashing it; a raw Fernet key also works.
    return base64.urlsafe_b64encode(hashlib.sha256(material.encode()).digest())


class SecretBox:
    """Encrypts secrets at rest. The first key encrypts; older keys still decrypt (rotation).

    Tokens are Fernet (AES-128-CBC with HMAC-SHA256, random IV, timestamp): encrypting the same
    plaintext twice gives different tokens, so equal secrets cannot be spotted in the database.
    """

    def __init__(self, key: str, *old_keys: str) -> None:
        if not key:
            raise ValueError("an encryption key is required")
        self._primary = Fernet(_fernet_key(key))
        self._fernet = MultiFernet([self._primary, *(Fernet(_fernet_key(k)) for k in old_keys)])

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("secret cannot be decrypted with the configured keys") from exc

    def rotate(self, token: str) -> str:
        """Re-encrypt a token under the current key (``ValueError`` if no configured key fits)."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("secret cannot be decrypted with the configured keys") from exc

    def is_current(self, token: str) -> bool:
        """Whether ``token`` is already encrypted under the current (first) key."""
        try:
            self._primary.decrypt(token.encode())
        except InvalidToken:
            return False
        return True
