"""API keys: `vsk_<key id>_<secret>`. Only a SHA-256 of the secret is stored.

The secret carries 256 bits of randomness, so a fast hash is safe here (unlike passwords);
the key id lets us find the row without scanning.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from vectorsvc.db.tables import ApiKey, Workspace
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


@dataclass(frozen=True)
class VerifiedKey:
    key_id: str
    workspace_id: str
    workspace_name: str


class ApiKeyCache:
    """Keys verified lately, so a request needs no database read to authenticate.

    Entries are keyed by a SHA-256 of the whole presented key (never the key itself) and
    live `ttl_s` seconds: a key revoked by another process (`vectorsvc keys revoke`) stops
    working within that. Only successes are remembered; `ttl_s=0` turns the cache off.
    """

    def __init__(self, *, ttl_s: float, max_entries: int = 10_000) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[VerifiedKey, float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _digest(plaintext: str) -> str:
        return hashlib.sha256(plaintext.encode()).hexdigest()

    def get(self, plaintext: str) -> VerifiedKey | None:
        if self._ttl_s <= 0:
            return None
        digest = self._digest(plaintext)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if time.monotonic() >= entry[1]:
                del self._entries[digest]
                return None
            return entry[0]

    def put(self, plaintext: str, key: VerifiedKey) -> None:
        if self._ttl_s <= 0:
            return
        digest = self._digest(plaintext)
        with self._lock:
            self._entries[digest] = (key, time.monotonic() + self._ttl_s)
            self._entries.move_to_end(digest)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
