"""The index pipeline's chunk step: split each text to embed, reuse what is stored, embed
the rest, and lay out one point per chunk.

- Split: by the model's tokenizer and the registry's `chunking` (`EmbeddingService.split`);
  a text that fits is one chunk, stored exactly as before chunking.
- Reuse: a changed item's stored chunks are read back with their vectors; a new chunk whose
  text equals a stored chunk's (any number: text moved) takes that vector and is not
  embedded or billed. Editing one paragraph of a long text re-embeds only the chunks whose
  text changed.
- Points: chunk 0 of every item first, in item order (a write intent's first ids are its
  items'), then the other chunks. Chunks past an item's new count are deleted after the
  upsert (`points.store.upsert_and_recount`, `stale_after`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import anyio
import numpy as np

from vectorsvc.errors import ValidationFailed
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.points.chunks import Chunk, chunk_hash, chunks_of, read_chunk
from vectorsvc.points.namespaces import Namespace
from vectorsvc.points.payload import point_payload
from vectorsvc.points.sparse import document_vector, has_keywords
from vectorsvc.runs.content import Content, Prepared, TextContent
from vectorsvc.runs.inputs import IndexItem
from vectorsvc.state import AppState
from vectorsvc.vectorstore.base import PointRecord, Vector


@dataclass
class ItemChunks:
    """One item to write: its chunks, each chunk's text, and its vector when reused."""

    item: int  # the item's index in the batch
    chunks: list[Chunk]
    texts: list[str | None]  # None: an image item (one chunk, no text)
    vectors: list[Vector | None] = field(default_factory=list)


@dataclass
class ChunkPlan:
    items: list[ItemChunks]
    # What to embed, in order: (index in `items`, chunk number) and its content.
    embed_at: list[tuple[int, int]]
    embed: Prepared

    @property
    def chunks_embedded(self) -> int:
        return len(self.embed_at)


async def plan_chunks(
    state: AppState,
    *,
    model: ModelSpec,
    ns: Namespace,
    items: Sequence[IndexItem],
    prepared: Prepared,
    indexes: Sequence[int],
    stored_counts: dict[int, int],
    max_chunks: int | None = None,
) -> ChunkPlan:
    """Chunks of `items[indexes]` (their contents in `prepared`), reusing stored vectors.
    `stored_counts`: the chunk count of each item stored before (absent: none stored).
    `max_chunks` (a synchronous run): more chunks to embed is `422 too_many_chunks`."""
    text_at = [i for i in indexes if items[i].text is not None]
    spans = await state.embeddings.split(model, [items[i].text or "" for i in text_at])
    spans_of = dict(zip(text_at, spans, strict=True))
    planned: list[ItemChunks] = []
    for i in indexes:
        text = items[i].text
        if text is None:
            planned.append(ItemChunks(i, chunks_of([(0, 0)]), [None]))
        else:
            chunks = chunks_of(spans_of[i])
            planned.append(ItemChunks(i, chunks, [text[c.start : c.end] for c in chunks]))
    reusable = await anyio.to_thread.run_sync(
        partial(_stored_vectors, state, model, ns, items, planned, stored_counts)
    )
    embed_at: list[tuple[int, int]] = []
    contents: list[Content] = []
    for k, item_chunks in enumerate(planned):
        for n, text in enumerate(item_chunks.texts):
            vector = reusable.get(chunk_hash(model, text)) if text is not None else None
            item_chunks.vectors.append(vector)
            if vector is None:
                embed_at.append((k, n))
                contents.append(
                    prepared.contents[item_chunks.item]
                    if text is None
                    else TextContent(text, _field(prepared, item_chunks.item))
                )
    if max_chunks is not None and len(embed_at) > max_chunks:
        raise ValidationFailed(
            f"input.items: these texts are {len(embed_at)} chunks to embed (a long text is "
            f"split into chunks the model reads whole); at most {max_chunks} per run "
            "(VECTORSVC_MAX_CHUNKS_PER_RUN): split the items over several runs or ask for a "
            "background run (options.background)",
            field="input.items",
            code="too_many_chunks",
            details={"limit": max_chunks, "chunks": len(embed_at)},
        )
    return ChunkPlan(planned, embed_at, Prepared(contents=contents, media=prepared.media))


def _field(prepared: Prepared, index: int) -> str:
    return prepared.contents[index].field


def _stored_vectors(
    state: AppState,
    model: ModelSpec,
    ns: Namespace,
    items: Sequence[IndexItem],
    planned: Sequence[ItemChunks],
    stored_counts: dict[int, int],
) -> dict[str, Vector]:
    """chunk hash -> stored vector, over the stored chunks of the planned text items that
    have more than one chunk, before or now (blocking)."""
    ids = [
        ns.chunk_point_id(items[p.item].id, n)
        for p in planned
        if p.texts[0] is not None
        and p.item in stored_counts
        and (len(p.chunks) > 1 or stored_counts[p.item] > 1)
        for n in range(stored_counts[p.item])
    ]
    if not ids:
        return {}
    found: dict[str, Vector] = {}
    for record in state.store.retrieve(ns.collection, ids, with_vectors=True):
        stored = read_chunk(record.payload)
        if record.vector is None or stored.text is None:
            continue
        found[stored.chunk_hash or chunk_hash(model, stored.text)] = record.vector
    return found


def chunk_points(
    model: ModelSpec,
    ns: Namespace,
    items: Sequence[IndexItem],
    plan: ChunkPlan,
    hashes: Sequence[str],
    vectors: np.ndarray,
    failed: set[int],
    run_id: str,
) -> list[PointRecord]:
    """The points of the planned items, chunk 0 of each first (a text model's with its
    keyword vector); `vectors[row]` is the
    embedding of `plan.embed_at[row]`; items in `failed` (indexes into `plan.items`) are
    left out."""
    for row, (k, n) in enumerate(plan.embed_at):
        if k not in failed:
            plan.items[k].vectors[n] = vectors[row]
    now = datetime.now(UTC).isoformat()
    keywords = has_keywords(model)  # each chunk's BM25 vector beside its dense one
    heads: list[PointRecord] = []
    tails: list[PointRecord] = []
    for k, planned in enumerate(plan.items):
        if k in failed:
            continue
        item = items[planned.item]
        for chunk, text, vector in zip(planned.chunks, planned.texts, planned.vectors, strict=True):
            assert vector is not None
            point = PointRecord(
                id=ns.chunk_point_id(item.id, chunk.number),
                vector=vector,
                sparse=document_vector(text) if keywords and text is not None else None,
                payload=point_payload(
                    ns,
                    item_id=item.id,
                    text=text,
                    media_ref=item.image.media_ref if item.image is not None else None,
                    metadata=item.metadata,
                    content_hash=hashes[planned.item] if chunk.number == 0 else None,
                    run_id=run_id,
                    indexed_at=now,
                    chunk_fields=chunk.payload_fields(text or "", model),
                ),
            )
            (heads if chunk.number == 0 else tails).append(point)
    return heads + tails


def chunk_counts(items: Sequence[IndexItem], plan: ChunkPlan, failed: set[int]) -> dict[str, int]:
    """Each written item's new chunk count, by client id."""
    return {items[p.item].id: len(p.chunks) for k, p in enumerate(plan.items) if k not in failed}
