"""Background index runs: accepted with 202, processed in chunks by one worker task that
serves workspaces in turn (`scheduling.FairQueue`), with funds reserved while they wait.

Exactly-once across restarts: each chunk's charge and progress commit in one database
transaction (the charge keyed `<run id>:<chunk start>`), and every point carries the run
that wrote it. A chunk written but not committed before a crash is found again on resume:
its points match their content hash and this run's id, so they are billed (once), not
embedded or written again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

import anyio
from sqlalchemy import CursorResult, Update, func, select, update
from sqlalchemy.orm import Session

from vectorsvc.billing.funds import Reservation
from vectorsvc.billing.money import format_credits
from vectorsvc.billing.service import InsufficientFunds, quote
from vectorsvc.db.tables import BackgroundRun
from vectorsvc.errors import Conflict, NotFound, ServiceError, ValidationFailed
from vectorsvc.locks import WorkspaceLocks
from vectorsvc.model_registry.pricing import Usage
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.points import namespaces
from vectorsvc.points.namespaces import Namespace
from vectorsvc.runs import leases
from vectorsvc.runs.gate import run_context
from vectorsvc.runs.inputs import MetadataLimits
from vectorsvc.runs.leases import ACTIVE
from vectorsvc.runs.pipeline import index_items, parse_items
from vectorsvc.runs.scheduling import FairQueue
from vectorsvc.runs.schemas import (
    RunErrorPublic,
    RunProgress,
    RunRequest,
    RunStatusPublic,
    RunTimings,
    RunUsage,
)
from vectorsvc.state import AppState

logger = logging.getLogger(__name__)

# Runs whose items stay in memory between their turns; beyond this many workspaces with work,
# a run's file is read again at its turn (memory stays bounded by a few runs' items).
MAX_OPEN_RUNS = 4
# What a `queue_full` refusal tells the client to wait before it tries again.
QUEUE_FULL_RETRY_AFTER_S = 30


def _legacy_inputs(state: AppState, run_id: str) -> Path:
    """Where a version before `runs.leases` kept a queued run's items."""
    return state.settings.data_dir / "runs" / f"{run_id}.json"


def status_public(run: BackgroundRun) -> RunStatusPublic:
    elapsed = None
    if run.started_at is not None:
        end = run.finished_at or datetime.now(UTC)
        start = run.started_at if run.started_at.tzinfo else run.started_at.replace(tzinfo=UTC)
        end = end if end.tzinfo else end.replace(tzinfo=UTC)
        elapsed = max((end - start).total_seconds(), 0.0)
    processed = run.done + run.skipped + run.failed
    return RunStatusPublic(
        id=run.id,
        model=run.model,
        mode=run.mode,
        scope=run.scope,
        status=run.status,
        progress=RunProgress(
            total=run.total, done=run.done, skipped=run.skipped, failed=run.failed
        ),
        errors=[RunErrorPublic.model_validate(e) for e in run.errors],
        error=RunErrorPublic.model_validate(run.error) if run.error else None,
        timings=RunTimings(
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            elapsed_seconds=elapsed,
            embed_seconds=round(run.embed_seconds, 3),
            write_seconds=round(run.write_seconds, 3),
            items_per_second=round(processed / elapsed, 2) if elapsed else None,
        ),
        usage=RunUsage(items=run.done, skipped=run.skipped, cost=format_credits(run.cost)),
        output=None,
    )


@dataclass
class _OpenRun:
    """A run being processed: its items in memory and where it has got to."""

    run: BackgroundRun  # detached: id, workspace, model, scope, total
    model: ModelSpec
    ns: Namespace
    items: list[Any]
    seen: set[str]  # ids taken so far, so that a later duplicate fails as one
    next_index: int


class BackgroundRuns:
    """Accepts background runs and processes them one chunk at a time, one worker, fairly:
    workspaces take turns chunk by chunk (`scheduling.FairQueue`), each its oldest run first.

    One worker, not several: the model is the bottleneck and already uses the cores, so more
    workers would add contention, not throughput; fairness comes from the turns.

    Bounds and funds: a workspace has at most `max_queued_items_per_workspace` items not yet
    processed (more is `429 queue_full`), and a run reserves its whole quoted cost when it is
    queued (`billing.funds`; `402 insufficient_funds` when the balance minus what is already
    reserved cannot cover it). Each chunk's charge draws its part of that reservation; what
    is left is released when the run ends, fails or is cancelled. The reservation is a row
    in the database without expiry, taken up again at start-up, so a restart cannot spend
    it twice.
    """

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = anyio.CancelScope()
        self._queue = FairQueue()
        self._held: dict[str, Reservation] = {}  # run id -> what is left of its funds
        self._open: OrderedDict[str, _OpenRun] = OrderedDict()  # least recently used first
        self._closed_seen: dict[str, set[str]] = {}  # ids taken by runs put back to their file
        self._submit_locks = WorkspaceLocks()
        self._leases = leases.Leases(state.db, state.settings.background_lease_s)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker; runs left queued or running by a previous process resume, and
        their funds are taken up again (the reservation each left in the database)."""
        if self._task is not None:
            return
        self._held.clear()  # their reservations live on in the database: resumed below
        self._queue.clear()
        self._open.clear()
        self._closed_seen.clear()
        await self._take_up()
        self._stopping = anyio.CancelScope()
        self._task = asyncio.get_running_loop().create_task(
            self._run_until_stopped(self._stopping), name="background-runs"
        )
        self._wake.set()

    async def _take_up(self) -> None:
        """Lease the runs that are this process's or nobody's (`runs.leases`: their process
        died) and queue the new ones, their funds taken up from the database."""
        for run in await self._leases.take_up():
            if run.run_id in self._queue:
                continue
            cost = (
                quote(self.state.registry.get(run.model), "index", Usage(items=run.left))
                if run.model in self.state.registry
                else 0
            )
            self._held[run.run_id] = await self.state.funds.resume(
                run.workspace_id, _funds_key(run.run_id), cost
            )
            self._queue.add(run.workspace_id, run.run_id)
            self._wake.set()

    async def _keep_leases(self) -> None:
        """Renew this process's leases and take up lapsed ones, a few times per lease."""
        while True:
            await anyio.sleep(self._leases.seconds / 3)
            try:
                await self._take_up()
            except Exception:
                logger.exception("renewing background run leases failed")

    async def stop(self) -> None:
        if self._task is not None:
            # An anyio cancellation, not Task.cancel(): a chunk's write and charge are
            # shielded from it (`write_and_charge`), so they finish before the worker ends.
            self._stopping.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
            await self._leases.let_go()
        # A chunk cut short may still commit in its thread: read positions afresh on start.
        self._open.clear()
        self._closed_seen.clear()

    # -- API ---------------------------------------------------------------------------

    async def submit(self, *, workspace_id: str, request: RunRequest) -> RunStatusPublic:
        state = self.state
        if request.mode != "index":
            raise ValidationFailed(
                f"options.background applies to mode 'index' only (got {request.mode!r}); "
                "send other modes without it",
                field="options.background",
                code="background_not_supported",
            )
        # Items are checked one by one as the run goes (a bad item fails alone), so the
        # model's contract is not applied to the whole list here.
        ctx = run_context(
            state, workspace_id=workspace_id, request=request, validate_contract=False
        )
        raw_items = request.input.get("items")
        if not isinstance(raw_items, list) or not raw_items:
            raise ValidationFailed("input.items: a non-empty list of items", field="input.items")
        limit = state.settings.max_items_per_background_run
        if len(raw_items) > limit:
            raise ValidationFailed(
                f"input.items: at most {limit} items per background run (got {len(raw_items)})",
                field="input.items",
                code="too_many_items",
            )
        cap = state.settings.max_queued_items_per_workspace
        if len(raw_items) > cap:
            raise ValidationFailed(
                f"input.items: a workspace may have at most {cap} items queued "
                f"(VECTORSVC_MAX_QUEUED_ITEMS_PER_WORKSPACE); this run has {len(raw_items)}",
                field="input.items",
                code="too_many_items",
            )
        # One submission per workspace at a time: the queue bound and the funds hold for
        # what is queued when each is checked.
        async with self._submit_locks.get(workspace_id):
            queued = await anyio.to_thread.run_sync(self._queued_items, workspace_id)
            if queued + len(raw_items) > cap:
                raise ServiceError(
                    f"this workspace has {queued} background items queued and may have at "
                    f"most {cap} (VECTORSVC_MAX_QUEUED_ITEMS_PER_WORKSPACE); this run's "
                    f"{len(raw_items)} would pass it: retry when queued runs have progressed",
                    field="input.items",
                    code="queue_full",
                    status=429,
                    details={"limit": cap, "queued": queued, "items": len(raw_items)},
                    headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)},
                )
            reservation = await state.funds.reserve(
                workspace_id,
                quote(ctx.model, "index", Usage(items=len(raw_items))),
                key=_funds_key(ctx.run_id),
                expires=False,
            )
            # Shielded: once the funds are reserved, the run is created and queued together,
            # even if this request is cancelled meanwhile.
            return await asyncio.shield(
                self._create(
                    workspace_id=workspace_id,
                    run_id=ctx.run_id,
                    model=ctx.model.slug,
                    scope=ctx.ns.scope,
                    raw_items=raw_items,
                    reservation=reservation,
                )
            )

    def _queued_items(self, workspace_id: str) -> int:
        """Items of the workspace's active runs not processed yet."""
        with self.state.db.session() as session:
            left = session.scalar(
                select(
                    func.coalesce(func.sum(BackgroundRun.total - BackgroundRun.next_index), 0)
                ).where(
                    BackgroundRun.workspace_id == workspace_id,
                    BackgroundRun.status.in_(ACTIVE),
                )
            )
        return int(left or 0)

    async def _create(
        self,
        *,
        workspace_id: str,
        run_id: str,
        model: str,
        scope: str,
        raw_items: list[Any],
        reservation: Reservation,
    ) -> RunStatusPublic:
        state = self.state

        def _write() -> RunStatusPublic:
            with state.db.session() as session:
                run = BackgroundRun(
                    id=run_id,
                    workspace_id=workspace_id,
                    model=model,
                    mode="index",
                    scope=scope,
                    status="queued",
                    total=len(raw_items),
                    next_index=0,
                    done=0,
                    skipped=0,
                    failed=0,
                    errors=[],
                    cost=0,
                    cancel_requested=False,
                    embed_seconds=0.0,
                    write_seconds=0.0,
                    lease_owner=self._leases.owner,
                    lease_expires_at=self._leases.expiry(),
                )
                session.add(run)
                session.flush()
                leases.store_inputs(session, run_id, raw_items)
                return status_public(run)

        try:
            public = await anyio.to_thread.run_sync(_write)
        except BaseException:
            state.funds.release(reservation)
            raise
        self._held[run_id] = reservation
        self._queue.add(workspace_id, run_id)
        self._wake.set()
        return public

    def get(self, *, workspace_id: str, run_id: str) -> RunStatusPublic:
        with self.state.db.session() as session:
            return status_public(self._owned(session, workspace_id, run_id))

    def list(self, *, workspace_id: str, status: str | None, limit: int) -> list[RunStatusPublic]:
        with self.state.db.session() as session:
            query = select(BackgroundRun).where(BackgroundRun.workspace_id == workspace_id)
            if status is not None:
                query = query.where(BackgroundRun.status == status)
            query = query.order_by(BackgroundRun.created_at.desc()).limit(limit)
            return [status_public(r) for r in session.scalars(query)]

    async def cancel(self, *, workspace_id: str, run_id: str) -> RunStatusPublic:
        """A queued run ends now (its funds released); a running one after its current
        chunk."""
        public, dequeued = await anyio.to_thread.run_sync(self._cancel_in_db, workspace_id, run_id)
        if dequeued:
            self._forget(run_id)
            _legacy_inputs(self.state, run_id).unlink(missing_ok=True)
        return public

    def _cancel_in_db(self, workspace_id: str, run_id: str) -> tuple[RunStatusPublic, bool]:
        with self.state.db.session() as session:
            # A conditional write first: the worker may start the run at the same moment.
            dequeued = _updated(
                session,
                update(BackgroundRun)
                .where(
                    BackgroundRun.id == run_id,
                    BackgroundRun.workspace_id == workspace_id,
                    BackgroundRun.status == "queued",
                )
                .values(status="cancelled", cancel_requested=True, finished_at=datetime.now(UTC)),
            )
            run = self._owned(session, workspace_id, run_id)
            if dequeued:
                leases.drop_inputs(session, run_id)
            else:
                if run.status not in ACTIVE:
                    raise Conflict(
                        f"run {run_id} already ended ({run.status}); nothing to cancel",
                        field="run_id",
                        code="run_finished",
                    )
                run.cancel_requested = True
                session.flush()
            return status_public(run), bool(dequeued)

    @staticmethod
    def _owned(session: Session, workspace_id: str, run_id: str) -> BackgroundRun:
        run = session.get(BackgroundRun, run_id)
        if run is None or run.workspace_id != workspace_id:
            raise NotFound(
                f"no run {run_id!r} in this workspace", field="run_id", code="run_not_found"
            )
        return run

    # -- worker ------------------------------------------------------------------------

    async def _run_until_stopped(self, scope: anyio.CancelScope) -> None:
        with scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_leases)
                await self._loop()

    async def _loop(self) -> None:
        while True:
            run_id = self._queue.next()
            if run_id is None:
                self._wake.clear()  # no await since the queue was seen empty
                await self._wake.wait()
                continue
            try:
                await self._step(run_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the worker alive; the run is marked failed
                logger.exception("background run %s failed", run_id)
                try:
                    await self._end(
                        run_id,
                        "failed",
                        {"code": "internal_error", "message": "the run failed unexpectedly"},
                    )
                except Exception:  # the database is failing: retry the run after a restart
                    logger.exception("background run %s could not be marked failed", run_id)
                    self._forget(run_id)

    async def _step(self, run_id: str) -> None:
        """One chunk of the run (or its end), while this process holds its lease: renewed
        first unless that was done lately (then it cannot have lapsed since)."""
        if not await self._leases.hold(run_id):
            # It ended, or another process took it up: whoever did settles it.
            self._queue.remove(run_id)
            self._open.pop(run_id, None)
            self._closed_seen.pop(run_id, None)
            self._held.pop(run_id, None)
            return
        current = self._open.get(run_id)
        if current is None:
            current = await anyio.to_thread.run_sync(
                self._open_run, run_id, self._closed_seen.pop(run_id, None)
            )
            if current is None:  # cancelled, gone, or its items lost
                self._forget(run_id)
                return
            self._open[run_id] = current
            while len(self._open) > MAX_OPEN_RUNS:
                # Read again from its file at its next turn; the ids it took are kept.
                closed_id, closed = self._open.popitem(last=False)
                self._closed_seen[closed_id] = closed.seen
        self._open.move_to_end(run_id)
        if await anyio.to_thread.run_sync(self._cancel_requested, run_id):
            await self._end(run_id, "cancelled")
            return
        run = current.run
        start = current.next_index
        if start >= run.total:
            await self._end(run_id, "succeeded")
            return
        end = min(start + self.state.settings.background_chunk_size, run.total)
        try:
            await self._process_chunk(
                run,
                current.model,
                current.ns,
                current.items,
                start,
                end,
                current.seen,
                reservation=self._held.get(run_id) or Reservation(run.workspace_id, 0),
            )
        except InsufficientFunds as exc:
            await self._end(run_id, "failed", {"code": exc.code, "message": exc.message})
            return
        current.next_index = end
        if end >= run.total:
            await self._end(run_id, "succeeded")

    def _open_run(self, run_id: str, seen: set[str] | None) -> _OpenRun | None:
        """Mark the run running and read its items (blocking); None if it is not active.
        `seen`: the ids it took before it was put back to its file, if it was."""
        state = self.state
        path = _legacy_inputs(state, run_id)
        with state.db.session() as session:
            # A conditional write first: a cancel may end the queued run at the same moment.
            started = _updated(
                session,
                update(BackgroundRun)
                .where(BackgroundRun.id == run_id, BackgroundRun.status.in_(ACTIVE))
                .values(
                    status="running",
                    started_at=func.coalesce(BackgroundRun.started_at, datetime.now(UTC)),
                ),
            )
            if not started:
                return None
            run = session.get_one(BackgroundRun, run_id)
            raw_items = leases.load_inputs(session, run_id)
            if raw_items is None and path.exists():  # queued by a version that kept a file
                with open(path, encoding="utf-8") as fh:
                    raw_items = json.load(fh)
            if raw_items is None:
                run.status = "failed"
                run.error = {"code": "inputs_lost", "message": "the run's items are gone"}
                run.finished_at = datetime.now(UTC)
                return None
            session.flush()
            session.expunge(run)
        model = state.registry.get(run.model)
        ns = state.collections.resolve(  # the scope was checked when the run was submitted
            workspace_id=run.workspace_id, model=model, scope=namespaces.Scope(run.scope)
        )
        if seen is None:
            # Ids seen before the resume point, so duplicates stay duplicates after a restart.
            seen = {str(it.get("id")) for it in raw_items[: run.next_index] if isinstance(it, dict)}
        return _OpenRun(run, model, ns, raw_items, seen, run.next_index)

    async def _end(self, run_id: str, status: str, error: dict[str, Any] | None = None) -> None:
        await anyio.to_thread.run_sync(partial(self._finish, run_id, status, error))
        self._forget(run_id)

    def _forget(self, run_id: str) -> None:
        """The run left the queue: release what is left of its funds."""
        self._queue.remove(run_id)
        self._open.pop(run_id, None)
        self._closed_seen.pop(run_id, None)
        self._leases.forget(run_id)
        reservation = self._held.pop(run_id, None)
        # By its key: a run cancelled here may be held by another process, or by none.
        self.state.funds.release(
            reservation or Reservation("", 0, _funds_key(run_id))  # the amount is the row's
        )

    def _finish(self, run_id: str, status: str, error: dict[str, Any] | None = None) -> None:
        with self.state.db.session() as session:
            run = session.get(BackgroundRun, run_id)
            if run is None:
                return
            run.status = status
            run.error = error
            run.finished_at = datetime.now(UTC)
            leases.drop_inputs(session, run_id)
        _legacy_inputs(self.state, run_id).unlink(missing_ok=True)

    def _cancel_requested(self, run_id: str) -> bool:
        with self.state.db.session() as session:
            return bool(
                session.scalar(
                    select(BackgroundRun.cancel_requested).where(BackgroundRun.id == run_id)
                )
            )

    async def _process_chunk(
        self,
        run: BackgroundRun,
        model: ModelSpec,
        ns: Namespace,
        raw_items: Sequence[Any],
        start: int,
        end: int,
        seen: set[str],
        *,
        reservation: Reservation,
    ) -> None:
        """Items `start..end-1` through the index pipeline, each failing alone;
        `reservation`: the run's funds, this chunk's charge draws its part."""
        limits = MetadataLimits.from_settings(self.state.settings)
        # Off the event loop: checking a chunk's items against the contract is CPU work.
        batch = await anyio.to_thread.run_sync(
            partial(parse_items, model, raw_items, start, end, seen, limits)
        )
        await index_items(
            self.state,
            model=model,
            ns=ns,
            batch=batch,
            run_id=run.id,
            strict=False,
            chunk=(start, end),
            reservation=reservation,
        )


def _funds_key(run_id: str) -> str:
    """The id of the reservation that holds a queued run's funds (`billing.reservations`)."""
    return f"bg_{run_id}"


def _updated(session: Session, statement: Update) -> int:
    """Run a conditional UPDATE; how many rows it changed."""
    result = session.execute(statement.execution_options(synchronize_session=False))
    return int(cast(CursorResult[Any], result).rowcount)
