"""Executing runs: the mode dispatcher, one handler per mode, keyword-only, no HTTP in here.

The data path: registry (model spec and contract) -> embedder (vectors, via `content`) ->
namespace (`points.namespaces`: collection, tenant key, point ids) -> vector store. Index
runs go through the index pipeline (`pipeline`: prepare, dedupe, embed, write and charge
together), as background chunks do (`background`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio

from vectorsvc.billing.money import format_credits
from vectorsvc.billing.service import PendingCharge, quote
from vectorsvc.errors import ServiceError, ValidationFailed
from vectorsvc.model_registry.pricing import Usage
from vectorsvc.points.chunks import item_filter
from vectorsvc.points.grouping import item_hit_public
from vectorsvc.points.metadata import parse_metadata_filter
from vectorsvc.points.store import delete_and_recount
from vectorsvc.runs import retrieval
from vectorsvc.runs.background import BackgroundRuns
from vectorsvc.runs.content import (
    Content,
    ImageContent,
    TextContent,
    embed_contents,
)
from vectorsvc.runs.gate import RunContext, run_context
from vectorsvc.runs.inputs import (
    DeleteInput,
    ExecuteInput,
    IndexInput,
    MetadataLimits,
    SearchInput,
    SearchParams,
    validate_part,
)
from vectorsvc.runs.pipeline import ItemBatch, index_items
from vectorsvc.runs.schemas import RunRequest, RunResponse, RunStatusPublic, RunUsage
from vectorsvc.runs.writes import charge_run
from vectorsvc.state import AppState

Output = tuple[dict[str, Any], RunUsage]


async def start_run(
    state: AppState, background: BackgroundRuns, *, workspace_id: str, request: RunRequest
) -> RunResponse | RunStatusPublic:
    """Run `request` now (its result), or queue it as a background run (its status)."""
    if request.options.get("background"):
        return await background.submit(workspace_id=workspace_id, request=request)
    timeout = request.options.get("timeout_s")
    if timeout is None:
        return await execute_run(state, workspace_id=workspace_id, request=request)
    try:
        with anyio.fail_after(float(timeout)):
            return await execute_run(state, workspace_id=workspace_id, request=request)
    except TimeoutError:
        raise ServiceError(
            f"the run did not finish within options.timeout_s={timeout}",
            code="run_timeout",
            status=504,
            field="options.timeout_s",
        ) from None


async def execute_run(state: AppState, *, workspace_id: str, request: RunRequest) -> RunResponse:
    """Run `request` now: its mode's handler."""
    ctx = run_context(state, workspace_id=workspace_id, request=request)
    output, usage = await _HANDLERS[request.mode](ctx)
    return RunResponse(
        id=ctx.run_id,
        model=ctx.model.slug,
        mode=request.mode,
        scope=request.scope,
        status="succeeded",
        output=output,
        usage=usage,
    )


def _media(value: Any) -> str:
    return str(value.media_ref)


def _check_count(ctx: RunContext, count: int, field: str) -> None:
    limit = ctx.state.settings.max_items_per_run
    if count > limit:
        raise ValidationFailed(
            f"{field}: at most {limit} items per run (got {count}); split the work into "
            "several runs or ask for a background run (options.background)",
            field=field,
            code="too_many_items",
        )


async def _precheck(ctx: RunContext, usage: Usage) -> None:
    """402 before any work when the wallet cannot cover `usage` (reserves nothing)."""
    await ctx.state.funds.check(ctx.workspace_id, quote(ctx.model, ctx.request.mode, usage))


@asynccontextmanager
async def _paid_after(ctx: RunContext, usage: Usage) -> AsyncIterator[str]:
    """Reserve the run's cost (402 if the wallet cannot cover it), do the work, then write
    the charge before answering (`billing.funds.settle`: a served run is billed even if the
    process dies right after). A run that fails costs nothing. Yields the cost, as credits."""
    funds = ctx.state.funds
    reservation = await funds.reserve(ctx.workspace_id, quote(ctx.model, ctx.request.mode, usage))
    try:
        yield format_credits(reservation.cost)
    except BaseException:
        funds.release(reservation)
        raise
    await funds.settle(
        reservation,
        PendingCharge(
            workspace_id=ctx.workspace_id,
            run_id=ctx.run_id,
            spec=ctx.model,
            mode=ctx.request.mode,
            units=usage,
            created_at=datetime.now(UTC),
        ),
    )


async def _charge(ctx: RunContext, usage: Usage) -> str:
    """Charge now, in the request (delete runs: their cost is known only afterwards)."""
    funds = ctx.state.funds
    reservation = await funds.reserve(ctx.workspace_id, quote(ctx.model, ctx.request.mode, usage))
    cost = await funds.commit(
        reservation,
        partial(
            charge_run,
            ctx.state,
            workspace_id=ctx.workspace_id,
            run_key=ctx.run_id,
            model=ctx.model,
            mode=ctx.request.mode,
            usage=usage,
            reservation_id=reservation.id,
        ),
    )
    return format_credits(cost)


async def _execute(ctx: RunContext) -> Output:
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
    usage = Usage(items=len(contents))
    async with _paid_after(ctx, usage) as cost:
        vectors = await embed_contents(
            ctx.state,
            model=ctx.model,
            workspace_id=ctx.workspace_id,
            contents=contents,
            purpose="document",
        )
    return (
        {"embeddings": vectors.tolist(), "dimension": ctx.model.dimension},
        RunUsage(items=len(contents), cost=cost),
    )


async def _index(ctx: RunContext) -> Output:
    ns = ctx.ns
    state = ctx.state
    limits = MetadataLimits.from_settings(ctx.state.settings)
    items = validate_part(IndexInput, ctx.request.input, prefix="input", context=limits).items
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
    await _precheck(ctx, Usage(items=len(items)))
    result = await index_items(
        state,
        model=ctx.model,
        ns=ns,
        batch=ItemBatch(list(items), list(range(len(items)))),
        run_id=ctx.run_id,
        strict=True,
        max_decoded_pixels=state.settings.max_decoded_pixels_per_run,
    )
    return (
        {
            "ids": [item.id for item in items],
            "counts": {
                "received": len(items),
                "indexed": result.written,
                "created": result.created,
                "updated": result.written - result.created,
                "skipped": result.skipped,
            },
            "collection": ns.collection,
            "scope": ns.scope,
        },
        RunUsage(
            items=result.written,
            chunks=result.chunks,
            skipped=result.skipped,
            cost=format_credits(result.cost),
        ),
    )


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
    wanted = retrieval.requested(ctx.model, params.retrieval)
    fusion = retrieval.requested_fusion(ctx.model, params.fusion, wanted)
    async with _paid_after(ctx, Usage(queries=1)) as cost:
        ranked = await retrieval.search(
            ctx.state,
            model=ctx.model,
            ns=ns,
            query=query,
            flt=flt,
            limit=params.top_k,
            wanted=wanted,
            fusion=fusion,
        )
    return (
        {
            "hits": [
                item_hit_public(hit)
                for hit in ranked.hits
                if params.score_threshold is None or hit.score >= params.score_threshold
            ],
            "retrieval": ranked.retrieval,
        },
        RunUsage(queries=1, cost=cost),
    )


async def _delete(ctx: RunContext) -> Output:
    ns = ctx.ns
    state = ctx.state
    data = validate_part(DeleteInput, ctx.request.input, prefix="input")
    flt = ns.tenant_filter
    if data.ids is not None:
        flt = item_filter(ns, data.ids)  # every chunk of each item
    else:
        # The contract (models.yaml) asks for exactly one of them, and a non-empty filter.
        assert data.filter
        flt = flt.and_(*parse_metadata_filter(data.filter, field="input.filter").must)

    def _run() -> int:
        if not state.collections.exists(ns):
            return 0
        return delete_and_recount(
            state.store, state.db, ns=ns, flt=flt, collections=state.collections
        )

    deleted = await anyio.to_thread.run_sync(_run)
    cost = await _charge(ctx, Usage(items=deleted))
    return {"deleted": deleted, "scope": ns.scope}, RunUsage(items=deleted, cost=cost)


_HANDLERS: dict[str, Callable[[RunContext], Awaitable[Output]]] = {
    "execute": _execute,
    "index": _index,
    "search": _search,
    "delete": _delete,
}
