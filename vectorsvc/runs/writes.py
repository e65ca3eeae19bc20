"""The write path of index runs: dedupe, then write and charge under one workspace lock.

- Dedupe: a point whose stored content hash equals the new one is skipped: not embedded,
  not written, not billed.
- Charging: the funds are reserved (`billing.funds`), then the upsert and the charge run,
  all under a per-workspace lock: no other run can spend the balance between the check and
  the debit, so a write is never left unpaid and a wallet never goes negative.
- Paid exactly once: the upsert and the charge are shielded from cancellation (a run's
  `options.timeout_s`, a shutdown): once the upsert starts, both finish. A write-ahead
  intent recorded before the upsert and deleted with the charge covers what no shield can,
  a crash or a failed charge: `intents.reconcile` charges what such a write stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import anyio
from sqlalchemy.orm import Session

from vectorsvc.billing.funds import Reservation
from vectorsvc.billing.service import charge, opening_micro_credits, quote
from vectorsvc.model_registry.pricing import Usage
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.points import namespaces, store
from vectorsvc.points.namespaces import Namespace
from vectorsvc.runs import intents
from vectorsvc.runs.intents import ChunkProgress, WriteIntent
from vectorsvc.state import AppState
from vectorsvc.vectorstore.base import PointRecord

logger = logging.getLogger(__name__)


def charge_run(
    state: AppState,
    *,
    workspace_id: str,
    run_key: str,
    model: ModelSpec,
    mode: str,
    usage: Usage,
    also: Callable[[Session], None] | None = None,
    reservation_id: str | None = None,
) -> int:
    """Record usage and debit it in one transaction (with `also`'s writes), dropping the
    reservation `reservation_id` that held its funds; the cost."""
    with state.db.session() as session:
        result = charge(
            session,
            workspace_id=workspace_id,
            run_id=run_key,
            spec=model,
            mode=mode,
            units=usage,
            opening_micro_credits=opening_micro_credits(state.settings),
            reservation_id=reservation_id,
        )
        if also is not None:
            also(session)
        return result.cost


def _upsert(
    state: AppState,
    model: ModelSpec,
    intent: WriteIntent,
    points: list[PointRecord],
    chunk_counts: dict[str, int] | None = None,
) -> int:
    """Record the intent, upsert, keep the catalog exact; how many points are new (blocking)."""
    state.media.require_present(
        workspace_id=intent.ns.workspace_id,
        media_refs=[
            ref for p in points if isinstance(ref := p.payload.get(namespaces.MEDIA_REF_FIELD), str)
        ],
    )
    with state.db.session() as session:
        intents.record(session, intent)
    return store.upsert_and_recount(
        state.store,
        state.db,
        state.collections,
        model=model,
        ns=intent.ns,
        modality=intent.modality,
        points=points,
        chunk_counts=chunk_counts,
    )


@dataclass(frozen=True)
class WriteResult:
    created: int
    cost: int


async def write_and_charge(
    state: AppState,
    *,
    model: ModelSpec,
    ns: Namespace,
    points: list[PointRecord],
    modality: str,
    run_key: str,
    writer: str,
    billable: int,
    done: int | None = None,
    chunk_counts: dict[str, int] | None = None,
    written_before: Sequence[str] = (),
    chunk: ChunkProgress | None = None,
    reserved: Reservation | None = None,
) -> WriteResult:
    """Check funds, upsert `points`, charge `billable` items: atomic per workspace.

    `writer` is the run id the points carry; `run_key` keys the charge (the run id, or a
    background chunk's `<run id>:<start>`). `written_before` are the ids of points this run
    stored earlier and was not charged for (a resumed background run): `billable` counts
    them too. `done`: the items this counts for a background chunk's progress (default
    `billable`: index runs bill per text chunk). `chunk_counts`: each written item's chunk
    count (`points.store.upsert_and_recount`). A background chunk's progress commits with
    the charge. `reserved`: the
    charge's funds, already set aside (a background chunk's share of its run's
    reservation); else they are reserved here.
    """
    usage = Usage(items=billable)
    funds = state.funds
    intent = WriteIntent(
        key=run_key,
        writer=writer,
        ns=ns,
        modality=modality,
        point_ids=[p.id for p in points] + list(written_before),
        chunk=chunk,
    )
    async with state.write_locks.get(ns.workspace_id):
        reservation = (
            reserved
            if reserved is not None
            else await funds.reserve(ns.workspace_id, quote(model, "index", usage))
        )
        # From here the write and its charge finish together: a timeout or a shutdown that
        # cancels the run takes effect after them.
        with anyio.CancelScope(shield=True):
            started = time.perf_counter()
            try:
                created = (
                    await anyio.to_thread.run_sync(
                        partial(_upsert, state, model, intent, points, chunk_counts)
                    )
                    if intent.point_ids
                    else 0
                )
            except BaseException:
                funds.release(reservation)
                await _settle_failed(state, intent)
                raise

            def _settle(session: Session) -> None:
                intents.settle(session, run_key)
                if chunk is not None:
                    intents.apply_chunk(
                        session,
                        chunk,
                        done=billable if done is None else done,
                        cost=quote(model, "index", usage),
                        write_seconds=time.perf_counter() - started,
                    )

            try:
                cost = await funds.commit(
                    reservation,
                    partial(
                        charge_run,
                        state,
                        workspace_id=ns.workspace_id,
                        run_key=run_key,
                        model=model,
                        mode="index",
                        usage=usage,
                        also=_settle,
                        reservation_id=reservation.id,
                    ),
                )
            except BaseException:
                await _settle_failed(state, intent)
                raise
    return WriteResult(created=created, cost=cost)


async def _settle_failed(state: AppState, intent: WriteIntent) -> None:
    """The write or its charge failed: charge what it stored anyway, or remove it (see
    `intents.reconcile`). If that fails too, the intent waits for the next start."""
    try:
        await state.funds.commit(
            Reservation(intent.ns.workspace_id, 0), partial(intents.reconcile, state, intent)
        )
    except Exception:
        logger.exception("settling the interrupted write %s failed; retried at start", intent.key)
