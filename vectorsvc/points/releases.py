"""Model releases: which collection of a model is live, and the routing while a new release fills.

A model's alias points at its live release. When the registry names another release than
the live one and the live one holds points, a migration (`runs.migration`) fills the new
release in the background; meanwhile:

- reads (searches, Knowledge Bases) stay on the live release: a search never sees a
  half-filled release and never mixes the vectors of two;
- writes and deletes go to the live release and to the one being filled (`Namespace.mirrors`),
  under a per-namespace guard, so nothing written meanwhile is lost or resurrected;
- a re-embedded point lands in the new release only while the live release still holds the
  same item (same id, content and metadata), checked under the same guard
  (`points.store.upsert_and_recount`): an item deleted or rewritten since it was read is left
  to the write that changed it, which went to both releases.

Then the alias moves (one call, atomic in both backends) and the old release stays as the
rollback target, still mirrored, until `vectorsvc models prune`. The state lives in the
database (`model_releases`, `release_migration_scopes`), so a restart resumes a migration
and a finished one starts nothing. Names are built in `namespaces` only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from vectorsvc.db.database import Database
from vectorsvc.db.tables import CatalogEntry, ModelRelease, ReleaseMigrationScope
from vectorsvc.errors import NotFound, ServiceError
from vectorsvc.model_registry.registry import ModelRegistry, ModelSpec
from vectorsvc.points import namespaces
from vectorsvc.points.namespaces import Namespace, Scope
from vectorsvc.vectorstore.base import Filter, VectorStore

logger = logging.getLogger(__name__)

# Distinct tenants a migration reads from one collection's tenant index at most.
MAX_TENANTS = 1_000_000


@dataclass(frozen=True)
class Route:
    """Where a model's points are read and written now."""

    live: str
    mirrors: tuple[str, ...] = ()  # releases that take the same writes and deletes
    target: str | None = None  # the release a migration is filling


@dataclass(frozen=True)
class MigrationView:
    to_release: str
    done: int
    total: int
    failed: int
    started_at: datetime | None


@dataclass(frozen=True)
class ReleaseView:
    """A model's releases as `models status`, the Knowledge Bases API and /metrics show them."""

    model: str
    registry_release: str | None  # None: the model left the registry
    live: str
    previous: str | None
    blocked: str | None
    migration: MigrationView | None


class ReleaseRouter:
    """The routes of every model with a release row, and the per-namespace write guards."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._guards: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def route(self, slug: str) -> Route | None:
        return self._routes.get(slug)

    def set_route(self, slug: str, route: Route) -> None:
        self._routes[slug] = route

    def resolve(self, *, workspace_id: str, model: ModelSpec, scope: Scope) -> Namespace:
        """The namespace a request reads and writes: the live release, and the releases
        that mirror its writes."""
        route = self._routes.get(model.slug)
        if route is None:
            return namespaces.resolve(workspace_id=workspace_id, model=model, scope=scope)
        return namespaces.resolve(
            workspace_id=workspace_id,
            model=model,
            scope=scope,
            release=route.live,
            mirror_releases=route.mirrors,
        )

    @contextmanager
    def guard(self, ns: Namespace) -> Iterator[None]:
        """Held around a write or delete of a namespace with mirrors, and around a re-embedded
        write's check: the two never interleave. A namespace without mirrors takes no lock."""
        if not ns.mirrors and ns.reembed_from is None:
            yield
            return
        key = (ns.model_slug, ns.tenant_key)
        with self._lock:
            lock = self._guards.setdefault(key, threading.Lock())
        with lock:
            yield


# -- the database state ----------------------------------------------------------------------


def route_of(row: ModelRelease) -> Route:
    mirrors = tuple(r for r in (row.target_release, row.previous_release) if r is not None)
    return Route(live=row.live_release, mirrors=mirrors, target=row.target_release)


def load_routes(db: Database, router: ReleaseRouter) -> None:
    with db.session() as session:
        for row in session.scalars(select(ModelRelease)):
            router.set_route(row.model, route_of(row))


def reconcile_at_start(
    db: Database, store: VectorStore, registry: ModelRegistry, router: ReleaseRouter
) -> list[str]:
    """Compare each model's live release with the registry's (blocking): start, resume or
    cancel migrations, adopt what the store's aliases say, warn about models that left the
    registry while holding data. Returns the slugs with a migration to run."""
    migrating: list[str] = []
    for model in registry.models:
        if _reconcile_model(db, store, model):
            migrating.append(model.slug)
    _warn_removed(db, registry)
    load_routes(db, router)
    return migrating


def _reconcile_model(db: Database, store: VectorStore, model: ModelSpec) -> bool:
    slug, wanted = model.slug, model.release
    alias_target = store.resolve_alias(namespaces.model_alias(slug))
    alias_release = namespaces.release_of(slug, alias_target) if alias_target else None
    now = datetime.now(UTC)
    with db.session() as session:
        row = session.get(ModelRelease, slug)
        if row is None:
            row = ModelRelease(
                model=slug,
                live_release=alias_release or wanted,
                total=0,
                done=0,
                failed=0,
                updated_at=now,
            )
            session.add(row)
        elif alias_release is not None and alias_release != row.live_release:
            # The alias moved but the row did not (a crash between the two at a switch, or an
            # operator's hand): the alias is what searches read, so it wins.
            if row.target_release == alias_release:
                _finish(session, row, now)
            else:
                row.live_release = alias_release
        if wanted == row.live_release:
            if row.target_release is not None:
                logger.warning(
                    "model %s: the registry names the live release %s again; the migration to "
                    "release %s is abandoned",
                    slug,
                    wanted,
                    row.target_release,
                )
                _stop_migration(session, row)
            return False
        if wanted == row.blocked_release:
            logger.warning(
                "model %s: release %s was rolled back; the live release stays %s until the "
                "registry names another release",
                slug,
                wanted,
                row.live_release,
            )
            return False
        if row.target_release == wanted:
            logger.info("model %s: resuming the migration to release %s", slug, wanted)
            return True
        live = namespaces.release_collection(slug, row.live_release)
        holds = store.collection_exists(live) and store.count(live, filter=Filter()) > 0
        if not holds:
            # Nothing to carry over: the new release is live at once (created on first write).
            logger.info(
                "model %s: release %s is live (release %s held no points)",
                slug,
                wanted,
                row.live_release,
            )
            if row.target_release is not None:
                _stop_migration(session, row)
            row.live_release = wanted
            row.blocked_release = None
            row.updated_at = now
            store.ensure_collection(namespaces.collection_spec(model))
            store.set_alias(namespaces.model_alias(slug), namespaces.collection_name(model))
            return False
        _start_migration(session, store, row, wanted, live, now)
        logger.info(
            "model %s: re-embedding %d points from release %s into release %s in the background",
            slug,
            row.total,
            row.live_release,
            wanted,
        )
        return True


def _start_migration(
    session: Session, store: VectorStore, row: ModelRelease, wanted: str, live: str, now: datetime
) -> None:
    if row.target_release is not None:
        _stop_migration(session, row)
    target = namespaces.release_collection(row.model, wanted)
    if wanted != row.previous_release and store.collection_exists(target):
        # Left by an abandoned migration: it missed the writes and deletes made since.
        # (The rollback target is kept in step by the writes, so it is filled on.)
        store.delete_collection(target)
    tenants = store.facet(live, namespaces.TENANT_FIELD, filter=Filter(), limit=MAX_TENANTS)
    total = 0
    for tenant, count in sorted(tenants.items()):
        workspace_id, _, scope = tenant.partition("/")
        session.add(
            ReleaseMigrationScope(
                model=row.model,
                tenant_key=tenant,
                workspace_id=workspace_id,
                scope=scope,
                cursor=None,
                total=count,
                done=0,
                finished=False,
            )
        )
        total += count
    row.target_release = wanted
    row.blocked_release = None
    row.started_at = now
    row.total = total
    row.done = 0
    row.failed = 0
    row.updated_at = now


def _stop_migration(session: Session, row: ModelRelease) -> None:
    session.execute(delete(ReleaseMigrationScope).where(ReleaseMigrationScope.model == row.model))
    row.target_release = None
    row.started_at = None
    row.total = row.done = row.failed = 0


def _finish(session: Session, row: ModelRelease, now: datetime) -> None:
    """The target release became live; the old live one is the rollback target."""
    assert row.target_release is not None
    old = row.live_release
    target = row.target_release
    _stop_migration(session, row)
    row.previous_release = old
    row.live_release = target
    row.updated_at = now


def finish_migration(db: Database, store: VectorStore, router: ReleaseRouter, slug: str) -> None:
    """Move the alias to the filled release, then record it (blocking). A crash between the
    two is finished at the next start (`_reconcile_model`: the alias wins)."""
    with db.session() as session:
        row = session.get_one(ModelRelease, slug)
        assert row.target_release is not None
        store.set_alias(
            namespaces.model_alias(slug), namespaces.release_collection(slug, row.target_release)
        )
        _finish(session, row, datetime.now(UTC))
        router.set_route(slug, route_of(row))


def _warn_removed(db: Database, registry: ModelRegistry) -> None:
    known = {m.slug for m in registry.models}
    with db.session() as session:
        held = set(session.scalars(select(CatalogEntry.model).distinct()))
    for slug in sorted(held - known):
        logger.warning(
            "model %s is not in the registry but knowledge bases still hold its points: they "
            "stay listable and deletable (GET/DELETE /api/knowledge-bases), not searchable; "
            "publish the model again or delete them",
            slug,
        )


# -- the operator's commands -------------------------------------------------------------------


def views(db: Database, registry: ModelRegistry) -> list[ReleaseView]:
    known = {m.slug: m.release for m in registry.models}
    with db.session() as session:
        rows = list(session.scalars(select(ModelRelease).order_by(ModelRelease.model)))
    return [_view(row, known.get(row.model)) for row in rows]


def live_release(db: Database, slug: str) -> str | None:
    """The release `slug`'s reads go to, from its row (or, for a model that left the registry
    before releases were recorded, from its knowledge bases' collection)."""
    with db.session() as session:
        row = session.get(ModelRelease, slug)
        if row is not None:
            return row.live_release
        collection = session.scalar(
            select(CatalogEntry.collection).where(CatalogEntry.model == slug).limit(1)
        )
    return namespaces.release_of(slug, collection) if collection else None


def _view(row: ModelRelease, registry_release: str | None) -> ReleaseView:
    migration = None
    if row.target_release is not None:
        migration = MigrationView(
            to_release=row.target_release,
            done=int(row.done),
            total=int(row.total),
            failed=int(row.failed or 0),
            started_at=row.started_at,
        )
    return ReleaseView(
        model=row.model,
        registry_release=registry_release,
        live=row.live_release,
        previous=row.previous_release,
        blocked=row.blocked_release,
        migration=migration,
    )


def _row(session: Session, slug: str) -> ModelRelease:
    row = session.get(ModelRelease, slug)
    if row is None:
        raise NotFound(
            f"no releases recorded for model {slug!r}", field="model", code="model_not_found"
        )
    return row


def rollback(db: Database, store: VectorStore, slug: str) -> tuple[str, str]:
    """Point the alias back at the previous release (blocking); (from, to). The release
    rolled back from is not migrated to again until the registry names another one."""
    with db.session() as session:
        row = _row(session, slug)
        previous = row.previous_release
        if previous is None or not store.collection_exists(
            namespaces.release_collection(slug, previous)
        ):
            raise ServiceError(
                f"model {slug!r} has no previous release to roll back to",
                code="no_previous_release",
                status=409,
                field="model",
            )
        if row.target_release is not None:
            _stop_migration(session, row)
        current = row.live_release
        store.set_alias(namespaces.model_alias(slug), namespaces.release_collection(slug, previous))
        row.live_release, row.previous_release = previous, current
        row.blocked_release = current
        row.updated_at = datetime.now(UTC)
        return current, previous


def prune(db: Database, store: VectorStore, slug: str, *, all_old: bool) -> list[str]:
    """Delete the collections of `slug`'s releases that are neither live, nor being filled,
    nor (unless `all_old`) the rollback target (blocking); the releases deleted."""
    with db.session() as session:
        row = _row(session, slug)
        keep = {row.live_release, row.target_release}
        if not all_old:
            keep.add(row.previous_release)
        dropped: list[str] = []
        for name in store.list_collections():
            release = namespaces.release_of(slug, name)
            if release is None or release in keep:
                continue
            store.delete_collection(name)
            dropped.append(release)
        if row.previous_release is not None and row.previous_release not in keep:
            row.previous_release = None  # the block on a rolled-back release stays
        row.updated_at = datetime.now(UTC)
        return sorted(dropped)


def status_lines(db: Database, registry: ModelRegistry, store: VectorStore | None) -> list[str]:
    """`vectorsvc models status`: each model's releases, their point counts (when the store
    could be opened) and its migration."""
    lines: list[str] = []
    rows = {view.model: view for view in views(db, registry)}
    slugs = sorted({m.slug for m in registry.models} | set(rows))
    collections = store.list_collections() if store is not None else []
    for slug in slugs:
        view = rows.get(slug)
        wanted = view.registry_release if view is not None else registry.get(slug).release
        head = (
            f"{slug}: not in the registry"
            if wanted is None
            else f"{slug}: registry release {wanted}"
        )
        if view is None:
            lines.append(f"{head}, no release recorded yet (the service has not started)")
            continue
        head += f", live release {view.live}"
        if view.migration is not None:
            m = view.migration
            share = 100 * m.done // m.total if m.total else 100
            since = m.started_at.strftime("%Y-%m-%d %H:%M:%S UTC") if m.started_at else "-"
            head += (
                f", migrating to release {m.to_release}: {m.done}/{m.total} points ({share}%)"
                f", {m.failed} failed, since {since}"
            )
        elif view.blocked is not None:
            head += f", release {view.blocked} rolled back"
        lines.append(head)
        releases_here = {namespaces.release_of(slug, c) for c in collections} - {None}
        if store is not None and not releases_here and view.migration is None:
            lines[-1] += ", no points yet"
            continue
        named = {view.live, view.previous, view.migration.to_release if view.migration else None}
        for release in sorted((releases_here | named) - {None}, key=_release_key):
            assert release is not None
            role = (
                "live"
                if release == view.live
                else "filling"
                if view.migration is not None and release == view.migration.to_release
                else "rollback target"
                if release == view.previous
                else "old"
            )
            name = namespaces.release_collection(slug, release)
            if store is None:
                count = "points: ? (the running service holds the store)"
            elif name in collections:
                count = f"{store.count(name, filter=Filter()):,} points"
            else:
                count = "no collection (created on first write)"
            lines.append(f"  r{release:<6} {role:<16} {count}")
    return lines


def _release_key(release: str | None) -> tuple[int, str]:
    text = release or ""
    return (int(text), text) if text.isdigit() else (1 << 62, text)
