"""Request and response bodies of the auth API (unknown fields are rejected)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Username = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{3,32}$")]
NewPassword = Annotated[str, StringConstraints(min_length=8, max_length=128)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegisterRequest(_Strict):
    """``POST /api/auth/register``."""

    username: Username = Field(description="3-32 of A-Z a-z 0-9 _ . -; unique in any letter case")
    password: NewPassword = Field(description="8-128 characters")


class LoginRequest(_Strict):
    """``POST /api/auth/login``. Names that could not be registered just fail to log in (401)."""

    username: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class RefreshRequest(_Strict):
    """``POST /api/auth/refresh``."""

    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=512)]


class RegisterResponse(_Strict):
    """201 to a registration."""

    user_id: uuid.UUID
    username: str


class TokenResponse(_Strict):
    """200 to a login or refresh."""

    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 (a scheme name, not a secret)
    expires_in: int = Field(description="seconds until the access token expires")
    refresh_token: str
