"""Funds held in memory: reservations, and query charges written after the response.

A search costs a fraction of a millicredit, and writing its charge (a usage record, a debit, a
ledger entry: one SQLite transaction) took longer than the rest of the service's own work on
the request. So query-like runs (search, execute) reserve their cost here before any work,
answer, and leave the charge to a background flusher that writes every pending charge in one
transaction (`billing.service.charge_batch`) up to a second later (`charge_flush_ms`).
Index and delete runs reserve too and charge in the request (`commit`), as before. A queued
background run reserves its whole cost (`runs.background`); each chunk's charge `draw`s its
part, and the rest is released when the run ends (`hold` reserves them again at start-up).

The rule that keeps wallets exact: what a workspace may spend is its stored balance minus
what this process has reserved (in-flight runs plus charges not yet written), and checking
and reserving happen in one step on the event loop. So this process never spends a balance
twice, and a wallet never goes below zero. The stored balance is cached for a few seconds;
a refusal re-reads it first, so a top-up from the CLI is never missed.

What this costs: a crash loses the charges of at most the last flush interval (the
searches ran, unbilled). Several service processes sharing one database each reserve only
their own spending; a batch that another process's spending left uncovered is debited as far
as the balance goes and the rest is logged (`charge_batch`'s `unpaid`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import anyio

from vectorsvc.billing.service import (
    PendingCharge,
    charge_batch,
    current_balance,
    insufficient_funds,
)
from vectorsvc.db.database import Database

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Reservation:
    """Funds set aside for one run; settled exactly once (release, commit or defer)."""

    workspace_id: str
    cost: int
    settled: bool = field(default=False)


class Funds:
    def __init__(
        self,
        db: Database,
        *,
        opening_micro_credits: int,
        flush_interval_s: float = 1.0,
        balance_ttl_s: float = 5.0,
        max_batch: int = 1000,
    ) -> None:
        self._db = db
        self._opening = opening_micro_credits
        self._flush_interval_s = flush_interval_s
        self._balance_ttl_s = balance_ttl_s
        self._max_batch = max_batch
        self._reserved: dict[str, int] = {}
        self._balances: dict[str, tuple[int, float]] = {}  # stored balance, read at (monotonic)
        self._pending: list[tuple[PendingCharge, Reservation]] = []
        # Held around every read of a stored balance and every write of a charge, so that a
        # balance and the reservations it already includes are always updated together.
        self._db_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    # --- reservations ---------------------------------------------------------------------

    async def reserve(self, workspace_id: str, cost: int) -> Reservation:
        """Set `cost` aside, or raise 402 `insufficient_funds` (nothing reserved)."""
        if cost <= 0:
            return Reservation(workspace_id, 0)
        balance = self._fresh_balance(workspace_id)
        if balance is None or balance - self._reserved.get(workspace_id, 0) < cost:
            balance = await self._read_balance(workspace_id)  # a refusal reads it first
        available = balance - self._reserved.get(workspace_id, 0)
        if available < cost:
            reserved = self._reserved.get(workspace_id, 0)
            raise insufficient_funds(
                balance=max(available, 0), cost=cost, reserved=min(reserved, balance)
            )
        self._reserved[workspace_id] = self._reserved.get(workspace_id, 0) + cost
        return Reservation(workspace_id, cost)

    def hold(self, workspace_id: str, cost: int) -> Reservation:
        """Set `cost` aside whatever the balance: funds reserved before a restart (queued
        background runs), recomputed at start-up. New work is refused while they exceed it."""
        if cost > 0:
            self._reserved[workspace_id] = self._reserved.get(workspace_id, 0) + cost
        return Reservation(workspace_id, max(cost, 0))

    async def draw(self, source: Reservation, cost: int) -> Reservation:
        """A reservation of `cost` for one charge, taken out of `source` (funds set aside
        earlier for a whole background run) as far as it goes; the rest, if any, is reserved
        now (402 if it cannot be). What `source` keeps is released with it."""
        taken = 0 if source.settled else min(cost, source.cost)
        source.cost -= taken  # no await since: the workspace's total reserved is unchanged
        drawn = Reservation(source.workspace_id, taken)
        if taken < cost:
            try:
                extra = await self.reserve(source.workspace_id, cost - taken)
            except BaseException:
                self.release(drawn)
                raise
            drawn.cost += extra.cost
            extra.settled = True
        return drawn

    async def check(self, workspace_id: str, cost: int) -> None:
        """402 `insufficient_funds` now if `cost` could not be reserved; reserves nothing."""
        self.release(await self.reserve(workspace_id, cost))

    def release(self, reservation: Reservation) -> None:
        """The run failed or was refused: give the funds back. Idempotent."""
        if not reservation.settled:
            reservation.settled = True
            self._unreserve(reservation.workspace_id, reservation.cost)

    async def commit(self, reservation: Reservation, write: Callable[[], T]) -> T:
        """Run `write` (a blocking charge that debits the stored balance) in a thread, then
        drop the reservation it replaces. On failure the funds are released."""
        try:
            async with self._db_lock:
                return await anyio.to_thread.run_sync(write)
        finally:
            # The stored balance changed (or may have): read it afresh next time. No await
            # since the lock's release, so a balance read and the reservations still agree.
            self._balances.pop(reservation.workspace_id, None)
            self.release(reservation)

    def defer(self, reservation: Reservation, charge: PendingCharge) -> None:
        """The run succeeded: write its charge with the next batch; the funds stay reserved
        until then."""
        if reservation.settled:
            raise RuntimeError("a reservation is settled once")
        reservation.settled = True
        self._pending.append((charge, reservation))
        self._wake.set()

    # --- the flusher ----------------------------------------------------------------------

    def start(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._run())

    async def flush(self) -> None:
        """Write every pending charge now (reads of wallets and usage call this first)."""
        async with self._db_lock:
            while self._pending:
                batch, self._pending = (
                    self._pending[: self._max_batch],
                    self._pending[self._max_batch :],
                )
                await self._write(batch)

    async def aclose(self) -> None:
        """Stop the flusher and write what is pending."""
        self._closing.set()
        self._wake.set()
        if self._flusher is not None:
            await self._flusher  # it ends at once, without waiting out its interval
            self._flusher = None
        await self.flush()

    async def _run(self) -> None:
        while not self._closing.is_set():
            await self._wake.wait()
            if len(self._pending) < self._max_batch:
                try:  # let charges gather for the interval; closing cuts it short
                    await asyncio.wait_for(self._closing.wait(), self._flush_interval_s)
                except TimeoutError:
                    pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # keep flushing later; the charges stay pending
                logger.exception("writing query charges failed; retrying")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _write(self, batch: list[tuple[PendingCharge, Reservation]]) -> None:
        """Write `batch` (the caller holds `_db_lock`); on failure it goes back in front."""
        try:
            result = await anyio.to_thread.run_sync(
                partial(
                    charge_batch,
                    self._db,
                    [charge for charge, _ in batch],
                    opening_micro_credits=self._opening,
                )
            )
        except BaseException:
            self._pending[:0] = batch
            raise
        now = time.monotonic()
        for charge, reservation in batch:
            self._unreserve(charge.workspace_id, reservation.cost)
        for workspace_id, balance in result.balances.items():
            self._balances[workspace_id] = (balance, now)
        for charge in result.unpaid:
            logger.warning(
                "run %s of workspace %s was not billed: the wallet no longer covered it "
                "(another process spent the reserved funds)",
                charge.run_id,
                charge.workspace_id,
            )

    # --- internals ------------------------------------------------------------------------

    def _fresh_balance(self, workspace_id: str) -> int | None:
        cached = self._balances.get(workspace_id)
        if cached is None or time.monotonic() - cached[1] > self._balance_ttl_s:
            return None
        return cached[0]

    async def _read_balance(self, workspace_id: str) -> int:
        async with self._db_lock:
            balance = await anyio.to_thread.run_sync(
                partial(
                    current_balance,
                    self._db,
                    workspace_id=workspace_id,
                    opening_micro_credits=self._opening,
                )
            )
            self._balances[workspace_id] = (balance, time.monotonic())
            return balance

    def _unreserve(self, workspace_id: str, cost: int) -> None:
        if cost:
            left = self._reserved.get(workspace_id, 0) - cost
            if left > 0:
                self._reserved[workspace_id] = left
            else:
                self._reserved.pop(workspace_id, None)
