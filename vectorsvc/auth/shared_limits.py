"""Rate limits and sign-in lockouts held in the database, for replicas on one PostgreSQL.

The in-memory limiters (`vectorsvc.limits`) count per process: N replicas behind a load
balancer would allow N times each budget. On PostgreSQL the service uses these instead:
the same rules, each decision one statement on a row per key, so every replica draws on
one budget. SQLite serves one process and keeps the in-memory ones.

The rate limit is GCRA, the token bucket written as one number per key: its theoretical
arrival time (`tat`, seconds since the epoch); a request is allowed when `tat` is at most
`(burst - 1)` intervals ahead of now, and then moves it one interval on. One
`INSERT ... ON CONFLICT DO UPDATE ... RETURNING` decides and records, so concurrent
replicas cannot both spend the last token. Rows of keys at rest are deleted now and then,
so an attacker rotating addresses grows the table only for as long as his rate lasts.

Wall-clock time, shared by the replicas: keep their clocks in sync (NTP) as usual.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from sqlalchemy import case, delete, null, select, update
from sqlalchemy import func as sql
from sqlalchemy.dialects import postgresql

from vectorsvc.db.database import Database
from vectorsvc.db.tables import RateLimit, SignInLockout
from vectorsvc.limits import Lockout, RateLimiter

RATE_LIMITS = RateLimit.metadata.tables[RateLimit.__tablename__]
SIGN_IN_LOCKOUTS = SignInLockout.metadata.tables[SignInLockout.__tablename__]
# Delete rows at rest once every this many decisions (per process).
PRUNE_EVERY = 1000


class _Pruner:
    def __init__(self, prune: Any) -> None:
        self._prune = prune
        self._count = 0
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self._count += 1
            due = self._count % PRUNE_EVERY == 0
        if due:
            self._prune()


class SharedRateLimiter(RateLimiter):
    """`RateLimiter`'s token bucket (per minute, burst), counted in the database."""

    blocking = True  # each decision is a database round trip: call it off the event loop

    def __init__(self, db: Database, per_minute: int, burst: int, **kwargs: Any) -> None:
        super().__init__(per_minute, burst, **kwargs)
        self._db = db
        self._pruner = _Pruner(self.prune)

    def take(self, key: str) -> int | None:
        if self.rate <= 0:
            return None
        interval = 1.0 / self.rate
        tolerance = (self.burst - 1.0) * interval
        now = time.time()
        table = RATE_LIMITS
        start = sql.greatest(table.c.tat, now)  # when the bucket's next token is due
        within = start - now <= tolerance
        statement = (
            postgresql.insert(table)
            .values(key=key[:200], tat=now + interval, allowed=True)
            .on_conflict_do_update(
                index_elements=[table.c.key],
                # Every SET reads the row as it was: both see the old `tat`.
                set_={
                    "tat": sql.coalesce(_when(within, start + interval), table.c.tat),
                    "allowed": within,
                },
            )
            .returning(table.c.tat, table.c.allowed)
        )
        with self._db.session() as session:
            tat, allowed = session.execute(statement).one()
        self._pruner.tick()
        if allowed:
            return None
        return max(1, math.ceil(max(float(tat), now) - tolerance - now))

    def prune(self) -> None:
        """Delete the buckets that are full again (a fresh row would say the same)."""
        with self._db.session() as session:
            session.execute(delete(RATE_LIMITS).where(RATE_LIMITS.c.tat < time.time()))


class SharedLockout(Lockout):
    """`Lockout`'s rule (failures in a row lock a key for a while), counted in the database."""

    def __init__(self, db: Database, failures: int, lock_s: float, **kwargs: Any) -> None:
        super().__init__(failures, lock_s, **kwargs)
        self._db = db
        self._pruner = _Pruner(self.prune)

    def locked_for(self, key: str) -> int | None:
        if self.failures <= 0:
            return None
        with self._db.session() as session:
            until = session.scalar(
                select(SIGN_IN_LOCKOUTS.c.locked_until).where(SIGN_IN_LOCKOUTS.c.key == key[:300])
            )
        remaining = (until or 0.0) - time.time()
        return max(1, math.ceil(remaining)) if remaining > 0 else None

    def fail(self, key: str) -> None:
        if self.failures <= 0:
            return
        now = time.time()
        table = SIGN_IN_LOCKOUTS
        locked = table.c.locked_until > now  # a failure that raced the lock does not extend it
        completes = table.c.failures + 1 >= self.failures
        first_locks = self.failures <= 1
        statement = (
            postgresql.insert(table)
            .values(
                key=key[:300],
                failures=0 if first_locks else 1,
                locked_until=now + self.lock_s if first_locks else 0.0,
            )
            .on_conflict_do_update(
                index_elements=[table.c.key],
                set_={
                    "failures": sql.coalesce(
                        _when(locked, table.c.failures),
                        _when(completes, 0),
                        table.c.failures + 1,
                    ),
                    "locked_until": sql.coalesce(
                        _when(locked, table.c.locked_until),
                        _when(completes, now + self.lock_s),
                        table.c.locked_until,
                    ),
                },
            )
        )
        with self._db.session() as session:
            session.execute(statement)
        self._pruner.tick()

    def succeed(self, key: str) -> None:
        with self._db.session() as session:
            session.execute(delete(SIGN_IN_LOCKOUTS).where(SIGN_IN_LOCKOUTS.c.key == key[:300]))

    def forgive(self, key: str) -> None:
        with self._db.session() as session:
            session.execute(
                update(SIGN_IN_LOCKOUTS)
                .where(SIGN_IN_LOCKOUTS.c.key == key[:300], SIGN_IN_LOCKOUTS.c.failures > 0)
                .values(failures=SIGN_IN_LOCKOUTS.c.failures - 1)
            )

    def prune(self) -> None:
        """Delete keys with no failure counted and no lock in force."""
        with self._db.session() as session:
            session.execute(
                delete(SIGN_IN_LOCKOUTS).where(
                    SIGN_IN_LOCKOUTS.c.failures == 0, SIGN_IN_LOCKOUTS.c.locked_until < time.time()
                )
            )


def _when(condition: Any, value: Any) -> Any:
    """`value` where `condition` holds, else NULL (for COALESCE chains)."""
    return case((condition, value), else_=null())
