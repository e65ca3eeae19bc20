"""What a namespace holds, and the writes and deletes that keep its catalog count exact.

Every write and delete of points goes through here: after it, the namespace's points are
counted exactly (through the tenant keyword index) and the count recorded in the catalog,
so a crash between a store write and the catalog update is healed by the next one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from vectorsvc.db.database import Database
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.points import catalog, namespaces
from vectorsvc.points.collections import CollectionManager
from vectorsvc.points.items import same_item
from vectorsvc.points.namespaces import Namespace
from vectorsvc.vectorstore.base import Filter, HasIds, PointRecord, VectorStore


@dataclass(frozen=True)
class Stored:
    """What the namespace holds for a point id: its content hash and the run that wrote it."""

    content_hash: str | None
    run_id: str | None


def stored_points(store: VectorStore, ns: Namespace, point_ids: Sequence[str]) -> dict[str, Stored]:
    """The stored hash and writer of each existing point (blocking)."""
    if not point_ids or not store.collection_exists(ns.collection):
        return {}
    found: dict[str, Stored] = {}
    for record in store.retrieve(ns.collection, point_ids):
        if record.payload.get(namespaces.TENANT_FIELD) != ns.tenant_key:
            continue  # ids are derived from the tenant key, so this never happens; be sure
        found[record.id] = Stored(
            content_hash=record.payload.get(namespaces.CONTENT_HASH_FIELD),
            run_id=record.payload.get(namespaces.RUN_FIELD),
        )
    return found


def upsert_and_recount(
    store: VectorStore,
    db: Database,
    collections: CollectionManager,
    *,
    model: ModelSpec,
    ns: Namespace,
    modality: str,
    points: list[PointRecord],
) -> int:
    """Upsert `points` into `ns` and record its new count; how many points are new
    (blocking)."""
    if not points:
        return 0
    collections.ensure(model, ns)
    with collections.releases.guard(ns):
        if ns.reembed_from is not None:
            _upsert_reembedded(store, ns, ns.reembed_from, points)
            return 0
        existing = store.count(
            ns.collection, filter=ns.tenant_filter.and_(HasIds(tuple(p.id for p in points)))
        )
        store.upsert(ns.collection, points)
        for mirror in ns.mirrors:
            store.upsert(mirror, points)
        total = store.count(ns.collection, filter=ns.tenant_filter)
    created = len(points) - existing
    catalog.record_write(
        db,
        ns=ns,
        modality=modality,
        point_count=total,
        written=created,
        written_payload_bytes=sum(len(json.dumps(p.payload)) for p in points[:created]),
    )
    return created


def _upsert_reembedded(
    store: VectorStore, ns: Namespace, source: str, points: list[PointRecord]
) -> None:
    """A migration's re-embedded points, each written only while the live release (`source`)
    still holds the same item: one deleted or rewritten since it was read was written to
    this release too, by the write that changed it (the caller holds the namespace's guard)."""
    live = {p.id: p.payload for p in store.retrieve(source, [p.id for p in points])}
    keep = [p for p in points if p.id in live and same_item(live[p.id], p.payload)]
    if keep:
        store.upsert(ns.collection, keep)


def delete_and_recount(
    store: VectorStore,
    db: Database,
    *,
    ns: Namespace,
    flt: Filter,
    heal: bool = False,
    collections: CollectionManager,
) -> int:
    """Delete `ns`'s points matching `flt` (already restricted to the tenant) and record
    the count left; how many were deleted (blocking). The count is recorded only when
    something was deleted, unless `heal` (the Knowledge Bases API: a delete there also
    corrects a count left stale)."""
    with collections.releases.guard(ns):
        deleted = store.delete(ns.collection, filter=flt)
        for mirror in ns.mirrors:
            if store.collection_exists(mirror):
                store.delete(mirror, filter=flt)
    if deleted or heal:
        remaining = store.count(ns.collection, filter=ns.tenant_filter)
        catalog.record_count(db, ns=ns, point_count=remaining)
    return deleted


def recount(store: VectorStore, db: Database, *, ns: Namespace, modality: str) -> None:
    """Record `ns`'s exact count after a write or delete made elsewhere (blocking)."""
    if not store.collection_exists(ns.collection):
        return
    total = store.count(ns.collection, filter=ns.tenant_filter)
    if total:
        catalog.record_write(
            db, ns=ns, modality=modality, point_count=total, written=0, written_payload_bytes=0
        )
    else:
        catalog.record_count(db, ns=ns, point_count=0)
