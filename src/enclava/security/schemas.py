from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

SECRET_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,99}$"  # noqa: S105 - a name pattern


class AppSecretWrite(BaseModel):
    secret: str = Field(min_length=1, max_length=8192)


class AppSecretRead(BaseModel):
    """What the API tells about a secret: never its value."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    created_at: datetime
    updated_at: datetime
