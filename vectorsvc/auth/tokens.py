"""The seam for browser access tokens (`Authorization: Bearer <access_token>`).

Sign-in (`vectorsvc.accounts`) issues tokens; this module only defines how the auth
dependency asks whether a bearer token is a live access token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class TokenIdentity:
    workspace_id: str
    workspace_name: str
    user_id: str


class AccessTokenVerifier(Protocol):
    def verify(self, token: str) -> TokenIdentity | None:
        """The identity behind a live access token, or None."""

    def looks_like_access_token(self, token: str) -> bool:
        """Whether `token` has the shape of an access token (for precise error messages)."""
