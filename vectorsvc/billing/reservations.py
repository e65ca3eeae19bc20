"""Funds reserved in the database, so that every process on one database sees them.

A reservation is one row of `fund_reservations` and the same amount added to its wallet's
`reserved`, in one transaction, by a conditional update: `balance - reserved >= amount`.
So however many service processes reserve against one wallet at once, what they hold
together never passes its balance (a CHECK holds `reserved <= balance` too). A charge drops
its reservation and debits the balance in one transaction (`service.charge`,
`service.charge_batch`), with the same condition on what is left available: a run whose
reservation was taken back (expired) is still charged only if the wallet covers it.

A row says until when it is held (`expires_at`): one left by a process that died is given
back by any other (`release_expired`). A queued background run's row has none; it is given
back when the run ends.

Blocking functions, each one transaction of its own; the async side is `billing.funds`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, insert, select, update
from sqlalchemy.orm import Session

from vectorsvc.billing.service import (
    drop_reservations,
    insufficient_funds,
    lower_reserved,
    open_wallet_in,
)
from vectorsvc.db.database import Database
from vectorsvc.db.tables import FundReservation, Wallet

_TABLE = FundReservation.metadata.tables[FundReservation.__tablename__]


@dataclass(frozen=True)
class Available:
    balance: int  # micro-credits stored
    reserved: int  # micro-credits held by reservations

    @property
    def spendable(self) -> int:
        return max(self.balance - self.reserved, 0)


def reserve(
    db: Database,
    *,
    workspace_id: str,
    reservation_id: str,
    amount: int,
    expires_at: datetime | None,
    opening_micro_credits: int = 0,
    taken_from: tuple[str, int] | None = None,
) -> None:
    """Hold `amount` for `reservation_id`, or raise 402 `insufficient_funds` (nothing held).

    `taken_from` (a row id, an amount): that much of it comes out of an existing
    reservation (a background run's funds, drawn for one chunk) and only the rest is
    reserved now. The wallet opens if it has none yet."""
    with db.session() as session:
        taken = 0
        if taken_from is not None and taken_from[1] > 0:
            taken = _take(session, *taken_from)
        extra = amount - taken
        if extra > 0 and not _hold(session, workspace_id, extra):
            now = datetime.now(UTC)
            open_wallet_in(session, workspace_id, opening_micro_credits, now)
            if not _hold(session, workspace_id, extra):
                left = _available(session, workspace_id, opening_micro_credits)
                raise insufficient_funds(
                    balance=left.spendable + taken,
                    cost=amount,
                    reserved=min(left.reserved, left.balance),
                )
        session.execute(
            insert(_TABLE),
            [
                {
                    "id": reservation_id,
                    "workspace_id": workspace_id,
                    "amount": amount,
                    "expires_at": expires_at,
                    "created_at": datetime.now(UTC),
                }
            ],
        )


def release(db: Database, reservation_ids: list[str]) -> int:
    """Give the reservations back (those still held); how many micro-credits came back."""
    with db.session() as session:
        return sum(drop_reservations(session, reservation_ids).values())


def release_expired(db: Database, *, now: datetime | None = None) -> int:
    """Give back every reservation whose holder did not settle it in time (a process that
    died); the micro-credits given back."""
    with db.session() as session:
        rows = session.execute(
            delete(_TABLE)
            .where(_TABLE.c.expires_at.is_not(None), _TABLE.c.expires_at < (now or _now()))
            .returning(_TABLE.c.workspace_id, _TABLE.c.amount)
        ).all()
        return sum(lower_reserved(session, rows).values())


def held(db: Database, reservation_id: str) -> int | None:
    """What the reservation holds now; None if it is not held."""
    with db.session() as session:
        amount = session.scalar(select(_TABLE.c.amount).where(_TABLE.c.id == reservation_id))
    return None if amount is None else int(amount)


def available(db: Database, *, workspace_id: str, opening_micro_credits: int = 0) -> Available:
    """The wallet's balance and what reservations hold of it."""
    with db.session() as session:
        return _available(session, workspace_id, opening_micro_credits)


# --- internals ---------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _hold(session: Session, workspace_id: str, amount: int) -> bool:
    result = session.execute(
        update(Wallet)
        .where(Wallet.workspace_id == workspace_id, Wallet.balance - Wallet.reserved >= amount)
        .values(reserved=Wallet.reserved + amount)
        .execution_options(synchronize_session=False)
    )
    return int(cast(CursorResult[Any], result).rowcount) == 1


def _take(session: Session, reservation_id: str, amount: int) -> int:
    """Move up to `amount` out of a reservation (the wallet's total is unchanged); how much."""
    held_now = session.scalar(
        select(_TABLE.c.amount).where(_TABLE.c.id == reservation_id).with_for_update()
    )
    taken = min(int(held_now or 0), amount)
    if taken > 0:
        session.execute(
            update(_TABLE)
            .where(_TABLE.c.id == reservation_id)
            .values(amount=_TABLE.c.amount - taken)
        )
    return taken


def _available(session: Session, workspace_id: str, opening_micro_credits: int) -> Available:
    row = session.execute(
        select(Wallet.balance, Wallet.reserved).where(Wallet.workspace_id == workspace_id)
    ).one_or_none()
    if row is None:
        return Available(opening_micro_credits, 0)
    return Available(int(row[0]), int(row[1]))
