"""A long text's chunks: each one point, and the item rebuilt from them.

An index item's text is split (`embedders.chunking`, by the model's tokenizer) into chunks
whose character spans cover it: chunk 0 starts at 0, the last ends at the text's length,
and each starts at or before the end of the one before (windows overlap). Chunk `n` is a
point of its own (`Namespace.chunk_point_id`), carrying the item's id and metadata, its
own slice of the text (never the whole text) and its span; chunk 0 also carries how many
chunks the item has and the item's content hash (dedupe).

A point written before chunking (no chunk fields) reads as its item's one chunk spanning
the whole text, so older collections stay readable and searchable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.points import namespaces
from vectorsvc.points.namespaces import Namespace
from vectorsvc.vectorstore.base import Filter, MatchAny, MatchValue, Range, VectorStore

# A scroll page while reading an item's chunks back.
_PAGE = 256


@dataclass(frozen=True)
class Chunk:
    """One chunk of an item's text: its number, the item's chunk count, its span."""

    number: int
    count: int
    start: int
    end: int

    def payload_fields(self, text: str, model: ModelSpec) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if self.count > 1:  # a one-chunk item is stored as before chunking
            fields = {
                namespaces.CHUNK_FIELD: self.number,
                namespaces.SPAN_START_FIELD: self.start,
                namespaces.SPAN_END_FIELD: self.end,
                namespaces.CHUNK_HASH_FIELD: chunk_hash(model, text),
            }
            if self.number == 0:
                fields[namespaces.CHUNK_COUNT_FIELD] = self.count
        return fields


def chunks_of(spans: Sequence[tuple[int, int]]) -> list[Chunk]:
    return [Chunk(n, len(spans), start, end) for n, (start, end) in enumerate(spans)]


def chunk_hash(model: ModelSpec, text: str) -> str:
    """What a chunk's vector depends on: the model release and the chunk's text."""
    return hashlib.sha256(f"{model.slug}\x1f{model.release}\x1f{text}".encode()).hexdigest()


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as stored, read leniently: missing or odd fields read as one whole chunk."""

    number: int
    count: int
    start: int
    end: int
    text: str | None
    chunk_hash: str | None


def _int(value: object, default: int) -> int:
    return (
        value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default
    )


def read_chunk(payload: dict[str, Any]) -> StoredChunk:
    text = payload.get(namespaces.TEXT_FIELD)
    text = text if isinstance(text, str) else None
    start = _int(payload.get(namespaces.SPAN_START_FIELD), 0)
    end = _int(payload.get(namespaces.SPAN_END_FIELD), start + len(text or ""))
    chash = payload.get(namespaces.CHUNK_HASH_FIELD)
    return StoredChunk(
        number=_int(payload.get(namespaces.CHUNK_FIELD), 0),
        count=max(_int(payload.get(namespaces.CHUNK_COUNT_FIELD), 1), 1),
        start=start,
        end=end,
        text=text,
        chunk_hash=chash if isinstance(chash, str) else None,
    )


def assemble_text(payloads: Iterable[dict[str, Any]]) -> str | None:
    """An item's full text from its stored chunk payloads (any order); None when they do
    not cover it (a chunk missing, or no text: an image item)."""
    chunks = sorted((read_chunk(p) for p in payloads), key=lambda c: c.number)
    if not chunks or len(chunks) != chunks[0].count:
        return None
    parts: list[str] = []
    length = 0
    for chunk in chunks:
        if chunk.text is None or chunk.start > length or chunk.end - chunk.start != len(chunk.text):
            return None
        if chunk.end > length:
            parts.append(chunk.text[length - chunk.start :])
            length = chunk.end
    return "".join(parts)


def item_filter(ns: Namespace, item_ids: Sequence[str]) -> Filter:
    """Every chunk of the items `item_ids` in `ns`."""
    if len(item_ids) == 1:
        return ns.tenant_filter.and_(MatchValue(key=namespaces.ID_FIELD, value=item_ids[0]))
    return ns.tenant_filter.and_(MatchAny(key=namespaces.ID_FIELD, values=tuple(item_ids)))


def heads(flt: Filter) -> Filter:
    """`flt` restricted to chunk 0 of each item: one point per item (older points included)."""
    return flt.and_not(Range(key=namespaces.CHUNK_FIELD, gte=1))


def item_chunks(store: VectorStore, ns: Namespace, item_id: str) -> list[dict[str, Any]]:
    """The payloads of every stored chunk of one item (blocking)."""
    flt = item_filter(ns, [item_id])
    payloads: list[dict[str, Any]] = []
    offset: str | None = None
    while True:
        page = store.scroll(ns.collection, filter=flt, limit=_PAGE, offset=offset)
        payloads.extend(p.payload for p in page.points)
        if page.next_offset is None:
            return payloads
        offset = page.next_offset


def read_item_text(store: VectorStore, ns: Namespace, item_id: str) -> str | None:
    """An item's full text rebuilt from its stored chunks (blocking); None if it has none."""
    return assemble_text(item_chunks(store, ns, item_id))
