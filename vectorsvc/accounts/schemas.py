"""Request and response bodies of `/api/auth/*`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from vectorsvc.accounts.service import MAX_PASSWORD_LENGTH


class SignIn(BaseModel):
    email: str = Field(min_length=1, max_length=320)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)
    workspace: str | None = Field(
        default=None, max_length=100, description="Workspace name; default: your first one"
    )


class Refresh(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=200)


class UserPublic(BaseModel):
    id: str
    email: str


class WorkspacePublic(BaseModel):
    id: str
    name: str


class TokenPair(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires")
    refresh_token: str
    user: UserPublic
    workspace: WorkspacePublic


class Me(BaseModel):
    user: UserPublic
    workspace: WorkspacePublic
