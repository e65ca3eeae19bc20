"""Executing runs: one function per mode, keyword-only, no HTTP in here.

The data path: registry (model spec) -> embedder (vectors) -> namespaces (collection,
tenant key, point ids) -> vector store.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio
import numpy as np

from vectorsvc import namespaces
from vectorsvc.errors import ValidationFailed
from vectorsvc.knowledge_bases import catalog
from vectorsvc.models.registry import ModelSpec
from vectorsvc.namespaces import Namespace
from vectorsvc.runs.inputs import (
    DeleteInput,
    DeleteParams,
    ExecuteParams,
    ExecuteTextInput,
    IndexParams,
    IndexTextInput,
    SearchParams,
    SearchTextInput,
    parse_metadata_filter,
    validate_part,
)
from vectorsvc.runs.schemas import RunRequest, RunResponse, RunUsage
from vectorsvc.state import AppState
from vectorsvc.vectorstore.base import Filter, HasIds, PointRecord


def new_run_id() -> str:
    return f"run_{secrets.token_hex(10)}"


async def execute_run(state: AppState, *, workspace_id: str, request: RunRequest) -> RunResponse:
    model = state.registry.get(request.model)
    model.require_mode(request.mode)
    run_id = new_run_id()
    namespace = (
        namespaces.resolve(workspace_id=workspace_id, model=model, scope=request.scope)
        if request.scope is not None
        else None
    )
    handler = _HANDLERS[request.mode]
    output, usage = await handler(state, model, namespace, request)
    return RunResponse(
        id=run_id,
        model=model.slug,
        mode=request.mode,
        scope=request.scope,
        status="succeeded",
        output=output,
        usage=usage,
    )


async def _execute(
    state: AppState, model: ModelSpec, _ns: Namespace | None, request: RunRequest
) -> tuple[dict[str, Any], RunUsage]:
    validate_part(ExecuteParams, request.params, prefix="params")
    data = validate_part(ExecuteTextInput, request.input, prefix="input")
    if (data.text is None) == (data.texts is None):
        raise ValidationFailed(
            "input: send exactly one of 'text' (a string) or 'texts' (a list of strings)",
            field="input",
        )
    texts = [data.text] if data.text is not None else list(data.texts or [])
    _check_texts(state, texts, field="input.texts" if data.texts is not None else "input.text")
    vectors = await state.embeddings.embed(model, "document", texts)
    return (
        {"embeddings": vectors.tolist(), "dimension": model.dimension},
        RunUsage(items=len(texts)),
    )


async def _index(
    state: AppState, model: ModelSpec, ns: Namespace | None, request: RunRequest
) -> tuple[dict[str, Any], RunUsage]:
    assert ns is not None
    validate_part(IndexParams, request.params, prefix="params")
    data = validate_part(IndexTextInput, request.input, prefix="input")
    items = data.items
    if len(items) > state.settings.max_items_per_run:
        raise ValidationFailed(
            f"input.items: at most {state.settings.max_items_per_run} items per run "
            f"(got {len(items)}); split the dataset into several runs",
            field="input.items",
            code="too_many_items",
        )
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.id in seen:
            raise ValidationFailed(
                f"input.items[{i}].id: id {item.id!r} appears twice in this run",
                field=f"input.items[{i}].id",
                code="duplicate_id",
            )
        seen.add(item.id)
    _check_texts(state, [item.text for item in items], field="input.items")
    vectors = await state.embeddings.embed(model, "document", [item.text for item in items])
    now = datetime.now(UTC).isoformat()
    points = [
        PointRecord(
            id=ns.point_id(item.id),
            vector=vectors[i],
            payload={
                namespaces.TENANT_FIELD: ns.tenant_key,
                namespaces.WORKSPACE_FIELD: ns.workspace_id,
                namespaces.SCOPE_FIELD: ns.scope,
                namespaces.ID_FIELD: item.id,
                namespaces.TEXT_FIELD: item.text,
                namespaces.METADATA_FIELD: item.metadata,
                namespaces.INDEXED_AT_FIELD: now,
            },
        )
        for i, item in enumerate(items)
    ]
    created = await anyio.to_thread.run_sync(
        partial(_write_points, state, model, ns, points, modality="text")
    )
    return (
        {
            "ids": [item.id for item in items],
            "counts": {
                "received": len(items),
                "indexed": len(points),
                "created": created,
                "updated": len(points) - created,
            },
            "collection": ns.collection,
            "scope": ns.scope,
        },
        RunUsage(items=len(items)),
    )


def _write_points(
    state: AppState, model: ModelSpec, ns: Namespace, points: list[PointRecord], *, modality: str
) -> int:
    """Upsert, update the catalog, and return how many of the points are new."""
    state.collections.ensure(model)
    existing = state.store.count(
        ns.collection, filter=ns.tenant_filter.and_(HasIds(tuple(p.id for p in points)))
    )
    state.store.upsert(ns.collection, points)
    total = state.store.count(ns.collection, filter=ns.tenant_filter)
    catalog.record_write(
        state.db,
        ns=ns,
        modality=modality,
        point_count=total,
        written=len(points) - existing,
        written_payload_bytes=sum(
            len(json.dumps(p.payload)) for p in points[: len(points) - existing]
        ),
    )
    return len(points) - existing


async def _search(
    state: AppState, model: ModelSpec, ns: Namespace | None, request: RunRequest
) -> tuple[dict[str, Any], RunUsage]:
    assert ns is not None
    params = validate_part(SearchParams, request.params, prefix="params")
    if params.top_k > state.settings.max_top_k:
        raise ValidationFailed(
            f"params.top_k: at most {state.settings.max_top_k} (got {params.top_k})",
            field="params.top_k",
            code="top_k_too_large",
        )
    flt = ns.tenant_filter
    if params.filter:
        flt = flt.and_(*parse_metadata_filter(params.filter, field="params.filter").must)
    data = validate_part(SearchTextInput, request.input, prefix="input")
    _check_texts(state, [data.text], field="input.text")
    vector = (await state.embeddings.embed(model, "query", [data.text]))[0]
    hits = await anyio.to_thread.run_sync(
        partial(_query, state, model, ns, vector, flt, params.top_k)
    )
    results = [
        {
            "id": hit.payload.get(namespaces.ID_FIELD),
            "score": hit.score,
            "text": hit.payload.get(namespaces.TEXT_FIELD),
            "metadata": hit.payload.get(namespaces.METADATA_FIELD, {}),
        }
        for hit in hits
        if params.score_threshold is None or hit.score >= params.score_threshold
    ]
    return {"hits": results}, RunUsage(queries=1)


def _query(
    state: AppState,
    model: ModelSpec,
    ns: Namespace,
    vector: np.ndarray[Any, np.dtype[np.float32]],
    flt: Filter,
    limit: int,
) -> list[Any]:
    if not state.collections.exists(model):
        return []
    return state.store.search(ns.collection, vector, filter=flt, limit=limit)


async def _delete(
    state: AppState, model: ModelSpec, ns: Namespace | None, request: RunRequest
) -> tuple[dict[str, Any], RunUsage]:
    assert ns is not None
    validate_part(DeleteParams, request.params, prefix="params")
    data = validate_part(DeleteInput, request.input, prefix="input")
    if (data.ids is None) == (data.filter is None):
        raise ValidationFailed(
            "input: send exactly one of 'ids' (a list of item ids) or 'filter' (a metadata filter)",
            field="input",
        )
    flt = ns.tenant_filter
    if data.ids is not None:
        flt = flt.and_(HasIds(tuple(ns.point_id(i) for i in data.ids)))
    else:
        assert data.filter is not None
        if not data.filter:
            raise ValidationFailed(
                "input.filter: an empty filter would match everything; delete the whole "
                "scope through the Knowledge Bases API instead",
                field="input.filter",
                code="invalid_filter",
            )
        flt = flt.and_(*parse_metadata_filter(data.filter, field="input.filter").must)

    def _run() -> int:
        if not state.collections.exists(model):
            return 0
        deleted = state.store.delete(ns.collection, filter=flt)
        if deleted:
            remaining = state.store.count(ns.collection, filter=ns.tenant_filter)
            catalog.record_count(state.db, ns=ns, point_count=remaining)
        return deleted

    deleted = await anyio.to_thread.run_sync(_run)
    return {"deleted": deleted, "scope": ns.scope}, RunUsage()


def _check_texts(state: AppState, texts: list[str], *, field: str) -> None:
    limit = state.settings.max_text_chars
    for i, text in enumerate(texts):
        if not text.strip():
            raise ValidationFailed(f"{field}: text {i} is empty", field=field, code="empty_text")
        if len(text) > limit:
            raise ValidationFailed(
                f"{field}: text {i} has {len(text)} characters; the limit is {limit}",
                field=field,
                code="text_too_long",
            )


_HANDLERS = {
    "execute": _execute,
    "index": _index,
    "search": _search,
    "delete": _delete,
}
