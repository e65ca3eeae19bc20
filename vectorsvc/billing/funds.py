"""Funds reserved in the database, and query charges written before the answer.

Every process on one database reserves against the same wallets (`billing.reservations`: a
conditional update and a row per reservation), so N service processes together never let a
wallet go below zero nor start a run it cannot pay for. A run reserves its cost before any
work; on success its charge drops the reservation and debits the balance in one
transaction, on failure the reservation is given back.

Query-like runs (search, execute) are charged before they answer (`settle`), so a served run
is billed even if the process dies right after. Their charges go through one writer task
that writes every charge waiting at that moment in one transaction (`charge_batch`): under
load, runs share a commit; alone, a run waits for its own. Index and delete runs charge in
the request (`commit`). A queued background run reserves its whole cost (`runs.background`,
a reservation without expiry); each chunk's charge `draw`s its part, the rest is released
when the run ends.

A reservation expires (`reservation_ttl_s`) so that what a dead process held comes back:
each process gives back expired reservations now and then, and before it refuses a run.
Giving one back (`release`) is queued to the same writer, so the callers stay synchronous;
a refusal waits for the queue first, so funds just released are never missed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TypeVar

import anyio

from vectorsvc.billing import reservations
from vectorsvc.billing.service import (
    InsufficientFunds,
    PendingCharge,
    charge_batch,
    insufficient_funds,
)
from vectorsvc.db.database import Database

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How often a process gives back the reservations that expired (held by a dead process).
SWEEP_INTERVAL_S = 30.0


@dataclass
class Reservation:
    """Funds set aside for one run (the row `id` in `fund_reservations`; None when nothing
    is held); settled exactly once (release, commit or settle)."""

    workspace_id: str
    cost: int
    id: str | None = None
    settled: bool = field(default=False)


@dataclass
class _Charge:
    charge: PendingCharge
    done: asyncio.Future[None]


@dataclass
class _Barrier:
    done: asyncio.Future[None]


_Op = _Charge | _Barrier | str  # a str: a reservation to give back


class Funds:
    def __init__(
        self,
        db: Database,
        *,
        opening_micro_credits: int,
        reservation_ttl_s: float = 600.0,
        max_batch: int = 1000,
    ) -> None:
        self._db = db
        self._opening = opening_micro_credits
        self._ttl = timedelta(seconds=reservation_ttl_s)
        self._max_batch = max_batch
        self._ops: list[_Op] = []
        self._writing = False  # the writer has taken a batch out of `_ops` and not written it
        self._wake = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    # --- reservations ---------------------------------------------------------------------

    async def reserve(
        self, workspace_id: str, cost: int, *, key: str | None = None, expires: bool = True
    ) -> Reservation:
        """Set `cost` aside, or raise 402 `insufficient_funds` (nothing reserved).
        `key` names the reservation (else a random id); `expires=False`: held until
        released (a queued background run's funds)."""
        if cost <= 0:
            return Reservation(workspace_id, 0)
        reservation = Reservation(workspace_id, cost, key or _new_id())
        await self._reserve(reservation, expires=expires)
        return reservation

    async def resume(self, workspace_id: str, key: str, cost: int) -> Reservation:
        """The reservation `key` held before a restart (a queued background run's), as it is
        now; if it is gone, `cost` is reserved again as far as the wallet allows (nothing
        if it cannot: the run's chunks then reserve their own)."""
        amount = await anyio.to_thread.run_sync(reservations.held, self._db, key)
        if amount is not None:
            return Reservation(workspace_id, amount, key)
        try:
            return await self.reserve(workspace_id, cost, key=key, expires=False)
        except InsufficientFunds:
            return Reservation(workspace_id, 0)

    async def draw(self, source: Reservation, cost: int) -> Reservation:
        """A reservation of `cost` for one charge, taken out of `source` (funds set aside
        earlier for a whole background run) as far as it goes; the rest, if any, is reserved
        now (402 if it cannot be). What `source` keeps is released with it."""
        if cost <= 0:
            return Reservation(source.workspace_id, 0)
        taken = 0 if source.settled or source.id is None else min(cost, source.cost)
        drawn = Reservation(source.workspace_id, cost, _new_id())
        await self._reserve(
            drawn, expires=True, taken_from=(source.id, taken) if source.id and taken else None
        )
        source.cost -= taken
        return drawn

    async def check(self, workspace_id: str, cost: int) -> None:
        """402 `insufficient_funds` now if `cost` could not be reserved; reserves nothing."""
        if cost <= 0:
            return
        left = await self._available(workspace_id)
        if left.spendable < cost:
            await self._before_refusal()
            left = await self._available(workspace_id)
            if left.spendable < cost:
                raise insufficient_funds(
                    balance=left.spendable, cost=cost, reserved=min(left.reserved, left.balance)
                )

    def release(self, reservation: Reservation) -> None:
        """The run failed or was refused: give the funds back (queued to the writer; a refusal
        waits for it). Idempotent."""
        if not reservation.settled:
            reservation.settled = True
            if reservation.id is not None:
                self._submit(reservation.id)

    async def commit(self, reservation: Reservation, write: Callable[[], T]) -> T:
        """Run `write` (a blocking charge that drops the reservation `reservation.id` and
        debits the stored balance, in one transaction) in a thread. On failure the funds are
        released."""
        try:
            result = await anyio.to_thread.run_sync(write)
        except BaseException:
            self.release(reservation)
            raise
        reservation.settled = True
        return result

    async def settle(self, reservation: Reservation, charge: PendingCharge) -> None:
        """The run succeeded: write its charge now (with whatever other charges are waiting)
        and return once it is stored. If it cannot be written, the funds are released and
        the error raised: the run is not answered, so it is not billed."""
        if reservation.settled:
            raise RuntimeError("a reservation is settled once")
        reservation.settled = True
        if reservation.id is not None:
            charge = PendingCharge(
                workspace_id=charge.workspace_id,
                run_id=charge.run_id,
                spec=charge.spec,
                mode=charge.mode,
                units=charge.units,
                created_at=charge.created_at,
                reservation_id=reservation.id,
            )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._submit(_Charge(charge, done))
        try:
            await asyncio.shield(done)  # a cancelled run still waits for its charge's fate
        except Exception:
            if reservation.id is not None:
                self._submit(reservation.id)
            raise

    # --- the writer -----------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._writer is None:
            self._closing = False
            self._writer = loop.create_task(self._run(), name="funds-writer")
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep_now_and_then(), name="funds-sweeper")

    async def flush(self) -> None:
        """Return once everything queued before (charges, releases) is written."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._submit(_Barrier(done))
        await done

    async def aclose(self) -> None:
        """Write what is queued, then stop."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
            self._sweeper = None
        if self._writer is not None:
            await self.flush()
            self._closing = True
            self._wake.set()
            await self._writer
            self._writer = None

    def _submit(self, op: _Op) -> None:
        self._ops.append(op)
        self._wake.set()
        if self._writer is None:
            self.start()

    async def _run(self) -> None:
        while True:
            if not self._ops:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, self._ops = self._ops[: self._max_batch], self._ops[self._max_batch :]
            self._writing = True
            try:
                await self._write(batch)
            except Exception as exc:  # the charges' runs fail; the rest is tried again
                logger.exception("writing charges and releases failed")
                for op in batch:
                    if isinstance(op, _Charge) and not op.done.done():
                        op.done.set_exception(exc)
                self._ops[:0] = [op for op in batch if not isinstance(op, _Charge)]
                await asyncio.sleep(1.0)
            finally:
                self._writing = False

    async def _write(self, batch: list[_Op]) -> None:
        charges = [op.charge for op in batch if isinstance(op, _Charge)]
        released = [op for op in batch if isinstance(op, str)]
        unpaid = await anyio.to_thread.run_sync(partial(self._write_blocking, charges, released))
        for op in batch:
            if isinstance(op, _Charge | _Barrier) and not op.done.done():
                op.done.set_result(None)
        for charge in unpaid:
            logger.warning(
                "run %s of workspace %s was not billed: its reservation expired before it "
                "was charged and the wallet no longer covered it",
                charge.run_id,
                charge.workspace_id,
            )

    def _write_blocking(
        self, charges: list[PendingCharge], released: list[str]
    ) -> list[PendingCharge]:
        unpaid: list[PendingCharge] = []
        if charges:
            unpaid = charge_batch(self._db, charges, opening_micro_credits=self._opening).unpaid
        if released:
            reservations.release(self._db, released)
        return unpaid

    async def _sweep_now_and_then(self) -> None:
        while True:
            try:
                await anyio.to_thread.run_sync(reservations.release_expired, self._db)
            except Exception:
                logger.exception("giving back expired reservations failed")
            await anyio.sleep(SWEEP_INTERVAL_S)

    # --- internals ------------------------------------------------------------------------

    async def _reserve(
        self,
        reservation: Reservation,
        *,
        expires: bool,
        taken_from: tuple[str, int] | None = None,
    ) -> None:
        assert reservation.id is not None
        attempt = partial(
            reservations.reserve,
            self._db,
            workspace_id=reservation.workspace_id,
            reservation_id=reservation.id,
            amount=reservation.cost,
            expires_at=datetime.now(UTC) + self._ttl if expires else None,
            opening_micro_credits=self._opening,
            taken_from=taken_from,
        )
        try:
            await anyio.to_thread.run_sync(attempt)
        except InsufficientFunds:
            # Before refusing: what this process gave back and what dead ones held.
            await self._before_refusal()
            await anyio.to_thread.run_sync(attempt)

    async def _before_refusal(self) -> None:
        # What is queued and what the writer is writing now: a release taken out of the
        # queue is not stored until its batch commits.
        if self._ops or self._writing:
            await self.flush()
        await anyio.to_thread.run_sync(reservations.release_expired, self._db)

    async def _available(self, workspace_id: str) -> reservations.Available:
        return await anyio.to_thread.run_sync(
            partial(
                reservations.available,
                self._db,
                workspace_id=workspace_id,
                opening_micro_credits=self._opening,
            )
        )


def _new_id() -> str:
    return f"res_{secrets.token_hex(12)}"
