"""Wallets, usage records and the ledger: prices from the registry, exact integer money.

The rules every function keeps:

- a balance changes only together with a ledger entry that records the change and the balance
  it left, in the same transaction, so the balance is always the sum of its entries;
- a run's debit and its usage record are written in one transaction, and the debit is a
  conditional update (`balance >= cost`), so concurrent runs can never overdraw the wallet nor
  lose a debit;
- a run is charged at most once: `usage_records.run_id` is unique.

Each transaction starts with a write so that SQLite takes its write lock first (and waits on
`busy_timeout`) instead of failing when a read snapshot would have to be upgraded.

Wallets open lazily, on the first charge, top-up or read, with the opening credits passed in
(`Settings.default_workspace_credits`): no other module has to know about billing when it
creates a workspace.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from vectorsvc.billing.money import format_credits, parse_credits
from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.db.tables import FundReservation, LedgerEntry, UsageRecord, Wallet
from vectorsvc.errors import Conflict, ServiceError, ValidationFailed
from vectorsvc.model_registry.pricing import ModePrice, Usage
from vectorsvc.model_registry.registry import ModelSpec

LedgerKind = Literal["grant", "topup", "debit"]


class InsufficientFunds(ServiceError):
    code = "insufficient_funds"
    status = 402


@dataclass(frozen=True)
class ChargeResult:
    run_id: str
    cost: int  # micro-credits recorded for this run
    balance_after: int  # micro-credits
    charged: bool  # False: the run had already been charged; nothing was debited now


@dataclass(frozen=True)
class WalletView:
    workspace_id: str
    balance: int  # micro-credits
    updated_at: datetime


def opening_micro_credits(settings: Settings) -> int:
    """What a workspace's wallet opens with (micro-credits)."""
    return parse_credits(settings.default_workspace_credits)


def price_of(spec: ModelSpec, mode: str) -> ModePrice:
    spec.require_mode(mode)
    return spec.pricing[mode]  # type: ignore[index]


def quote(spec: ModelSpec, mode: str, units: Usage) -> int:
    """The cost in micro-credits of `units` of `mode` on `spec`, at the registry's price."""
    price = price_of(spec, mode)
    return price.micro_credits_per_unit * units.units(price.unit)


def current_balance(
    db: Database | Session, *, workspace_id: str, opening_micro_credits: int = 0
) -> int:
    """The wallet's balance (micro-credits); the opening credits if it has not opened yet."""
    with _transaction(db) as session:
        balance = session.scalar(select(Wallet.balance).where(Wallet.workspace_id == workspace_id))
    return opening_micro_credits if balance is None else int(balance)


def charge(
    db: Database | Session,
    *,
    workspace_id: str,
    run_id: str,
    spec: ModelSpec,
    mode: str,
    units: Usage,
    opening_micro_credits: int = 0,
    reservation_id: str | None = None,
) -> ChargeResult:
    """Record the run's usage and debit its cost, atomically; at most once per `run_id`.

    With a `Database`, this is one transaction of its own. With a `Session`, it joins the
    caller's transaction (to commit together with the caller's writes); on an exception the
    caller must roll back. Raises `InsufficientFunds` (402) when the balance no longer covers
    the cost, and then nothing is written. `reservation_id`: the funds held for the run
    (`billing.reservations`), given back in the same transaction as the debit takes them.
    """
    now = datetime.now(UTC)
    pending = PendingCharge(workspace_id, run_id, spec, mode, units, now)
    cost = pending.cost
    with _transaction(db) as session:
        if reservation_id is not None:
            drop_reservations(session, [reservation_id])
        # Written first: the unique run_id is the idempotency key, and this write takes the lock.
        if run_id not in _record_usages(session, [pending]):
            return _already_charged(session, workspace_id=workspace_id, run_id=run_id)
        balance, _ = _open_wallet(
            session, workspace_id=workspace_id, micro_credits=opening_micro_credits, now=now
        )
        if cost > 0:
            debited = _debit(session, workspace_id, cost, now)
            if debited is None:
                raise insufficient_funds(balance=_balance(session, workspace_id), cost=cost)
            balance = debited
            _ledger(session, workspace_id, "debit", -cost, balance, now, run_id=run_id)
        return ChargeResult(run_id=run_id, cost=cost, balance_after=balance, charged=True)


@dataclass(frozen=True)
class PendingCharge:
    """A run's charge, written with others in one batch; `reservation_id`: its funds."""

    workspace_id: str
    run_id: str
    spec: ModelSpec
    mode: str
    units: Usage
    created_at: datetime
    reservation_id: str | None = None

    @property
    def cost(self) -> int:
        return quote(self.spec, self.mode, self.units)


@dataclass(frozen=True)
class BatchResult:
    balances: dict[str, int]  # workspace id -> balance after the batch (micro-credits)
    unpaid: list[PendingCharge]  # could not be debited: the balance no longer covered them


def charge_batch(
    db: Database | Session, charges: Sequence[PendingCharge], *, opening_micro_credits: int = 0
) -> BatchResult:
    """Record and debit many runs' charges in one transaction (`charge`'s rules, batched).

    Their reservations are given back first, in the same transaction. Per workspace: one
    usage record and one ledger entry per run, one conditional debit of their sum. Runs
    already charged are skipped. Where what is available no longer covers the sum (only
    possible when a reservation expired before its run was charged, and others spent the
    funds), the runs are debited one by one while it lasts and the rest are returned as
    unpaid, their usage records not kept.
    """
    by_workspace: dict[str, list[PendingCharge]] = {}
    for pending in charges:
        by_workspace.setdefault(pending.workspace_id, []).append(pending)
    balances: dict[str, int] = {}
    unpaid: list[PendingCharge] = []
    now = datetime.now(UTC)
    with _transaction(db) as session:
        # Written first (SQLite takes its write lock here); a wallet with a reservation exists.
        held = drop_reservations(
            session, [p.reservation_id for p in charges if p.reservation_id is not None]
        )
        for workspace_id, pending_runs in by_workspace.items():
            record_ids = _record_usages(session, pending_runs)
            recorded = [(p, record_ids[p.run_id]) for p in pending_runs if p.run_id in record_ids]
            total = sum(p.cost for p, _ in recorded)
            if workspace_id not in held or total == 0:
                balance, _ = _open_wallet(
                    session,
                    workspace_id=workspace_id,
                    micro_credits=opening_micro_credits,
                    now=now,
                )
            debited = _debit(session, workspace_id, total, now) if total > 0 else balance
            if debited is not None:
                balance = debited + total
                paid = recorded
            else:  # one by one, as far as the balance goes
                paid = []
                for pending, record_id in recorded:
                    if pending.cost == 0 or _debit(session, workspace_id, pending.cost, now):
                        paid.append((pending, record_id))
                    else:
                        session.execute(delete(UsageRecord).where(UsageRecord.id == record_id))
                        unpaid.append(pending)
                balance = _balance(session, workspace_id) + sum(p.cost for p, _ in paid)
            entries: list[dict[str, Any]] = []
            for pending, _ in paid:
                if pending.cost > 0:
                    balance -= pending.cost
                    entries.append(
                        _ledger_row(
                            workspace_id,
                            "debit",
                            -pending.cost,
                            balance,
                            now,
                            run_id=pending.run_id,
                        )
                    )
            if entries:  # one executemany: an ORM flush per entry cost each search (perf doc)
                session.execute(insert(_LEDGER_TABLE), entries)
            balances[workspace_id] = balance
    return BatchResult(balances=balances, unpaid=unpaid)


def top_up(
    db: Database | Session,
    *,
    workspace_id: str,
    micro_credits: int,
    note: str = "",
    kind: Literal["grant", "topup"] = "topup",
    opening_micro_credits: int = 0,
) -> int:
    """Add credits to a workspace's wallet; returns the new balance in micro-credits."""
    if micro_credits <= 0:
        raise ValidationFailed(
            "credits must be a positive amount", field="credits", code="invalid_amount"
        )
    now = datetime.now(UTC)
    with _transaction(db) as session:
        _open_wallet(
            session, workspace_id=workspace_id, micro_credits=opening_micro_credits, now=now
        )
        balance = session.execute(
            update(Wallet)
            .where(Wallet.workspace_id == workspace_id)
            .values(balance=Wallet.balance + micro_credits, updated_at=now)
            .returning(Wallet.balance)
            .execution_options(synchronize_session=False)
        ).scalar_one()
        _ledger(session, workspace_id, kind, micro_credits, balance, now, note=note)
        return int(balance)


def open_wallet(
    db: Database | Session, *, workspace_id: str, micro_credits: int, note: str = ""
) -> bool:
    """Open the workspace's wallet with `micro_credits` if it has none; True if opened now."""
    with _transaction(db) as session:
        _, opened = _open_wallet(
            session,
            workspace_id=workspace_id,
            micro_credits=micro_credits,
            now=datetime.now(UTC),
            note=note,
        )
        return opened


def get_wallet(
    db: Database | Session, *, workspace_id: str, opening_micro_credits: int = 0
) -> WalletView:
    """The workspace's wallet, opened now if it has none yet."""
    with _transaction(db) as session:
        _open_wallet(
            session,
            workspace_id=workspace_id,
            micro_credits=opening_micro_credits,
            now=datetime.now(UTC),
        )
        wallet = session.get_one(Wallet, workspace_id)
        return WalletView(
            workspace_id=wallet.workspace_id,
            balance=wallet.balance,
            updated_at=_aware(wallet.updated_at),
        )


# --- internals ---------------------------------------------------------------------------


@contextmanager
def _transaction(db: Database | Session) -> Iterator[Session]:
    if isinstance(db, Session):
        yield db
    else:
        with db.session() as session:
            yield session


def _insert(session: Session, entity: Any) -> Any:
    """INSERT that supports ON CONFLICT DO NOTHING on the configured database."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(entity)
    return sqlite.insert(entity)


def open_wallet_in(session: Session, workspace_id: str, micro_credits: int, now: datetime) -> None:
    """Open the wallet in the caller's transaction if it has none (`open_wallet`'s rule)."""
    _open_wallet(session, workspace_id=workspace_id, micro_credits=micro_credits, now=now)


def drop_reservations(session: Session, reservation_ids: Sequence[str]) -> dict[str, int]:
    """Delete the reservations (`billing.reservations`) in the caller's transaction and
    lower their wallets' `reserved`: workspace id -> micro-credits given back."""
    if not reservation_ids:
        return {}
    rows = session.execute(
        delete(_RESERVATIONS)
        .where(_RESERVATIONS.c.id.in_(list(reservation_ids)))
        .returning(_RESERVATIONS.c.workspace_id, _RESERVATIONS.c.amount)
    ).all()
    return lower_reserved(session, rows)


def lower_reserved(session: Session, rows: Iterable[Any]) -> dict[str, int]:
    """Lower each wallet's `reserved` by the amounts of the (workspace id, amount) rows of the
    reservations just deleted: workspace id -> micro-credits given back."""
    by_workspace: dict[str, int] = {}
    for workspace_id, amount in rows:
        by_workspace[str(workspace_id)] = by_workspace.get(str(workspace_id), 0) + int(amount)
    for workspace_id, amount in sorted(by_workspace.items()):  # one lock order: no deadlock
        if amount:
            session.execute(
                update(Wallet)
                .where(Wallet.workspace_id == workspace_id)
                .values(reserved=Wallet.reserved - amount)
                .execution_options(synchronize_session=False)
            )
    return by_workspace


def _open_wallet(
    session: Session, *, workspace_id: str, micro_credits: int, now: datetime, note: str = ""
) -> tuple[int, bool]:
    """Create the wallet if missing (with its grant in the ledger); return its balance and
    whether it was opened now."""
    opened = session.execute(
        _insert(session, Wallet)
        .values(workspace_id=workspace_id, balance=micro_credits, created_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=["workspace_id"])
        .returning(Wallet.balance)
    ).scalar_one_or_none()
    if opened is None:
        return _balance(session, workspace_id), False
    if micro_credits:
        _ledger(
            session,
            workspace_id,
            "grant",
            micro_credits,
            micro_credits,
            now,
            note=note or "opening credits",
        )
    return int(opened), True


# Core tables: statements on them skip the ORM's per-row bookkeeping.
_USAGE_TABLE = UsageRecord.metadata.tables[UsageRecord.__tablename__]
_LEDGER_TABLE = LedgerEntry.metadata.tables[LedgerEntry.__tablename__]
_RESERVATIONS = FundReservation.metadata.tables[FundReservation.__tablename__]


def _record_usages(session: Session, pending_runs: Sequence[PendingCharge]) -> dict[str, int]:
    """Insert the runs' usage records in one executemany (SQLAlchemy sends them as
    multi-row INSERTs of one cached statement): run id -> record id for the runs recorded
    now (a run already charged is absent)."""
    if not pending_runs:
        return {}
    table = _USAGE_TABLE
    result = session.execute(
        _insert(session, table)
        .on_conflict_do_nothing(index_elements=["run_id"])
        .returning(table.c.run_id, table.c.id),
        [_usage_row(p) for p in pending_runs],
    )
    return {str(run_id): int(record_id) for run_id, record_id in result}


def _usage_row(pending: PendingCharge) -> dict[str, Any]:
    price = price_of(pending.spec, pending.mode)
    return {
        "workspace_id": pending.workspace_id,
        "run_id": pending.run_id,
        "model": pending.spec.slug,
        "mode": pending.mode,
        "items": pending.units.items,
        "queries": pending.units.queries,
        "requests": pending.units.requests,
        "unit": price.unit,
        "unit_price": price.micro_credits_per_unit,
        "cost": pending.cost,
        "created_at": pending.created_at,
    }


def _debit(session: Session, workspace_id: str, cost: int, now: datetime) -> int | None:
    """Take `cost` if what is available (the balance less what reservations hold) covers it:
    the balance after, else None (nothing taken)."""
    debited = session.execute(
        update(Wallet)
        .where(Wallet.workspace_id == workspace_id, Wallet.balance - Wallet.reserved >= cost)
        .values(balance=Wallet.balance - cost, updated_at=now)
        .returning(Wallet.balance)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    return None if debited is None else int(debited)


def _balance(session: Session, workspace_id: str) -> int:
    balance = session.scalar(select(Wallet.balance).where(Wallet.workspace_id == workspace_id))
    return int(balance or 0)


def _ledger(
    session: Session,
    workspace_id: str,
    kind: LedgerKind,
    amount: int,
    balance_after: int,
    now: datetime,
    *,
    run_id: str | None = None,
    note: str = "",
) -> None:
    session.execute(
        insert(_LEDGER_TABLE),
        [_ledger_row(workspace_id, kind, amount, balance_after, now, run_id=run_id, note=note)],
    )


def _ledger_row(
    workspace_id: str,
    kind: LedgerKind,
    amount: int,
    balance_after: int,
    now: datetime,
    *,
    run_id: str | None = None,
    note: str = "",
) -> dict[str, Any]:
    return {
        "workspace_id": workspace_id,
        "kind": kind,
        "amount": amount,
        "balance_after": balance_after,
        "run_id": run_id,
        "note": note[:200],
        "created_at": now,
    }


def _already_charged(session: Session, *, workspace_id: str, run_id: str) -> ChargeResult:
    record = session.scalars(select(UsageRecord).where(UsageRecord.run_id == run_id)).one()
    if record.workspace_id != workspace_id:
        raise Conflict(
            f"run {run_id!r} was charged to another workspace", field="run_id", code="run_exists"
        )
    return ChargeResult(
        run_id=run_id,
        cost=record.cost,
        balance_after=_balance(session, workspace_id),
        charged=False,
    )


def insufficient_funds(*, balance: int, cost: int, reserved: int = 0) -> InsufficientFunds:
    """`balance`: what the run could use; `reserved`: what runs under way (queued background
    runs among them) hold on top of it."""
    held = (
        f" (and {format_credits(reserved)} more reserved for runs under way or queued)"
        if reserved > 0
        else ""
    )
    details: dict[str, Any] = {
        "cost": format_credits(cost),
        "balance": format_credits(balance),
        "cost_micro_credits": cost,
        "balance_micro_credits": balance,
    }
    if reserved > 0:
        details["reserved"] = format_credits(reserved)
        details["reserved_micro_credits"] = reserved
    return InsufficientFunds(
        f"insufficient funds: this run costs {format_credits(cost)} credits and the wallet "
        f"holds {format_credits(balance)} credits available{held}; top up the workspace's "
        "wallet",
        details=details,
    )


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
