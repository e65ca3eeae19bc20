"""Metadata tables. Schema changes go through an Alembic migration in `migrations/versions`."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import JSON, Boolean


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Workspace(Base):
    __tablename__ = "workspaces"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    # The public half of the key (shown in listings and logs); the secret is only hashed.
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    secret_hash: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class MediaUpload(Base):
    """One upload: init -> PUT the bytes -> complete. The PUT token is stored only hashed."""

    __tablename__ = "media_uploads"
    __table_args__ = (Index("ix_media_uploads_workspace_status", "workspace_id", "status"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    media_type: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # received, completed
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    media_ref: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Media(Base):
    """A completed upload. Its bytes are the blob `sha256` (shared by identical uploads)."""

    __tablename__ = "media"

    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    media_ref: Mapped[str] = mapped_column(String(64), primary_key=True)
    upload_id: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(100))
    media_type: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str] = mapped_column(String(255))
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class MediaBlob(Base):
    """One stored blob (a distinct sha256). The row is what a completing upload and the
    collector lock, so that a blob is never deleted while an upload comes to refer to it."""

    __tablename__ = "media_blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class User(Base):
    """A person who signs in to the web page; the email is stored lower-cased."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))  # argon2id, PHC string
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Membership(Base):
    __tablename__ = "memberships"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UserSession(Base):
    """One access/refresh token pair. A refresh replaces the row by a new one in the same
    family (the sign-in); sign-out and refresh-token reuse revoke the whole family."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    family_id: Mapped[str] = mapped_column(String(40), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    access_token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    access_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    refresh_token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    refresh_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class CatalogEntry(Base):
    """One knowledge base: what a workspace indexed under (model, collection, scope).

    Kept up to date on every write and delete (an exact count through the tenant index),
    so listing knowledge bases never scans points.
    """

    __tablename__ = "kb_catalog"
    __table_args__ = (UniqueConstraint("workspace_id", "model", "scope", name="uq_kb_catalog_ns"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    model: Mapped[str] = mapped_column(String(100))
    collection: Mapped[str] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(16))
    point_count: Mapped[int] = mapped_column(BigInteger, default=0)
    avg_payload_bytes: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_write_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Wallet(Base):
    """A workspace's credits in integer micro-credits (1 credit = 1,000,000): exact sums, and
    a CHECK that the balance never goes below zero, whatever the code above it does."""

    __tablename__ = "wallets"
    __table_args__ = (
        CheckConstraint("balance >= 0", name="ck_wallets_balance_not_negative"),
        CheckConstraint(
            "reserved >= 0 AND reserved <= balance", name="ck_wallets_reserved_within_balance"
        ),
    )

    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    balance: Mapped[int] = mapped_column(BigInteger)
    # The sum of the wallet's `fund_reservations`: what runs under way hold (billing.reservations).
    reserved: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FundReservation(Base):
    """Funds set aside for one run (or a queued background run) until it is charged or given
    back; `expires_at` lets any process give back what a dead one held (NULL: never)."""

    __tablename__ = "fund_reservations"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="ck_fund_reservations_amount_not_negative"),
    )

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    amount: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UsageRecord(Base):
    """What one run consumed and cost; one per run (`run_id` unique makes charging idempotent).
    The unit price is copied from the registry so later price changes keep history exact."""

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_workspace_created", "workspace_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    run_id: Mapped[str] = mapped_column(String(64), unique=True)
    model: Mapped[str] = mapped_column(String(100))
    mode: Mapped[str] = mapped_column(String(16))
    items: Mapped[int] = mapped_column(BigInteger, default=0)
    queries: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(Integer, default=1)
    unit: Mapped[str] = mapped_column(String(16))
    unit_price: Mapped[int] = mapped_column(BigInteger)  # micro-credits per unit
    cost: Mapped[int] = mapped_column(BigInteger)  # micro-credits
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LedgerEntry(Base):
    """Every change of a wallet's balance: grants, top-ups (+) and run debits (-), each with
    the balance it left, so the balance is always the sum of its entries."""

    __tablename__ = "wallet_ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # grant, topup, debit
    amount: Mapped[int] = mapped_column(BigInteger)  # signed micro-credits
    balance_after: Mapped[int] = mapped_column(BigInteger)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # debits only
    note: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BackgroundRun(Base):
    """A background index run: its progress survives restarts (it resumes at `next_index`).

    The items themselves wait in `background_run_inputs` until the run ends. The process
    that works on it holds a lease (`runs.leases`); when it lapses, another takes it up.
    """

    __tablename__ = "background_runs"
    __table_args__ = (Index("ix_background_runs_status_created", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    model: Mapped[str] = mapped_column(String(100))
    mode: Mapped[str] = mapped_column(String(16))
    scope: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # queued running succeeded failed cancelled
    total: Mapped[int] = mapped_column(Integer)
    next_index: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[list[dict[str, object]]] = mapped_column(JSON, default=list)
    error: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)
    cost: Mapped[int] = mapped_column(BigInteger, default=0)  # micro-credits charged so far
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    embed_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    write_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(80), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )


class BackgroundRunInputs(Base):
    """A background run's items, readable by every process, until the run ends."""

    __tablename__ = "background_run_inputs"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("background_runs.id", ondelete="CASCADE"), primary_key=True
    )
    items: Mapped[list[object]] = mapped_column(JSON)


class RateLimit(Base):
    """One rate-limit bucket every replica shares (`auth.shared_limits`, PostgreSQL)."""

    __tablename__ = "rate_limits"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    tat: Mapped[float] = mapped_column(Float)  # GCRA's theoretical arrival time (epoch s)
    allowed: Mapped[bool] = mapped_column(Boolean)  # the last decision


class SignInLockout(Base):
    """Failed sign-ins of one key in a row, and its lock (`auth.shared_limits`)."""

    __tablename__ = "sign_in_lockouts"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    locked_until: Mapped[float] = mapped_column(Float)  # epoch seconds


class PendingWrite(Base):
    """A write-ahead intent: an index write whose charge is not yet recorded.

    Inserted before the points are upserted and deleted in the charge's transaction, so a row
    left here means the write was interrupted (a crash, a failed charge) and may have stored
    points that nobody paid for. Start-up reconciles each row (`runs.intents`): only these
    rows, never a scan of the collections.
    """

    __tablename__ = "pending_writes"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # the charge's run id
    run_id: Mapped[str] = mapped_column(String(40))  # the writer the points carry (`_run`)
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    model: Mapped[str] = mapped_column(String(100))
    collection: Mapped[str] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(16))
    point_ids: Mapped[list[str]] = mapped_column(JSON)
    # A background chunk's progress, applied with its charge (None for a synchronous run).
    chunk: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelRelease(Base):
    """Which release of a model its alias points at, the rollback target, and the migration
    to the registry's release while one runs (`points.releases`). Survives restarts."""

    __tablename__ = "model_releases"

    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    live_release: Mapped[str] = mapped_column(String(64))
    previous_release: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The release being filled in the background; None when no migration runs.
    target_release: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # A release rolled back from: not migrated to again until the registry names another.
    blocked_release: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)  # items that could not be carried
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReleaseMigrationScope(Base):
    """One namespace (tenant key) of a model to re-embed into its target release: where the
    scroll through the live collection stands, so a restart resumes there."""

    __tablename__ = "release_migration_scopes"

    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    tenant_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(String(40))
    scope: Mapped[str] = mapped_column(String(64))
    cursor: Mapped[str | None] = mapped_column(String(64), nullable=True)
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    finished: Mapped[bool] = mapped_column(Boolean, default=False)
