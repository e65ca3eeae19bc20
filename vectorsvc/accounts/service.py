"""Users and browser sessions: password sign-in, rotating refresh tokens, revocation.

Tokens are opaque random strings with a visible prefix (`vsat_` access, `vsrt_` refresh);
only their SHA-256 is stored. 256 random bits make a fast hash safe for them, unlike
passwords, which get argon2id. No HTTP in here.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session

from vectorsvc.auth.tokens import TokenIdentity
from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.db.tables import Membership, User, UserSession, Workspace, utcnow
from vectorsvc.errors import Conflict, Forbidden, NotFound, Unauthenticated, ValidationFailed

ACCESS_TOKEN_PREFIX = "vsat_"
REFRESH_TOKEN_PREFIX = "vsrt_"
MIN_PASSWORD_LENGTH = 8
# argon2 takes any length; a bound keeps a huge body from being hashed at all.
MAX_PASSWORD_LENGTH = 1024
_EMAIL_RULE = re.compile(r"^[^@\s]+@[^@\s]+$")

# argon2id with the library defaults (RFC 9106 low-memory profile: t=3, m=64 MiB, p=4).
_hasher = PasswordHasher()

INVALID_CREDENTIALS = "the email or password is wrong"


@dataclass(frozen=True)
class TokenLifetimes:
    access: timedelta
    refresh: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenLifetimes:
        return cls(
            access=timedelta(seconds=settings.access_token_ttl_s),
            refresh=timedelta(seconds=settings.refresh_token_ttl_s),
        )


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    refresh_token: str
    expires_in: int  # seconds the access token lives
    user: User
    workspace: Workspace


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(10)}"


# -- users -----------------------------------------------------------------------------


def normalize_email(email: str) -> str:
    return email.strip().lower()


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationFailed(
            f"password must have at least {MIN_PASSWORD_LENGTH} characters",
            field="password",
            code="weak_password",
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValidationFailed(
            f"password must have at most {MAX_PASSWORD_LENGTH} characters",
            field="password",
            code="invalid_password",
        )
    return _hasher.hash(password)


def _password_matches(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@cache
def _dummy_hash() -> str:
    return _hasher.hash("no user has this password")


def create_user(session: Session, *, email: str, password: str, workspace: Workspace) -> User:
    """A new user who is a member of `workspace`."""
    normalized = normalize_email(email)
    if len(normalized) > 320 or not _EMAIL_RULE.match(normalized):
        raise ValidationFailed(
            f"{email!r} is not an email address (expected name@domain)",
            field="email",
            code="invalid_email",
        )
    if session.scalar(select(User).where(User.email == normalized)) is not None:
        raise Conflict(
            f"a user with email {normalized!r} already exists", field="email", code="user_exists"
        )
    user = User(id=_new_id("usr_"), email=normalized, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    add_membership(session, user=user, workspace=workspace)
    return user


def add_membership(session: Session, *, user: User, workspace: Workspace) -> None:
    if session.get(Membership, (user.id, workspace.id)) is None:
        session.add(Membership(user_id=user.id, workspace_id=workspace.id))
        session.flush()


def get_user(session: Session, *, user_id: str) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id!r} does not exist", field="user_id")
    return user


def _workspaces_of(session: Session, *, user_id: str) -> list[Workspace]:
    stmt = (
        select(Workspace)
        .join(Membership, Membership.workspace_id == Workspace.id)
        .where(Membership.user_id == user_id)
        .order_by(Membership.created_at, Workspace.name)
    )
    return list(session.scalars(stmt))


# -- sessions --------------------------------------------------------------------------


def _issue(
    session: Session,
    *,
    user: User,
    workspace: Workspace,
    family_id: str,
    lifetimes: TokenLifetimes,
    now: datetime,
) -> IssuedTokens:
    access = ACCESS_TOKEN_PREFIX + secrets.token_urlsafe(32)
    refresh = REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(
        UserSession(
            id=_new_id("ses_"),
            family_id=family_id,
            user_id=user.id,
            workspace_id=workspace.id,
            access_token_hash=_token_hash(access),
            access_expires_at=now + lifetimes.access,
            refresh_token_hash=_token_hash(refresh),
            refresh_expires_at=now + lifetimes.refresh,
            created_at=now,
        )
    )
    session.flush()
    return IssuedTokens(
        access_token=access,
        refresh_token=refresh,
        expires_in=int(lifetimes.access.total_seconds()),
        user=user,
        workspace=workspace,
    )


def sign_in(
    session: Session,
    *,
    email: str,
    password: str,
    workspace: str | None,
    lifetimes: TokenLifetimes,
    now: datetime | None = None,
) -> IssuedTokens:
    """Check the password and open a session in `workspace` (default: the user's first)."""
    now = now or utcnow()
    user = session.scalar(select(User).where(User.email == normalize_email(email)))
    if user is None:
        # Hash anyway so an unknown email costs as long as a wrong password.
        _password_matches(_dummy_hash(), password)
        raise Unauthenticated(INVALID_CREDENTIALS, code="invalid_credentials")
    if not _password_matches(user.password_hash, password):
        raise Unauthenticated(INVALID_CREDENTIALS, code="invalid_credentials")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)

    workspaces = _workspaces_of(session, user_id=user.id)
    if not workspaces:
        raise Forbidden("this user is not a member of any workspace", code="no_workspace")
    chosen = workspaces[0]
    if workspace is not None:
        matches = [w for w in workspaces if w.name == workspace]
        if not matches:
            names = ", ".join(repr(w.name) for w in workspaces)
            raise Forbidden(
                f"you are not a member of workspace {workspace!r}; your workspaces: {names}",
                field="workspace",
                code="not_a_member",
            )
        chosen = matches[0]

    # Housekeeping: this user's fully expired sessions are of no use to anyone.
    session.execute(
        delete(UserSession).where(
            UserSession.user_id == user.id, UserSession.refresh_expires_at < now
        )
    )
    return _issue(
        session,
        user=user,
        workspace=chosen,
        family_id=_new_id("sfm_"),
        lifetimes=lifetimes,
        now=now,
    )


def _revoke_family(session: Session, *, family_id: str, now: datetime) -> None:
    session.execute(
        update(UserSession)
        .where(UserSession.family_id == family_id, UserSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )


def refresh_session(
    db: Database,
    *,
    refresh_token: str,
    lifetimes: TokenLifetimes,
    now: datetime | None = None,
    admit_user: Callable[[str], None] | None = None,
) -> IssuedTokens:
    """Trade a live refresh token for a new pair; the old pair stops working.

    Presenting a refresh token that was already traded means two parties hold it (one
    stole it), so the whole session is revoked. Takes the `Database` because that
    revocation must be committed even though the call then fails. `admit_user` (a
    per-user rate limit) may refuse a live token before it is rotated, so that it stays
    usable.
    """
    now = now or utcnow()
    invalid = Unauthenticated(
        "the refresh token is not valid (unknown, expired or signed out); sign in again",
        code="invalid_refresh_token",
        field="refresh_token",
    )
    with db.session() as session:
        row = session.scalar(
            select(UserSession).where(UserSession.refresh_token_hash == _token_hash(refresh_token))
        )
        if row is None or row.revoked_at is not None or _aware(row.refresh_expires_at) <= now:
            raise invalid
        if admit_user is not None and row.rotated_at is None:
            admit_user(row.user_id)
        # Compare-and-set, so two concurrent refreshes cannot both succeed.
        claimed = cast(
            CursorResult[Any],
            session.execute(
                update(UserSession)
                .where(
                    UserSession.id == row.id,
                    UserSession.rotated_at.is_(None),
                    UserSession.revoked_at.is_(None),
                )
                .values(rotated_at=now)
            ),
        ).rowcount
        if claimed == 1:
            user = session.get(User, row.user_id)
            workspace = session.get(Workspace, row.workspace_id)
            member = session.get(Membership, (row.user_id, row.workspace_id))
            if user is None or workspace is None or member is None:
                raise invalid
            return _issue(
                session,
                user=user,
                workspace=workspace,
                family_id=row.family_id,
                lifetimes=lifetimes,
                now=now,
            )
        _revoke_family(session, family_id=row.family_id, now=now)
    raise Unauthenticated(
        "this refresh token was already used, so the session was signed out everywhere; "
        "sign in again",
        code="refresh_token_reused",
        field="refresh_token",
    )


def sign_out(session: Session, *, access_token: str, now: datetime | None = None) -> None:
    """Revoke the session behind `access_token`: its access and refresh tokens stop."""
    row = session.scalar(
        select(UserSession).where(UserSession.access_token_hash == _token_hash(access_token))
    )
    if row is not None:
        _revoke_family(session, family_id=row.family_id, now=now or utcnow())


def identity_for_access_token(
    session: Session, *, token: str, now: datetime | None = None
) -> TokenIdentity | None:
    if not token.startswith(ACCESS_TOKEN_PREFIX):
        return None
    now = now or utcnow()
    found = session.execute(
        select(UserSession, Workspace)
        .join(Workspace, Workspace.id == UserSession.workspace_id)
        # A user removed from the workspace loses their sessions there at once.
        .join(
            Membership,
            (Membership.user_id == UserSession.user_id)
            & (Membership.workspace_id == UserSession.workspace_id),
        )
        .where(UserSession.access_token_hash == _token_hash(token))
    ).first()
    if found is None:
        return None
    row, workspace = found.tuple()
    if row.revoked_at is not None or row.rotated_at is not None:
        return None
    if _aware(row.access_expires_at) <= now:
        return None
    return TokenIdentity(
        workspace_id=workspace.id, workspace_name=workspace.name, user_id=row.user_id
    )


class SessionAccessTokens:
    """The `AccessTokenVerifier` the auth dependency uses: live `vsat_` session tokens."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def verify(self, token: str) -> TokenIdentity | None:
        if not self.looks_like_access_token(token):
            return None
        with self._db.session() as session:
            return identity_for_access_token(session, token=token)

    def looks_like_access_token(self, token: str) -> bool:
        return token.startswith(ACCESS_TOKEN_PREFIX)
