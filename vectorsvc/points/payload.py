"""A point's payload: built for a write, read back into search hits and item listings.

The platform's fields (`namespaces.*_FIELD`) sit beside the client's `metadata`. A read
never fails on what is stored: a field of an unexpected type (a stand-in for an unreadable
payload lacks most) reads as empty.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.points import namespaces
from vectorsvc.points.namespaces import Namespace
from vectorsvc.vectorstore.base import ScoredPoint


def content_hash(model: ModelSpec, fingerprint: str, metadata: dict[str, Any]) -> str:
    """Unchanged hash = unchanged point: same model release, content and metadata."""
    canonical = json.dumps(
        {"model": model.slug, "release": model.release, "content": fingerprint, "meta": metadata},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def point_payload(
    ns: Namespace,
    *,
    item_id: str,
    text: str | None,
    media_ref: str | None,
    metadata: dict[str, Any],
    content_hash: str | None,
    run_id: str | None,
    indexed_at: str,
    chunk_fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The payload of a point written to `ns`. `content_hash` and `run_id` (dedupe, resume)
    are left out when None (synthetic points of the bench); `chunk_fields` are a chunk's
    number and span (`points.chunks.Chunk.payload_fields`), none for a one-chunk item."""
    payload: dict[str, Any] = {
        namespaces.TENANT_FIELD: ns.tenant_key,
        namespaces.WORKSPACE_FIELD: ns.workspace_id,
        namespaces.SCOPE_FIELD: ns.scope,
        namespaces.ID_FIELD: item_id,
        namespaces.METADATA_FIELD: metadata,
        namespaces.INDEXED_AT_FIELD: indexed_at,
    }
    if content_hash is not None:
        payload[namespaces.CONTENT_HASH_FIELD] = content_hash
    if run_id is not None:
        payload[namespaces.RUN_FIELD] = run_id
    if text is not None:
        payload[namespaces.TEXT_FIELD] = text
    if media_ref is not None:
        payload[namespaces.MEDIA_REF_FIELD] = media_ref
    if chunk_fields:
        payload.update(chunk_fields)
    return payload


def thumbnail_url(media_ref: object) -> str | None:
    return f"/api/media/{media_ref}/thumbnail" if isinstance(media_ref, str) else None


@dataclass(frozen=True)
class StoredItem:
    """What a stored payload shows a client."""

    item_id: object  # the client's id as stored (a string, unless the payload is a stand-in)
    text: object  # as stored: a hit shows it as it is, a listing only a string's snippet
    metadata: dict[str, Any]
    media_ref: str | None
    indexed_at: str | None

    @property
    def thumbnail_url(self) -> str | None:
        return thumbnail_url(self.media_ref)


def read_payload(payload: dict[str, Any]) -> StoredItem:
    metadata = payload.get(namespaces.METADATA_FIELD)
    return StoredItem(
        item_id=payload.get(namespaces.ID_FIELD),
        text=payload.get(namespaces.TEXT_FIELD),
        metadata=metadata if isinstance(metadata, dict) else {},
        media_ref=_str_or_none(payload.get(namespaces.MEDIA_REF_FIELD)),
        indexed_at=_str_or_none(payload.get(namespaces.INDEXED_AT_FIELD)),
    )


def hit_public(hit: ScoredPoint) -> dict[str, Any]:
    """A search hit as a run's output shows it."""
    item = read_payload(hit.payload)
    out: dict[str, Any] = {
        "id": item.item_id,
        "score": hit.score,
        "text": item.text,
        "metadata": item.metadata,
    }
    if item.media_ref is not None:
        out["media_ref"] = item.media_ref
        out["thumbnail_url"] = item.thumbnail_url
    return out


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
