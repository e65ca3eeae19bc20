"""Background index runs: accepted with 202, processed in chunks by one worker task.

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
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from vectorsvc import namespaces
from vectorsvc.billing.service import InsufficientFunds, quote
from vectorsvc.db.models import BackgroundRun
from vectorsvc.errors import Conflict, NotFound, ServiceError, ValidationFailed
from vectorsvc.models.pricing import Usage, format_credits
from vectorsvc.models.registry import ModelSpec
from vectorsvc.namespaces import Namespace
from vectorsvc.runs.content import (
    ImageContent,
    Prepared,
    check_content,
    embed_prepared,
    resolve_media,
)
from vectorsvc.runs.inputs import IndexItem
from vectorsvc.runs.intents import ChunkProgress
from vectorsvc.runs.schemas import (
    RunErrorPublic,
    RunProgress,
    RunRequest,
    RunStatusPublic,
    RunTimings,
    RunUsage,
)
from vectorsvc.runs.service import (
    build_points,
    item_contents,
    modality_of,
    plan_index,
    run_context,
)
from vectorsvc.runs.writes import write_and_charge
from vectorsvc.state import AppState

logger = logging.getLogger(__name__)

ACTIVE = ("queued", "running")


def _inputs_dir(state: AppState) -> Path:
    return state.settings.data_dir / "runs"


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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


class BackgroundRuns:
    """Accepts background runs and processes them, one at a time, oldest first."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = anyio.CancelScope()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker; runs left queued or running by a previous process resume."""
        self._stopping = anyio.CancelScope()
        self._task = asyncio.get_running_loop().create_task(
            self._run_until_stopped(self._stopping), name="background-runs"
        )
        self._wake.set()

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

    async def _run_until_stopped(self, scope: anyio.CancelScope) -> None:
        with scope:
            await self._loop()

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
        await state.funds.check(
            workspace_id, quote(ctx.model, "index", Usage(items=len(raw_items)))
        )
        run_id = ctx.run_id

        def _create() -> RunStatusPublic:
            _write_json_atomic(_inputs_dir(state) / f"{run_id}.json", raw_items)
            with state.db.session() as session:
                run = BackgroundRun(
                    id=run_id,
                    workspace_id=workspace_id,
                    model=ctx.model.slug,
                    mode="index",
                    scope=ctx.ns.scope,
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
                )
                session.add(run)
                session.flush()
                return status_public(run)

        public = await anyio.to_thread.run_sync(_create)
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

    def cancel(self, *, workspace_id: str, run_id: str) -> RunStatusPublic:
        with self.state.db.session() as session:
            run = self._owned(session, workspace_id, run_id)
            if run.status not in ACTIVE:
                raise Conflict(
                    f"run {run_id} already ended ({run.status}); nothing to cancel",
                    field="run_id",
                    code="run_finished",
                )
            run.cancel_requested = True
            if run.status == "queued":
                run.status = "cancelled"
                run.finished_at = datetime.now(UTC)
            return status_public(run)

    @staticmethod
    def _owned(session: Session, workspace_id: str, run_id: str) -> BackgroundRun:
        run = session.get(BackgroundRun, run_id)
        if run is None or run.workspace_id != workspace_id:
            raise NotFound(
                f"no run {run_id!r} in this workspace", field="run_id", code="run_not_found"
            )
        return run

    # -- worker ------------------------------------------------------------------------

    def _next_run(self) -> str | None:
        with self.state.db.session() as session:
            return session.scalar(
                select(BackgroundRun.id)
                .where(BackgroundRun.status.in_(ACTIVE))
                .order_by(BackgroundRun.created_at)
                .limit(1)
            )

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (run_id := await anyio.to_thread.run_sync(self._next_run)) is not None:
                try:
                    await self._process(run_id)
                except asyncio.CancelledError:
                    raise
                except Exception:  # keep the worker alive; the run is marked failed
                    logger.exception("background run %s failed", run_id)
                    await anyio.to_thread.run_sync(
                        partial(
                            self._finish,
                            run_id,
                            "failed",
                            {"code": "internal_error", "message": "the run failed unexpectedly"},
                        )
                    )

    def _finish(self, run_id: str, status: str, error: dict[str, Any] | None = None) -> None:
        with self.state.db.session() as session:
            run = session.get(BackgroundRun, run_id)
            if run is None:
                return
            run.status = status
            run.error = error
            run.finished_at = datetime.now(UTC)
        (_inputs_dir(self.state) / f"{run_id}.json").unlink(missing_ok=True)

    async def _process(self, run_id: str) -> None:
        state = self.state

        def _begin() -> tuple[BackgroundRun, list[Any]] | None:
            path = _inputs_dir(state) / f"{run_id}.json"
            with state.db.session() as session:
                run = session.get(BackgroundRun, run_id)
                if run is None or run.status not in ACTIVE:
                    return None
                if not path.exists():
                    run.status = "failed"
                    run.error = {"code": "inputs_lost", "message": "the run's items are gone"}
                    run.finished_at = datetime.now(UTC)
                    return None
                run.status = "running"
                run.started_at = run.started_at or datetime.now(UTC)
                session.flush()
                session.expunge(run)
            with open(path, encoding="utf-8") as fh:
                return run, json.load(fh)

        begun = await anyio.to_thread.run_sync(_begin)
        if begun is None:
            return
        run, raw_items = begun
        model = state.registry.get(run.model)
        ns = namespaces.resolve(workspace_id=run.workspace_id, model=model, scope=run.scope)
        # Ids seen before the resume point, so duplicates stay duplicates after a restart.
        seen = {str(it.get("id")) for it in raw_items[: run.next_index] if isinstance(it, dict)}
        chunk = state.settings.background_chunk_size
        start = run.next_index
        while start < run.total:
            if await anyio.to_thread.run_sync(self._cancel_requested, run_id):
                await anyio.to_thread.run_sync(self._finish, run_id, "cancelled")
                return
            end = min(start + chunk, run.total)
            try:
                await self._process_chunk(run, model, ns, raw_items, start, end, seen)
            except InsufficientFunds as exc:
                await anyio.to_thread.run_sync(
                    partial(
                        self._finish, run_id, "failed", {"code": exc.code, "message": exc.message}
                    )
                )
                return
            start = end
        await anyio.to_thread.run_sync(self._finish, run_id, "succeeded")

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
    ) -> None:
        state = self.state
        failures: list[dict[str, Any]] = []
        items: list[IndexItem] = []
        positions: list[int] = []  # index in the run of each valid item
        for pos in range(start, end):
            raw = raw_items[pos]
            raw_id = raw.get("id") if isinstance(raw, dict) else None
            try:
                item = IndexItem.model_validate(raw)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "item"
                failures.append(
                    _failure(
                        pos,
                        raw_id,
                        "invalid_item",
                        f"{where}: {first['msg'].removeprefix('Value error, ')}",
                    )
                )
                continue
            if item.id in seen:
                failures.append(
                    _failure(
                        pos, item.id, "duplicate_id", f"id {item.id!r} appears earlier in this run"
                    )
                )
                continue
            seen.add(item.id)
            items.append(item)
            positions.append(pos)
        contents = item_contents(items, offset=0)
        ok: list[int] = []  # indexes into `items` that passed the content checks

        def _check() -> dict[str, Any]:
            known: dict[str, Any] = {}
            for i, content in enumerate(contents):
                try:
                    check_content(state, model, content)
                    if isinstance(content, ImageContent):
                        resolve_media(
                            state, workspace_id=run.workspace_id, content=content, known=known
                        )
                except ServiceError as exc:
                    failures.append(_failure(positions[i], items[i].id, exc.code, exc.message))
                    continue
                ok.append(i)
            return known

        media = await anyio.to_thread.run_sync(_check)
        good_items = [items[i] for i in ok]
        good_positions = [positions[i] for i in ok]
        prepared = Prepared(contents=[contents[i] for i in ok], media=media)
        plan = await anyio.to_thread.run_sync(
            partial(
                plan_index, state, model, ns, good_items, prepared, run.id, range(len(good_items))
            )
        )
        started = time.perf_counter()
        vectors, embed_failures = await embed_prepared(
            state, model=model, prepared=prepared, indexes=plan.to_embed, purpose="document"
        )
        embed_seconds = time.perf_counter() - started
        written = [i for row, i in enumerate(plan.to_embed) if row not in embed_failures]
        for row, problem in embed_failures.items():
            i = plan.to_embed[row]
            failures.append(
                _failure(good_positions[i], good_items[i].id, problem.code, problem.message)
            )
        rows = [row for row in range(len(plan.to_embed)) if row not in embed_failures]
        points = build_points(ns, good_items, plan, written, vectors[rows], run.id)
        done = len(points) + len(plan.already_written)
        failures.sort(key=lambda f: int(f["index"]))

        await write_and_charge(
            state,
            model=model,
            ns=ns,
            points=points,
            modality=modality_of(good_items) if good_items else "text",
            run_key=f"{run.id}:{start}",
            writer=run.id,
            billable=done,
            written_before=[ns.point_id(good_items[i].id) for i in plan.already_written],
            chunk=ChunkProgress(
                run_id=run.id,
                start=start,
                end=end,
                skipped=len(plan.skipped),
                failures=failures,
                embed_seconds=embed_seconds,
                positions=[good_positions[i] for i in [*written, *plan.already_written]],
                item_ids=[good_items[i].id for i in [*written, *plan.already_written]],
            ),
        )


def _failure(index: int, item_id: object, code: str, message: str) -> dict[str, Any]:
    return {
        "index": index,
        "id": item_id if isinstance(item_id, str) else None,
        "code": code,
        "message": message,
    }
