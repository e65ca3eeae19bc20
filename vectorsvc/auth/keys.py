"""API keys: `vsk_<key id>_<secret>`. Only a SHA-256 of the secret is stored.

The secret carries 256 bits of randomness, so a fast hash is safe here (unlike passwords);
the key id lets us find the row without scanning.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from vectorsvc.db.models import ApiKey, Workspace
from vectorsvc.errors import NotFound

KEY_PREFIX = "vsk_"
_ID_LEN = 16


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    workspace_id: str
    plaintext: str  # shown once, never stored


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_api_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


def create_api_key(session: Session, *, workspace: Workspace, label: str = "") -> IssuedKey:
    key_id = secrets.token_hex(_ID_LEN // 2)
    secret = secrets.token_urlsafe(32)
    session.add(
        ApiKey(id=key_id, workspace_id=workspace.id, secret_hash=_hash(secret), label=label)
    )
    session.flush()
    return IssuedKey(
        key_id=key_id, workspace_id=workspace.id, plaintext=f"{KEY_PREFIX}{key_id}_{secret}"
    )


def verify_api_key(session: Session, plaintext: str) -> ApiKey | None:
    """The live key row for `plaintext`, or None (unknown, malformed or revoked)."""
    if not plaintext.startswith(KEY_PREFIX):
        return None
    rest = plaintext.removeprefix(KEY_PREFIX)
    key_id, sep, secret = rest[:_ID_LEN], rest[_ID_LEN : _ID_LEN + 1], rest[_ID_LEN + 1 :]
    if sep != "_" or not secret:
        return None
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.secret_hash, _hash(secret)):
        return None
    return row


def revoke_api_key(session: Session, *, key_id: str) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"API key {key_id!r} does not exist", field="key_id")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
    return row
