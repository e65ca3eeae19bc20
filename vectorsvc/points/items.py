"""Reading back the items a namespace stores, as a client indexed them: for re-embedding
them into another release (`runs.migration`). The one place that turns stored points back
into items."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vectorsvc.points import namespaces
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
    """The next `limit` stored points of `ns` in `collection`, in point-id order, as items
    (blocking). A point without a string id, or without a text or media ref, is counted as
    read and left out."""
    page = store.scroll(collection, filter=ns.tenant_filter, limit=limit, offset=offset)
    items: list[SourceItem] = []
    for point in page.points:
        item = source_item(point.payload)
        if item is not None:
            items.append(item)
    return SourcePage(items=items, read=len(page.points), next_offset=page.next_offset)


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


def same_item(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two stored payloads hold the same item: id, content and metadata."""
    return source_item(a) == source_item(b) and source_item(a) is not None
