"""The index pipeline: prepare items (per-item failures) -> dedupe -> embed -> write and
charge together. One pipeline serves synchronous runs and background chunks.

- Prepare: `parse_items` checks a background chunk's raw items one by one against the mode's
  contract (a synchronous run's whole `input` is checked at the gate, `gate.run_context`);
  `index_items` then checks each item's content against the server's limits and resolves
  its media (`content`).
- Dedupe: an item whose stored content hash is unchanged is skipped (not embedded, written
  or billed); one this same run stored before a restart is billed, not embedded again.
- Embed, then `writes.write_and_charge`: the upsert and its charge finish together.

A synchronous run is all or nothing (`strict`): the first failure raises, in the order a
client reads the errors (every content check before any media lookup). A background chunk
records each failure against its item and indexes the rest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio

from embedders.base import Embeddings
from vectorsvc.billing.funds import Reservation
from vectorsvc.billing.service import quote
from vectorsvc.errors import ValidationFailed
from vectorsvc.model_registry.pricing import Usage
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.points.namespaces import Namespace
from vectorsvc.points.payload import content_hash, point_payload
from vectorsvc.points.sparse import document_vector, has_keywords
from vectorsvc.points.store import stored_points
from vectorsvc.runs.content import (
    Content,
    ImageContent,
    Prepared,
    TextContent,
    embed_prepared,
    prepare,
    prepare_each,
)
from vectorsvc.runs.gate import check_item
from vectorsvc.runs.inputs import IndexItem, MetadataLimits, validate_part
from vectorsvc.runs.intents import ChunkProgress
from vectorsvc.runs.writes import write_and_charge
from vectorsvc.state import AppState
from vectorsvc.vectorstore.base import PointRecord

# -- prepare --------------------------------------------------------------------------------


@dataclass
class ItemBatch:
    """Items of a run to index, each with its position in the run, and the failures of the
    items already left out (background runs: one dict per item, as `RunErrorPublic`)."""

    items: list[IndexItem]
    positions: list[int]
    failures: list[dict[str, Any]] = field(default_factory=list)


def failure(index: int, item_id: object, code: str, message: str) -> dict[str, Any]:
    return {
        "index": index,
        "id": item_id if isinstance(item_id, str) else None,
        "code": code,
        "message": message,
    }


def parse_items(
    model: ModelSpec,
    raw_items: Sequence[Any],
    start: int,
    end: int,
    seen: set[str],
    limits: MetadataLimits,
) -> ItemBatch:
    """Check raw items `start..end-1` one by one (`gate.check_item`: the modality rule and the
    index contract's item schema; then the server's metadata limits as `IndexItem` parses):
    an item that breaks a rule, or repeats an id (`seen`: the ids taken so far, updated),
    fails alone (`invalid_item`, or the rule's own code: `modality_not_supported`)."""
    batch = ItemBatch([], [])
    for pos in range(start, end):
        raw = raw_items[pos]
        raw_id = raw.get("id") if isinstance(raw, dict) else None
        try:
            check_item(model, raw, pos)
            item = validate_part(IndexItem, raw, prefix=f"input.items[{pos}]", context=limits)
        except ValidationFailed as exc:
            code = exc.code if exc.code == "modality_not_supported" else "invalid_item"
            batch.failures.append(failure(pos, raw_id, code, exc.message))
            continue
        if item.id in seen:
            message = f"id {item.id!r} appears earlier in this run"
            batch.failures.append(failure(pos, item.id, "duplicate_id", message))
            continue
        seen.add(item.id)
        batch.items.append(item)
        batch.positions.append(pos)
    return batch


def item_contents(
    items: Sequence[IndexItem], positions: Sequence[int] | None = None
) -> list[Content]:
    """Each item's content, its field named by the item's position in the run (`positions`,
    default: its index in `items`)."""
    where = range(len(items)) if positions is None else positions
    return [
        TextContent(item.text, f"input.items[{where[i]}].text")
        if item.text is not None
        else ImageContent(_media_ref(item), f"input.items[{where[i]}].image")
        for i, item in enumerate(items)
    ]


def modality_of(items: Sequence[IndexItem]) -> str:
    kinds = {"text" if item.text is not None else "image" for item in items}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _media_ref(item: IndexItem) -> str:
    assert item.image is not None
    return item.image.media_ref


# -- dedupe ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexPlan:
    """Which items of a batch to embed, which are unchanged, which a resumed run wrote."""

    hashes: list[str]
    to_embed: list[int]
    skipped: list[int]
    already_written: list[int]  # stored by this same run before a restart: bill, don't embed


def plan_index(
    state: AppState,
    model: ModelSpec,
    ns: Namespace,
    items: Sequence[IndexItem],
    prepared: Prepared,
    run_id: str,
    candidates: Sequence[int],
) -> IndexPlan:
    """Content-hash dedupe against what the namespace holds (blocking)."""
    hashes = [
        content_hash(model, prepared.fingerprint(i), item.metadata) for i, item in enumerate(items)
    ]
    stored = stored_points(state.store, ns, [ns.point_id(items[i].id) for i in candidates])
    to_embed: list[int] = []
    skipped: list[int] = []
    already: list[int] = []
    for i in candidates:
        existing = stored.get(ns.point_id(items[i].id))
        if existing is not None and existing.content_hash == hashes[i]:
            (already if existing.run_id == run_id else skipped).append(i)
        else:
            to_embed.append(i)
    return IndexPlan(hashes=hashes, to_embed=to_embed, skipped=skipped, already_written=already)


# -- embed and write ------------------------------------------------------------------------


def build_points(
    ns: Namespace,
    items: Sequence[IndexItem],
    plan: IndexPlan,
    indexes: Sequence[int],
    vectors: Embeddings,
    run_id: str,
    *,
    keywords: bool = False,
) -> list[PointRecord]:
    """The points to write; with `keywords`, each text's BM25 vector beside its dense one."""
    now = datetime.now(UTC).isoformat()
    return [
        PointRecord(
            id=ns.point_id(items[i].id),
            vector=vectors[row],
            sparse=(
                document_vector(text) if keywords and (text := items[i].text) is not None else None
            ),
            payload=point_payload(
                ns,
                item_id=items[i].id,
                text=items[i].text,
                media_ref=_media_ref(items[i]) if items[i].image is not None else None,
                metadata=items[i].metadata,
                content_hash=plan.hashes[i],
                run_id=run_id,
                indexed_at=now,
            ),
        )
        for row, i in enumerate(indexes)
    ]


@dataclass(frozen=True)
class Indexed:
    """What a batch did: points written (and how many were new), unchanged items skipped,
    the cost charged."""

    written: int
    created: int
    skipped: int
    cost: int


async def index_items(
    state: AppState,
    *,
    model: ModelSpec,
    ns: Namespace,
    batch: ItemBatch,
    run_id: str,
    strict: bool,
    max_decoded_pixels: int | None = None,
    chunk: tuple[int, int] | None = None,
    reservation: Reservation | None = None,
) -> Indexed:
    """Index `batch` into `ns` for run `run_id`: prepare, dedupe, embed, write and charge.

    `strict` (a synchronous run): the first failure raises and nothing is written; else each
    failure joins `batch.failures`. `chunk` (a background run's items `start..end-1`): the
    charge is keyed `<run id>:<start>` and the chunk's progress commits with it. `reservation`:
    the run's funds, which the charge draws its part of (else it reserves its own).
    """
    items, positions, failures = batch.items, batch.positions, batch.failures
    contents = item_contents(items, positions)
    if strict:
        prepared = await prepare(
            state, model=model, workspace_id=ns.workspace_id, contents=contents
        )
    else:
        prepared, ok, problems = await prepare_each(
            state, model=model, workspace_id=ns.workspace_id, contents=contents
        )
        for i, problem in problems.items():
            failures.append(failure(positions[i], items[i].id, problem.code, problem.message))
        items, positions = [items[i] for i in ok], [positions[i] for i in ok]
    plan = await anyio.to_thread.run_sync(
        partial(plan_index, state, model, ns, items, prepared, run_id, range(len(items)))
    )
    started = time.perf_counter()
    vectors, embed_failures = await embed_prepared(
        state,
        model=model,
        prepared=prepared,
        indexes=plan.to_embed,
        purpose="document",
        max_decoded_pixels=max_decoded_pixels,
    )
    embed_seconds = time.perf_counter() - started
    if strict and embed_failures:
        raise embed_failures[min(embed_failures)]
    written = [i for row, i in enumerate(plan.to_embed) if row not in embed_failures]
    for row, problem in embed_failures.items():
        i = plan.to_embed[row]
        failures.append(failure(positions[i], items[i].id, problem.code, problem.message))
    if embed_failures:
        vectors = vectors[[row for row in range(len(plan.to_embed)) if row not in embed_failures]]
    points = build_points(ns, items, plan, written, vectors, run_id, keywords=has_keywords(model))
    billable = len(points) + len(plan.already_written)
    failures.sort(key=lambda f: int(f["index"]))
    progress = None
    if chunk is not None:
        charged = [*written, *plan.already_written]
        progress = ChunkProgress(
            run_id=run_id,
            start=chunk[0],
            end=chunk[1],
            skipped=len(plan.skipped),
            failures=failures,
            embed_seconds=embed_seconds,
            positions=[positions[i] for i in charged],
            item_ids=[items[i].id for i in charged],
        )
    drawn = None
    if reservation is not None:
        drawn = await state.funds.draw(reservation, quote(model, "index", Usage(items=billable)))
    try:
        result = await write_and_charge(
            state,
            model=model,
            ns=ns,
            points=points,
            modality=modality_of(items) if items else "text",
            run_key=run_id if chunk is None else f"{run_id}:{chunk[0]}",
            writer=run_id,
            billable=billable,
            written_before=[ns.point_id(items[i].id) for i in plan.already_written],
            chunk=progress,
            reserved=drawn,
        )
    finally:
        if drawn is not None:
            state.funds.release(drawn)  # settled by the charge already, unless it failed
    return Indexed(
        written=len(points), created=result.created, skipped=len(plan.skipped), cost=result.cost
    )
