"""Background runs leased from the database, so that several processes share the work.

A process works only on runs it holds a lease on (`background_runs.lease_owner`, until
`lease_expires_at`). It takes a lease when a run is submitted to it, renews its leases
while it lives (before each chunk, and now and then for runs waiting their turn), and
takes over runs whose lease lapsed: their process died, so they resume here, at the
`next_index` their last committed chunk left. On PostgreSQL the claim is `SELECT ... FOR
UPDATE SKIP LOCKED`, so processes claiming at once never take the same run; SQLite
serializes its writers anyway (and serves one process).

Exactly once holds across processes as across restarts (`runs.background`): a chunk's
charge and progress commit together, keyed `<run id>:<chunk start>`.

A run's items live in `background_run_inputs`, readable by every process; runs queued by a
version that kept them in a file under the data dir are read from there.

`Leases` is one process's side (async); the functions below it block, each one
transaction of its own.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

import anyio
from sqlalchemy import CursorResult, delete, or_, select, update
from sqlalchemy.orm import Session

from vectorsvc.db.database import Database
from vectorsvc.db.tables import BackgroundRun, BackgroundRunInputs

ACTIVE = ("queued", "running")


class Leases:
    """This process's leases: taken, renewed (at most every third of a lease, as a lease
    renewed since cannot have lapsed), let go."""

    def __init__(self, db: Database, seconds: float) -> None:
        self.db = db
        self.seconds = seconds
        self.owner = new_owner()
        self._lease = timedelta(seconds=seconds)
        self._renewed: dict[str, float] = {}  # run id -> when its renewal was asked for

    def expiry(self) -> datetime:
        """When a lease taken now lapses."""
        return datetime.now(UTC) + self._lease

    async def take_up(self) -> list[Claimed]:
        """`claim`: this process's runs, renewed, and those whose lease lapsed."""
        asked = time.monotonic()
        claimed = await anyio.to_thread.run_sync(
            partial(claim, self.db, owner=self.owner, lease=self._lease)
        )
        for run in claimed:
            self._renewed[run.run_id] = asked
        return claimed

    async def hold(self, run_id: str) -> bool:
        """Whether this process still holds the run's lease (renewed now if it is due)."""
        asked = time.monotonic()
        if asked - self._renewed.get(run_id, -math.inf) < self.seconds / 3:
            return True
        renewed = await anyio.to_thread.run_sync(
            partial(renew, self.db, owner=self.owner, lease=self._lease, run_id=run_id)
        )
        if renewed:
            self._renewed[run_id] = asked
        else:
            self._renewed.pop(run_id, None)
        return bool(renewed)

    def forget(self, run_id: str) -> None:
        self._renewed.pop(run_id, None)

    async def let_go(self) -> None:
        self._renewed.clear()
        await anyio.to_thread.run_sync(partial(let_go, self.db, owner=self.owner))


def new_owner() -> str:
    """This process's name in the leases it holds."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Claimed:
    run_id: str
    workspace_id: str
    model: str
    left: int  # items not processed yet


def claim(db: Database, *, owner: str, lease: timedelta, limit: int = 100) -> list[Claimed]:
    """Lease the active runs that are this owner's or nobody's (their lease lapsed), oldest
    first; every run this owner holds is renewed. On SQLite, which serves one process, every
    active run: a restart after a crash resumes at once, without waiting out a lease."""
    now = datetime.now(UTC)
    leased = or_(
        BackgroundRun.lease_owner.is_(None),
        BackgroundRun.lease_owner == owner,
        BackgroundRun.lease_expires_at < now,
    )
    with db.session() as session:
        single = session.get_bind().dialect.name == "sqlite"
        rows = session.execute(
            select(
                BackgroundRun.id,
                BackgroundRun.workspace_id,
                BackgroundRun.model,
                BackgroundRun.total - BackgroundRun.next_index,
            )
            .where(BackgroundRun.status.in_(ACTIVE), *(() if single else (leased,)))
            .order_by(BackgroundRun.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        if rows:
            session.execute(
                update(BackgroundRun)
                .where(BackgroundRun.id.in_([r[0] for r in rows]))
                .values(lease_owner=owner, lease_expires_at=now + lease)
                .execution_options(synchronize_session=False)
            )
    return [Claimed(r[0], r[1], r[2], max(int(r[3]), 0)) for r in rows]


def renew(db: Database, *, owner: str, lease: timedelta, run_id: str | None = None) -> int:
    """Extend this owner's leases (one run's, or all it holds on active runs); how many."""
    conditions = [BackgroundRun.lease_owner == owner, BackgroundRun.status.in_(ACTIVE)]
    if run_id is not None:
        conditions.append(BackgroundRun.id == run_id)
    with db.session() as session:
        result = session.execute(
            update(BackgroundRun)
            .where(*conditions)
            .values(lease_expires_at=datetime.now(UTC) + lease)
            .execution_options(synchronize_session=False)
        )
        return int(cast(CursorResult[Any], result).rowcount)


def store_inputs(session: Session, run_id: str, items: list[Any]) -> None:
    session.add(BackgroundRunInputs(run_id=run_id, items=items))


def load_inputs(session: Session, run_id: str) -> list[Any] | None:
    items = session.scalar(
        select(BackgroundRunInputs.items).where(BackgroundRunInputs.run_id == run_id)
    )
    return None if items is None else list(items)


def drop_inputs(session: Session, run_id: str) -> None:
    session.execute(delete(BackgroundRunInputs).where(BackgroundRunInputs.run_id == run_id))


def let_go(db: Database, *, owner: str) -> None:
    """This process stops: its leases lapse now, so that another takes its runs up."""
    with db.session() as session:
        session.execute(
            update(BackgroundRun)
            .where(BackgroundRun.lease_owner == owner, BackgroundRun.status.in_(ACTIVE))
            .values(lease_expires_at=datetime.now(UTC))
            .execution_options(synchronize_session=False)
        )
