"""Short-lived JWT access tokens (PyJWT, HS256 with the secret key).

Claims carry identifiers only. The user is loaded from the database on every request, so a
role change, a disabled account or a deleted one takes effect at once, whatever the token says.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt

from enclava.errors import AuthenticationError
from enclava.kit.time import utcnow

ALGORITHM = "HS256"
ISSUER = "enclava"
AUDIENCE = "enclava-internal"


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: uuid.UUID
    # The refresh-token family (sign-in session) the token belongs to; None for dashboard cookies.
    session_id: uuid.UUID | None


def create_access_token(
    secret: str, user_id: uuid.UUID, ttl_s: int, *, session_id: uuid.UUID | None = None
) -> str:
    now = utcnow()
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(seconds=ttl_s),
        "jti": uuid.uuid4().hex,
        "typ": "access",
    }
    if session_id is not None:
        claims["sid"] = str(session_id)
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def decode_access_claims(secret: str, token: str) -> AccessClaims:
    """The claims of a valid access token; anything else is a 401."""
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
        user_id = uuid.UUID(str(claims["sub"]))
        sid = claims.get("sid")
        session_id = uuid.UUID(str(sid)) if sid is not None else None
    except ValueError:
        raise AuthenticationError("Invalid access token", code="invalid_token")
    return AccessClaims(user_id=user_id, session_id=session_id)


def decode_access_token(secret: str, token: str) -> uuid.UUID:
    """Return the user id of a valid access token; anything else is a 401."""
    return decode_access_claims(secret, token).user_id
