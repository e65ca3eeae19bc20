"""Release migrations: re-embedding a model's stored items into its new release.

Started at start-up when the registry names another release than the live one and the
live one holds points (`points.releases.reconcile_at_start`). For each namespace of the
model, in turn, chunk by chunk: read back the stored items (`points.items.stored_items`),
feed them through the index pipeline (`pipeline.index_items`) into the new release, as a
client's index run would be, but

- free: the workspace is charged nothing (usage records of run ids `reembed_...` at cost 0);
- at background priority: the model's workers take every foreground chunk first
  (`embedding.runtime.BACKGROUND`);
- guarded: a re-embedded item lands only while the live release still holds it unchanged
  (`points.store`), so a concurrent delete or rewrite is never undone;
- resumable: each namespace's scroll position commits after each chunk.

When every namespace is done and holds as many points as in the live release, the alias
moves (`points.releases.finish_migration`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

import anyio
from sqlalchemy import select, update

from vectorsvc.db.tables import ModelRelease, ReleaseMigrationScope
from vectorsvc.embedding.runtime import BACKGROUND
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.points import namespaces, releases
from vectorsvc.points.items import SourcePage, stored_items
from vectorsvc.points.namespaces import Namespace
from vectorsvc.runs.inputs import IndexItem, MediaRef
from vectorsvc.runs.intents import FREE_RUN_PREFIX
from vectorsvc.runs.pipeline import ItemBatch, index_items
from vectorsvc.state import AppState
from vectorsvc.vectorstore.base import Filter

logger = logging.getLogger(__name__)

# Checks of a finished migration's counts before it gives up moving the alias.
MAX_VERIFY_ROUNDS = 5


@dataclass(frozen=True)
class _Scope:
    tenant_key: str
    workspace_id: str
    scope: str
    cursor: str | None


class ReleaseMigrations:
    """Runs the migrations start-up found, one task per model; stopped with the app."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        state = self.state
        slugs = await anyio.to_thread.run_sync(
            releases.reconcile_at_start,
            state.db,
            state.store,
            state.registry,
            state.collections.releases,
        )
        loop = asyncio.get_running_loop()
        for slug in slugs:
            self._tasks.append(loop.create_task(self._guarded(slug)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def wait(self) -> None:
        """Until every migration started here has ended (tests, the bench)."""
        for task in self._tasks:
            await task

    async def _guarded(self, slug: str) -> None:
        try:
            await migrate(self.state, slug)
        except asyncio.CancelledError:
            raise
        except Exception:  # resumed at the next start; the live release keeps serving
            logger.exception("the migration of model %s failed; it resumes at the next start", slug)


async def migrate(state: AppState, slug: str) -> None:
    """Fill `slug`'s target release, then move its alias."""
    BACKGROUND.set(True)  # this task's model calls wait for every foreground one
    model = state.registry.get(slug)
    for _ in range(MAX_VERIFY_ROUNDS):
        while (scope := await anyio.to_thread.run_sync(_next_scope, state, slug)) is not None:
            await _migrate_scope(state, model, scope)
        if await anyio.to_thread.run_sync(_verify, state, model):
            await anyio.to_thread.run_sync(
                releases.finish_migration,
                state.db,
                state.store,
                state.collections.releases,
                slug,
            )
            logger.info("model %s: release %s is live", slug, model.release)
            return
    logger.error(
        "model %s: the new release's counts still differ from the live release's after %d "
        "rounds; the alias stays on the live release",
        slug,
        MAX_VERIFY_ROUNDS,
    )


def _next_scope(state: AppState, slug: str) -> _Scope | None:
    with state.db.session() as session:
        row = session.scalar(
            select(ReleaseMigrationScope)
            .where(ReleaseMigrationScope.model == slug, ReleaseMigrationScope.finished.is_(False))
            .order_by(ReleaseMigrationScope.tenant_key)
            .limit(1)
        )
        if row is None:
            return None
        return _Scope(row.tenant_key, row.workspace_id, row.scope, row.cursor)


def _namespaces(state: AppState, model: ModelSpec, scope: _Scope) -> tuple[Namespace, Namespace]:
    """The live namespace (what to read) and the target's (where to write)."""
    route = state.collections.releases.route(model.slug)
    assert route is not None and route.target is not None
    stored_scope = namespaces.Scope(scope.scope)  # checked when its points were written
    live = state.collections.resolve(
        workspace_id=scope.workspace_id, model=model, scope=stored_scope
    )
    target = namespaces.resolve(
        workspace_id=scope.workspace_id,
        model=model,
        scope=stored_scope,
        release=route.target,
        reembed_from=route.live,
    )
    return live, target


async def _migrate_scope(state: AppState, model: ModelSpec, scope: _Scope) -> None:
    live, target = _namespaces(state, model, scope)
    chunk = state.settings.background_chunk_size
    cursor = scope.cursor
    while True:
        page: SourcePage = await anyio.to_thread.run_sync(
            partial(stored_items, state.store, live.collection, live, limit=chunk, offset=cursor)
        )
        batch = ItemBatch(
            items=[
                IndexItem.model_construct(
                    id=item.item_id,
                    text=item.text,
                    image=None
                    if item.media_ref is None
                    else MediaRef.model_construct(media_ref=item.media_ref),
                    metadata=item.metadata,
                )
                for item in page.items
            ],
            positions=list(range(len(page.items))),
        )
        if batch.items:
            await index_items(
                state,
                model=model,
                ns=target,
                batch=batch,
                run_id=f"{FREE_RUN_PREFIX}{secrets.token_hex(8)}",
                strict=False,
                free=True,
            )
        for problem in batch.failures:
            logger.warning(
                "model %s: item %r of %s could not be re-embedded: %s",
                model.slug,
                problem["id"],
                scope.tenant_key,
                problem["message"],
            )
        await anyio.to_thread.run_sync(
            _record_progress,
            state,
            model.slug,
            scope.tenant_key,
            page.next_offset,
            page.read,
            len(batch.failures),
        )
        if page.next_offset is None:
            return
        cursor = page.next_offset


def _record_progress(
    state: AppState, slug: str, tenant_key: str, cursor: str | None, read: int, failed: int
) -> None:
    with state.db.session() as session:
        session.execute(
            update(ReleaseMigrationScope)
            .where(
                ReleaseMigrationScope.model == slug, ReleaseMigrationScope.tenant_key == tenant_key
            )
            .values(
                cursor=cursor,
                done=ReleaseMigrationScope.done + read,
                finished=cursor is None,
            )
        )
        session.execute(
            update(ModelRelease)
            .where(ModelRelease.model == slug)
            .values(
                done=ModelRelease.done + read,
                failed=ModelRelease.failed + failed,
                updated_at=datetime.now(UTC),
            )
        )


def _verify(state: AppState, model: ModelSpec) -> bool:
    """Whether every namespace holds as many points in the target as in the live release,
    each counted under its write guard (so no write or delete falls between the two counts);
    a namespace that does not is read again from its start (unchanged items are skipped)."""
    route = state.collections.releases.route(model.slug)
    assert route is not None and route.target is not None
    live = namespaces.release_collection(model.slug, route.live)
    target = namespaces.release_collection(model.slug, route.target)
    tenants = state.store.facet(
        live, namespaces.TENANT_FIELD, filter=Filter(), limit=releases.MAX_TENANTS
    )
    short: list[str] = []
    for tenant in sorted(tenants):
        workspace_id, _, scope = tenant.partition("/")
        ns = state.collections.resolve(
            workspace_id=workspace_id, model=model, scope=namespaces.Scope(scope)
        )
        with state.collections.releases.guard(ns):
            in_live = state.store.count(live, filter=ns.tenant_filter)
            in_target = (
                state.store.count(target, filter=ns.tenant_filter)
                if state.store.collection_exists(target)
                else 0
            )
        if in_live != in_target:
            short.append(tenant)
    if not short:
        return True
    logger.warning("model %s: %d namespaces differ; reading them again", model.slug, len(short))
    with state.db.session() as session:
        for tenant in short:
            row = session.get(ReleaseMigrationScope, (model.slug, tenant))
            workspace_id, _, scope = tenant.partition("/")
            if row is None:
                row = ReleaseMigrationScope(
                    model=model.slug,
                    tenant_key=tenant,
                    workspace_id=workspace_id,
                    scope=scope,
                    total=tenants[tenant],
                    done=0,
                )
                session.add(row)
            row.cursor = None
            row.finished = False
    return False
