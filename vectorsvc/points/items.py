"""Reading back the items a namespace stores, as a client indexed them: for re-embedding
them into another release (`runs.migration`). The one place that turns stored points back
into items."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from vectorsvc.points import namespaces
from vectorsvc.points.chunks import assemble_text, heads, read_chunk, read_item_text
from vectorsvc.points.namespaces import Namespace
from vectorsvc.vectorstore.base import VectorStore


@dataclass(frozen=True)
class SourceItem:
    """A stored item: its client id, its text or image `media_ref`, its metadata."""

    item_id: str
    text: str | None
    media_ref: str | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class SourcePage:
    items: list[SourceItem]
    read: int  # points read, the unreadable ones (no id, no content) included
    next_offset: str | None


def stored_items(
    store: VectorStore, collection: str, ns: Namespace, *, limit: int, offset: str | None
) -> SourcePage:
    """The next `limit` stored items of `ns` in `collection`, in the id order of their first
    chunk's point, a chunked item's text rebuilt from all its chunks (blocking). A point
    without a string id, or without a text or media ref (or a chunked text missing a chunk),
    is counted as read and left out."""
    page = store.scroll(collection, filter=heads(ns.tenant_filter), limit=limit, offset=offset)
    source = replace(ns, collection=collection)
    items: list[SourceItem] = []
    for point in page.points:
        item = _whole(store, source, point.payload)
        if item is not None:
            items.append(item)
    return SourcePage(items=items, read=len(page.points), next_offset=page.next_offset)


def stored_item(store: VectorStore, ns: Namespace, item_id: str) -> SourceItem | None:
    """The item `item_id` as `ns` (its collection) stores it now, or None (blocking)."""
    head = store.retrieve(ns.collection, [ns.point_id(item_id)])
    return _whole(store, ns, head[0].payload) if head else None


def _whole(store: VectorStore, ns: Namespace, head: dict[str, Any]) -> SourceItem | None:
    item = source_item(head)
    if item is None or read_chunk(head).count == 1:
        return item
    text = read_item_text(store, ns, item.item_id)
    return None if text is None else replace(item, text=text)


def source_item(payload: dict[str, Any]) -> SourceItem | None:
    item_id = payload.get(namespaces.ID_FIELD)
    text = payload.get(namespaces.TEXT_FIELD)
    media_ref = payload.get(namespaces.MEDIA_REF_FIELD)
    metadata = payload.get(namespaces.METADATA_FIELD)
    if not isinstance(item_id, str):
        return None
    text = text if isinstance(text, str) else None
    media_ref = media_ref if isinstance(media_ref, str) and text is None else None
    if text is None and media_ref is None:
        return None
    return SourceItem(item_id, text, media_ref, metadata if isinstance(metadata, dict) else {})


def same_item(stored: SourceItem | None, written: list[dict[str, Any]]) -> bool:
    """Whether the payloads `written` (every chunk of one item) hold the item `stored`:
    same id, whole text or media, and metadata."""
    if stored is None or not written:
        return False
    head = next((p for p in written if read_chunk(p).number == 0), None)
    item = source_item(head) if head is not None else None
    if item is None:
        return False
    if read_chunk(head or {}).count > 1:
        item = replace(item, text=assemble_text(written))
    return item == stored
