"""The knowledge-base catalog: one row per (workspace, model, scope), kept exact on writes.

Listing knowledge bases reads this table only; it never scans points. Counts come from an
exact `count` through the tenant keyword index after each write or delete, so a crash
between the store write and this update is healed by the next write to the namespace.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, func, select, tuple_

from vectorsvc.db.database import Database
from vectorsvc.db.tables import CatalogEntry
from vectorsvc.points.namespaces import Namespace


def record_write(
    db: Database,
    *,
    ns: Namespace,
    modality: str,
    point_count: int,
    written: int,
    written_payload_bytes: int,
) -> None:
    """After a write: the namespace now holds `point_count` points."""
    with db.session() as session:
        entry = session.scalar(
            select(CatalogEntry).where(
                CatalogEntry.workspace_id == ns.workspace_id,
                CatalogEntry.model == ns.model_slug,
                CatalogEntry.scope == ns.scope,
            )
        )
        if entry is None:
            entry = CatalogEntry(
                workspace_id=ns.workspace_id,
                model=ns.model_slug,
                collection=ns.collection,
                scope=ns.scope,
                modality=modality,
                point_count=0,
                avg_payload_bytes=0.0,
            )
            session.add(entry)
        elif entry.modality != modality:
            entry.modality = "mixed"
        previous = max(entry.point_count - written, 0)
        total = previous + written
        if total:
            entry.avg_payload_bytes = (
                entry.avg_payload_bytes * previous + written_payload_bytes
            ) / total
        entry.point_count = point_count
        entry.collection = ns.collection
        entry.last_write_at = datetime.now(UTC)


def record_count(db: Database, *, ns: Namespace, point_count: int) -> None:
    """After a delete: drop the entry when the namespace is empty, else update its count."""
    with db.session() as session:
        where = (
            CatalogEntry.workspace_id == ns.workspace_id,
            CatalogEntry.model == ns.model_slug,
            CatalogEntry.scope == ns.scope,
        )
        if point_count == 0:
            session.execute(delete(CatalogEntry).where(*where))
            return
        entry = session.scalar(select(CatalogEntry).where(*where))
        if entry is not None:
            entry.point_count = point_count
            entry.last_write_at = datetime.now(UTC)


def find_entry(db: Database, *, workspace_id: str, model: str, scope: str) -> CatalogEntry | None:
    with db.session() as session:
        return session.scalar(
            select(CatalogEntry).where(
                CatalogEntry.workspace_id == workspace_id,
                CatalogEntry.model == model,
                CatalogEntry.scope == scope,
            )
        )


def list_entries(
    db: Database,
    *,
    workspace_id: str,
    model: str | None,
    scope_prefix: str | None,
    after: tuple[str, str] | None,
    limit: int,
) -> tuple[list[CatalogEntry], int]:
    """A page of entries ordered by (model, scope), and the total matching count."""
    with db.session() as session:
        conditions = [CatalogEntry.workspace_id == workspace_id]
        if model:
            conditions.append(CatalogEntry.model == model)
        if scope_prefix:
            escaped = scope_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append(CatalogEntry.scope.like(f"{escaped}%", escape="\\"))
        total = session.scalar(select(func.count()).select_from(CatalogEntry).where(*conditions))
        query = select(CatalogEntry).where(*conditions)
        if after is not None:
            query = query.where(tuple_(CatalogEntry.model, CatalogEntry.scope) > after)
        query = query.order_by(CatalogEntry.model, CatalogEntry.scope).limit(limit)
        return list(session.scalars(query)), int(total or 0)
