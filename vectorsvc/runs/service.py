"""Executing runs: one function per mode, keyword-only, no HTTP in here.

The data path: registry (model spec) -> embedder (vectors, via `content`) -> namespaces
(collection, tenant key, point ids) -> vector store, and the catalog after each write.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio

from vectorsvc import namespaces
from vectorsvc.errors import ValidationFailed
from vectorsvc.knowledge_bases import catalog
from vectorsvc.knowledge_bases.service import thumbnail_url
from vectorsvc.models.registry import ModelSpec
from vectorsvc.namespaces import Namespace
from vectorsvc.runs.content import Content, ImageContent, TextContent, embed_contents
from vectorsvc.runs.inputs import (
    DeleteInput,
    DeleteParams,
    ExecuteInput,
    ExecuteParams,
    IndexInput,
    IndexParams,
    SearchInput,
    SearchParams,
    parse_metadata_filter,
    validate_part,
)
from vectorsvc.runs.schemas import RunRequest, RunResponse, RunUsage
from vectorsvc.state import AppState
from vectorsvc.vectorstore.base import Filter, HasIds, PointRecord, ScoredPoint, Vector

Output = tuple[dict[str, Any], RunUsage]


def new_run_id() -> str:
    return f"run_{secrets.token_hex(10)}"


@dataclass(frozen=True)
class RunContext:
    state: AppState
    model: ModelSpec
    workspace_id: str
    namespace: Namespace | None
    request: RunRequest

    @property
    def ns(self) -> Namespace:
        assert self.namespace is not None, "vector modes always carry a scope"
        return self.namespace


async def execute_run(state: AppState, *, workspace_id: str, request: RunRequest) -> RunResponse:
    model = state.registry.get(request.model)
    model.require_mode(request.mode)
    namespace = (
        namespaces.resolve(workspace_id=workspace_id, model=model, scope=request.scope)
        if request.scope is not None
        else None
    )
    ctx = RunContext(state, model, workspace_id, namespace, request)
    output, usage = await _HANDLERS[request.mode](ctx)
    return RunResponse(
        id=new_run_id(),
        model=model.slug,
        mode=request.mode,
        scope=request.scope,
        status="succeeded",
        output=output,
        usage=usage,
    )


def _media(value: Any) -> str:
    return str(value.media_ref)


async def _execute(ctx: RunContext) -> Output:
    validate_part(ExecuteParams, ctx.request.params, prefix="params")
    data = validate_part(ExecuteInput, ctx.request.input, prefix="input")
    contents: list[Content]
    if data.text is not None:
        contents = [TextContent(data.text, "input.text")]
    elif data.texts is not None:
        contents = [TextContent(t, f"input.texts[{i}]") for i, t in enumerate(data.texts)]
    elif data.image is not None:
        contents = [ImageContent(_media(data.image), "input.image")]
    else:
        images = data.images or []
        contents = [ImageContent(_media(m), f"input.images[{i}]") for i, m in enumerate(images)]
    _check_count(ctx, len(contents), "input")
    vectors = await embed_contents(
        ctx.state,
        model=ctx.model,
        workspace_id=ctx.workspace_id,
        contents=contents,
        purpose="document",
    )
    return (
        {"embeddings": vectors.tolist(), "dimension": ctx.model.dimension},
        RunUsage(items=len(contents)),
    )


def _check_count(ctx: RunContext, count: int, field: str) -> None:
    limit = ctx.state.settings.max_items_per_run
    if count > limit:
        raise ValidationFailed(
            f"{field}: at most {limit} items per run (got {count}); split the work into "
            "several runs",
            field=field,
            code="too_many_items",
        )


async def _index(ctx: RunContext) -> Output:
    ns = ctx.ns
    validate_part(IndexParams, ctx.request.params, prefix="params")
    items = validate_part(IndexInput, ctx.request.input, prefix="input").items
    _check_count(ctx, len(items), "input.items")
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.id in seen:
            raise ValidationFailed(
                f"input.items[{i}].id: id {item.id!r} appears twice in this run",
                field=f"input.items[{i}].id",
                code="duplicate_id",
            )
        seen.add(item.id)
    contents: list[Content] = [
        TextContent(item.text, f"input.items[{i}].text")
        if item.text is not None
        else ImageContent(_media(item.image), f"input.items[{i}].image")
        for i, item in enumerate(items)
    ]
    vectors = await embed_contents(
        ctx.state,
        model=ctx.model,
        workspace_id=ctx.workspace_id,
        contents=contents,
        purpose="document",
    )
    now = datetime.now(UTC).isoformat()
    points = []
    for i, item in enumerate(items):
        payload: dict[str, Any] = {
            namespaces.TENANT_FIELD: ns.tenant_key,
            namespaces.WORKSPACE_FIELD: ns.workspace_id,
            namespaces.SCOPE_FIELD: ns.scope,
            namespaces.ID_FIELD: item.id,
            namespaces.METADATA_FIELD: item.metadata,
            namespaces.INDEXED_AT_FIELD: now,
        }
        if item.text is not None:
            payload[namespaces.TEXT_FIELD] = item.text
        else:
            payload[namespaces.MEDIA_REF_FIELD] = _media(item.image)
        points.append(PointRecord(id=ns.point_id(item.id), vector=vectors[i], payload=payload))
    modality = "text" if all(item.text is not None for item in items) else "image"
    if modality == "image" and any(item.text is not None for item in items):
        modality = "mixed"
    created = await anyio.to_thread.run_sync(
        partial(write_points, ctx.state, ctx.model, ns, points, modality=modality)
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


def write_points(
    state: AppState, model: ModelSpec, ns: Namespace, points: list[PointRecord], *, modality: str
) -> int:
    """Upsert, update the catalog, and return how many of the points are new (blocking)."""
    state.collections.ensure(model)
    existing = state.store.count(
        ns.collection, filter=ns.tenant_filter.and_(HasIds(tuple(p.id for p in points)))
    )
    state.store.upsert(ns.collection, points)
    total = state.store.count(ns.collection, filter=ns.tenant_filter)
    created = len(points) - existing
    catalog.record_write(
        state.db,
        ns=ns,
        modality=modality,
        point_count=total,
        written=created,
        written_payload_bytes=sum(len(json.dumps(p.payload)) for p in points[:created]),
    )
    return created


async def _search(ctx: RunContext) -> Output:
    ns = ctx.ns
    settings = ctx.state.settings
    params = validate_part(SearchParams, ctx.request.params, prefix="params")
    if params.top_k > settings.max_top_k:
        raise ValidationFailed(
            f"params.top_k: at most {settings.max_top_k} (got {params.top_k})",
            field="params.top_k",
            code="top_k_too_large",
        )
    flt = ns.tenant_filter
    if params.filter:
        flt = flt.and_(*parse_metadata_filter(params.filter, field="params.filter").must)
    data = validate_part(SearchInput, ctx.request.input, prefix="input")
    query: Content = (
        TextContent(data.text, "input.text")
        if data.text is not None
        else ImageContent(_media(data.image), "input.image")
    )
    vector = (
        await embed_contents(
            ctx.state,
            model=ctx.model,
            workspace_id=ctx.workspace_id,
            contents=[query],
            purpose="query",
        )
    )[0]
    hits = await anyio.to_thread.run_sync(
        partial(_query, ctx.state, ctx.model, ns, vector, flt, params.top_k)
    )
    return (
        {
            "hits": [
                hit_public(hit)
                for hit in hits
                if params.score_threshold is None or hit.score >= params.score_threshold
            ]
        },
        RunUsage(queries=1),
    )


def hit_public(hit: ScoredPoint) -> dict[str, Any]:
    payload = hit.payload
    out: dict[str, Any] = {
        "id": payload.get(namespaces.ID_FIELD),
        "score": hit.score,
        "text": payload.get(namespaces.TEXT_FIELD),
        "metadata": payload.get(namespaces.METADATA_FIELD) or {},
    }
    media_ref = payload.get(namespaces.MEDIA_REF_FIELD)
    if media_ref is not None:
        out["media_ref"] = media_ref
        out["thumbnail_url"] = thumbnail_url(media_ref)
    return out


def _query(
    state: AppState, model: ModelSpec, ns: Namespace, vector: Vector, flt: Filter, limit: int
) -> list[ScoredPoint]:
    if not state.collections.exists(model):
        return []
    return state.store.search(ns.collection, vector, filter=flt, limit=limit)


async def _delete(ctx: RunContext) -> Output:
    ns = ctx.ns
    state = ctx.state
    validate_part(DeleteParams, ctx.request.params, prefix="params")
    data = validate_part(DeleteInput, ctx.request.input, prefix="input")
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
        if not state.collections.exists(ctx.model):
            return 0
        deleted = state.store.delete(ns.collection, filter=flt)
        if deleted:
            remaining = state.store.count(ns.collection, filter=ns.tenant_filter)
            catalog.record_count(state.db, ns=ns, point_count=remaining)
        return deleted

    deleted = await anyio.to_thread.run_sync(_run)
    return {"deleted": deleted, "scope": ns.scope}, RunUsage()


_HANDLERS: dict[str, Callable[[RunContext], Awaitable[Output]]] = {
    "execute": _execute,
    "index": _index,
    "search": _search,
    "delete": _delete,
}
