"""Short-lived JWT access tokens (PyJWT, HS256 with the secret key)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import jwt

from enclava.errors import AuthenticationError
from enclava.kit.time import utcnow

ALGORITHM = "HS256"
ISSUER = "enclava"
AUDIENCE = "enclava-internal"


def create_access_token(secret: str, user_id: uuid.UUID, ttl_s: int) -> str:
    now = utcnow()
    claims = {
        "sub": str(user_id),
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(seconds=ttl_s),
        "jti": uuid.uuid4().hex,
        "typ": "access",
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def decode_access_token(secret: str, token: str) -> uuid.UUID:
    """Return the user id of a valid access token; anything else is a 401."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],  # pinned: "none" and asymmetric-key confusion are refused
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "sub", "iat", "typ"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthenticationError("Access token expired", code="token_expired")
    except jwt.PyJWTError:
        raise AuthenticationError("Invalid access token", code="invalid_token")
    if claims.get("typ") != "access":
        raise AuthenticationError("Invalid access token", code="invalid_token")
    try:
        return uuid.UUID(str(claims["sub"]))
    except ValueError:
        raise AuthenticationError("Invalid access token", code="invalid_token")
