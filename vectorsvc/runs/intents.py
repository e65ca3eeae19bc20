"""Write-ahead intents: every stored point is a paid point, whatever stops the service.

An index write (a synchronous run, or one chunk of a background run) goes:

1. record the intent, a `pending_writes` row: the charge's key, the run the points will
   carry (`_run`), their namespace and point ids, and for a background chunk its progress;
2. upsert the points;
3. charge, and delete the intent in the charge's transaction.

So at any instant either no intent is left (nothing stored, or stored and charged), or an
intent names the only points that can be stored unpaid. `reconcile` settles one: the points
among its ids that carry its run are charged under the same key, at the model's index price
(exactly once: the usage record's run id is unique); none stored, the intent is dropped.
A run cut by a crash was never acknowledged, but what it stored is
kept and paid rather than deleted: deleting would also lose the previous, paid version of
each item it replaced, and the client's retry finds the items stored and skips them.
Only when the wallet can no longer cover them (another process spent the funds reserved for
them) are they deleted instead. Start-up reconciles every intent left, before serving.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from vectorsvc.billing.service import (
    InsufficientFunds,
    charge,
    opening_micro_credits,
)
from vectorsvc.billing.usage import PLATFORM_RUN_PREFIX
from vectorsvc.db.tables import BackgroundRun, PendingWrite
from vectorsvc.errors import NotFound
from vectorsvc.model_registry.pricing import Usage
from vectorsvc.points import namespaces, store
from vectorsvc.points.namespaces import Namespace
from vectorsvc.state import AppState
from vectorsvc.vectorstore.base import HasIds

logger = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 1000  # a background run lists at most this many failed items
# Writes keyed so are platform work (a release migration's re-embedding): never charged.
FREE_RUN_PREFIX = PLATFORM_RUN_PREFIX


@dataclass(frozen=True)
class ChunkProgress:
    """What committing one background chunk adds to its run (applied with the charge)."""

    run_id: str
    start: int
    end: int
    skipped: int
    failures: list[dict[str, Any]]
    embed_seconds: float
    # The run position and client id of each point the chunk writes, in `point_ids` order:
    # if a crash stored only some of them, the others are reported as failed.
    positions: list[int]
    item_ids: list[str]


@dataclass(frozen=True)
class WriteIntent:
    key: str  # the charge's idempotency key: the run id, or `<run id>:<chunk start>`
    writer: str  # the run id the points carry in `namespaces.RUN_FIELD`
    ns: Namespace
    modality: str
    point_ids: list[str]
    chunk: ChunkProgress | None = None


@dataclass(frozen=True)
class Reconciled:
    key: str
    workspace_id: str
    charged_items: int  # stored points charged now (0 when the key was charged already)
    removed_items: int  # stored points deleted: the wallet could not cover them


def record(session: Session, intent: WriteIntent) -> None:
    ns = intent.ns
    session.merge(
        PendingWrite(
            key=intent.key,
            run_id=intent.writer,
            workspace_id=ns.workspace_id,
            model=ns.model_slug,
            collection=ns.collection,
            scope=ns.scope,
            modality=intent.modality,
            point_ids=list(intent.point_ids),
            chunk=dataclasses.asdict(intent.chunk) if intent.chunk is not None else None,
        )
    )


def settle(session: Session, key: str) -> None:
    """The write's charge is in this transaction: the intent is done."""
    session.execute(delete(PendingWrite).where(PendingWrite.key == key))


def apply_chunk(
    session: Session,
    chunk: ChunkProgress,
    *,
    done: int,
    cost: int,
    write_seconds: float,
    extra_failures: Sequence[dict[str, Any]] = (),
) -> None:
    """Add a committed chunk to its run, once: a chunk already applied is left alone."""
    run = session.get(BackgroundRun, chunk.run_id)
    if run is None or run.next_index != chunk.start:
        return
    failures = sorted([*chunk.failures, *extra_failures], key=lambda f: int(f["index"]))
    run.next_index = chunk.end
    run.done += done
    run.skipped += chunk.skipped
    run.failed += len(failures)
    run.errors = (list(run.errors) + failures)[:MAX_REPORTED_ERRORS]
    run.embed_seconds += chunk.embed_seconds
    run.write_seconds += write_seconds
    run.cost += cost


def reconcile_pending(state: AppState) -> list[Reconciled]:
    """Settle every intent an interrupted process left (blocking; run before serving)."""
    with state.db.session() as session:
        rows = session.scalars(select(PendingWrite).order_by(PendingWrite.created_at)).all()
    done: list[Reconciled] = []
    for row in rows:
        try:
            intent = _intent(state, row)
        except NotFound:
            logger.error(
                "pending write %s: model %r is not in the registry; left for a later start",
                row.key,
                row.model,
            )
            continue
        try:
            done.append(reconcile(state, intent))
        except Exception:  # serve anyway; the intent stays for the next start
            logger.exception("settling pending write %s failed; retried at the next start", row.key)
    if done:
        logger.warning(
            "reconciled %d interrupted index writes: %d stored items charged, %d removed",
            len(done),
            sum(r.charged_items for r in done),
            sum(r.removed_items for r in done),
        )
    return done


def reconcile(state: AppState, intent: WriteIntent) -> Reconciled:
    """Charge the points `intent` stored (or delete them if unaffordable), drop the intent."""
    ns = intent.ns
    spec = state.registry.get(ns.model_slug)
    stored = _stored_by(state, intent)
    if not stored or intent.key.startswith(FREE_RUN_PREFIX):
        with state.db.session() as session:
            settle(session, intent.key)
        return Reconciled(intent.key, ns.workspace_id, 0, 0)
    try:
        with state.db.session() as session:
            result = charge(
                session,
                workspace_id=ns.workspace_id,
                run_id=intent.key,
                spec=spec,
                mode="index",
                units=Usage(items=len(stored)),
                opening_micro_credits=opening_micro_credits(state.settings),
            )
            if intent.chunk is not None:
                apply_chunk(
                    session,
                    intent.chunk,
                    done=len(stored),
                    cost=result.cost,
                    write_seconds=0.0,
                    extra_failures=_interrupted(intent.chunk, intent.point_ids, stored),
                )
            settle(session, intent.key)
    except InsufficientFunds:
        logger.warning(
            "pending write %s: the wallet of workspace %s no longer covers its %d stored "
            "items; they are deleted",
            intent.key,
            ns.workspace_id,
            len(stored),
        )
        state.store.delete(ns.collection, filter=ns.tenant_filter.and_(HasIds(tuple(stored))))
        with state.db.session() as session:
            settle(session, intent.key)
        _recount(state, intent)
        return Reconciled(intent.key, ns.workspace_id, 0, len(stored))
    _recount(state, intent)
    return Reconciled(intent.key, ns.workspace_id, len(stored) if result.charged else 0, 0)


# --- internals ---------------------------------------------------------------------------


def _intent(state: AppState, row: PendingWrite) -> WriteIntent:
    model = state.registry.get(row.model)
    ns = namespaces.resolve(
        workspace_id=row.workspace_id, model=model, scope=namespaces.Scope(row.scope)
    )
    # The collection the points were written to, should the model's release have changed.
    ns = dataclasses.replace(ns, collection=row.collection)
    chunk = ChunkProgress(**row.chunk) if row.chunk is not None else None  # type: ignore[arg-type]
    return WriteIntent(
        key=row.key,
        writer=row.run_id,
        ns=ns,
        modality=row.modality,
        point_ids=[str(i) for i in row.point_ids],
        chunk=chunk,
    )


def _stored_by(state: AppState, intent: WriteIntent) -> list[str]:
    """The intent's point ids that are stored in its namespace and carry its run."""
    stored = store.stored_points(state.store, intent.ns, intent.point_ids)
    return [point_id for point_id, found in stored.items() if found.run_id == intent.writer]


def _interrupted(
    chunk: ChunkProgress, point_ids: Sequence[str], stored: Sequence[str]
) -> list[dict[str, Any]]:
    """Failures for the chunk's items a crash left unwritten while writing the others."""
    found = set(stored)
    return [
        {
            "index": chunk.positions[i],
            "id": chunk.item_ids[i],
            "code": "write_interrupted",
            "message": "the service stopped while this item was being written; index it again",
        }
        for i, point_id in enumerate(point_ids)
        if point_id not in found and i < len(chunk.positions)
    ]


def _recount(state: AppState, intent: WriteIntent) -> None:
    """The catalog's exact count of the namespace, as after any write or delete."""
    store.recount(state.store, state.db, ns=intent.ns, modality=intent.modality)
