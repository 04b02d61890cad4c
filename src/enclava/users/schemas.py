from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class UserUpdate(BaseModel):
    """What an administrator can change; omitted fields stay as they are."""

    full_name: str | None = Field(default=None, max_length=200)
    role: Literal["admin", "user"] | None = None
    is_active: bool | None = None
    # A password reset: signs the user out everywhere.
    password: str | None = Field(default=None, min_length=8, max_length=1024)


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)
