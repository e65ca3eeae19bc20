"""What a namespace holds, and the writes and deletes that keep its catalog count exact.

Every write and delete of points goes through here: after it, the namespace's points are
counted exactly (through the tenant keyword index) and the count recorded in the catalog,
so a crash between a store write and the catalog update is healed by the next one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

from vectorsvc.db.database import Database
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.points import catalog, namespaces
from vectorsvc.points.chunks import heads, item_filter, read_chunk
from vectorsvc.points.collections import CollectionManager
from vectorsvc.points.items import same_item, stored_item
from vectorsvc.points.namespaces import Namespace
from vectorsvc.vectorstore.base import Filter, HasIds, PointRecord, Range, VectorStore


@dataclass(frozen=True)
class Stored:
    """What the namespace holds for a point id: its content hash and the run that wrote it."""

    content_hash: str | None
    run_id: str | None
    chunks: int = 1  # how many chunks the item has (on chunk 0; `points.chunks`)


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
            chunks=read_chunk(record.payload).count,
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
    chunk_counts: dict[str, int] | None = None,
) -> int:
    """Upsert `points` into `ns` and record its new count of items; how many items are new
    (blocking). `chunk_counts` (client id -> its new chunk count): each item's chunks past
    that count, left by a longer text before, are deleted after the upsert."""
    if not points:
        return 0
    collections.ensure(model, ns)
    with collections.releases.guard(ns):
        if ns.reembed_from is not None:
            _upsert_reembedded(store, ns, ns.reembed_from, points)
            return 0
        written_heads = heads(ns.tenant_filter.and_(HasIds(tuple(p.id for p in points))))
        existing = store.count(ns.collection, filter=written_heads)
        store.upsert(ns.collection, points)
        for mirror in ns.mirrors:
            store.upsert(mirror, points)
        for count, item_ids in _by_count(chunk_counts or {}).items():
            stale = item_filter(ns, item_ids).and_(Range(key=namespaces.CHUNK_FIELD, gte=count))
            for collection in (ns.collection, *ns.mirrors):
                if collection == ns.collection or store.collection_exists(collection):
                    store.delete(collection, filter=stale)
        total = store.count(ns.collection, filter=heads(ns.tenant_filter))
        created = store.count(ns.collection, filter=written_heads) - existing
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
    """A migration's re-embedded points, each item's chunks written only while the live
    release (`source`) still holds the same item (id, whole text or media, metadata): one
    deleted or rewritten since it was read was written to this release too, by the write
    that changed it (the caller holds the namespace's guard)."""
    by_item: dict[str, list[PointRecord]] = {}
    for point in points:
        item_id = point.payload.get(namespaces.ID_FIELD)
        if isinstance(item_id, str):
            by_item.setdefault(item_id, []).append(point)
    live = replace(ns, collection=source)
    keep = [
        point
        for item_id, item_points in by_item.items()
        if same_item(stored_item(store, live, item_id), [p.payload for p in item_points])
        for point in item_points
    ]
    if keep:
        store.upsert(ns.collection, keep)


def _by_count(chunk_counts: dict[str, int]) -> dict[int, list[str]]:
    grouped: dict[int, list[str]] = {}
    for item_id, count in chunk_counts.items():
        grouped.setdefault(count, []).append(item_id)
    return grouped


def delete_and_recount(
    store: VectorStore,
    db: Database,
    *,
    ns: Namespace,
    flt: Filter,
    heal: bool = False,
    collections: CollectionManager,
) -> int:
    """Delete `ns`'s items matching `flt` (already restricted to the tenant; conditions on
    the item's id or metadata, which every chunk carries), every chunk of each, in every
    release that takes the namespace's writes, and record the count of items left; how many
    items were deleted (blocking). The count is recorded only when something was deleted,
    unless `heal` (the Knowledge Bases API: a delete there also corrects a count left
    stale)."""
    with collections.releases.guard(ns):
        items = store.count(ns.collection, filter=heads(flt))
        deleted = store.delete(ns.collection, filter=flt)
        for mirror in ns.mirrors:
            if store.collection_exists(mirror):
                store.delete(mirror, filter=flt)
    if deleted or heal:
        remaining = store.count(ns.collection, filter=heads(ns.tenant_filter))
        catalog.record_count(db, ns=ns, point_count=remaining)
    return items if deleted else 0


def recount(store: VectorStore, db: Database, *, ns: Namespace, modality: str) -> None:
    """Record `ns`'s exact count after a write or delete made elsewhere (blocking)."""
    if not store.collection_exists(ns.collection):
        return
    total = store.count(ns.collection, filter=heads(ns.tenant_filter))
    if total:
        catalog.record_write(
            db, ns=ns, modality=modality, point_count=total, written=0, written_payload_bytes=0
        )
    else:
        catalog.record_count(db, ns=ns, point_count=0)
