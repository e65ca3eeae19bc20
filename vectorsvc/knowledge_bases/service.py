"""Knowledge Bases: list what a workspace indexed, page through it, clean it up.

Everything is scoped to the caller's workspace through `namespaces.resolve`, so no call can
name another workspace's data.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Any

import anyio

from vectorsvc import json_body
from vectorsvc.errors import NotFound, ValidationFailed
from vectorsvc.knowledge_bases.schemas import (
    DeleteResult,
    ItemPublic,
    ItemsPublic,
    KnowledgeBasePublic,
    KnowledgeBasesPublic,
    MigrationPublic,
)
from vectorsvc.points import catalog, chunks, namespaces, releases
from vectorsvc.points.chunks import heads, read_chunk, read_item_text
from vectorsvc.points.metadata import parse_metadata_filter
from vectorsvc.points.namespaces import Namespace, Scope
from vectorsvc.points.payload import read_payload
from vectorsvc.points.store import delete_and_recount
from vectorsvc.state import AppState
from vectorsvc.vectorstore.base import Filter, HasIds, PointRecord

SNIPPET_CHARS = 280


def _encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _invalid_cursor() -> ValidationFailed:
    return ValidationFailed(
        "cursor is not valid; pass the next_cursor of the previous page",
        field="cursor",
        code="invalid_cursor",
    )


def _decode_cursor(cursor: str) -> Any:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return json_body.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise _invalid_cursor() from None


def _decode_scroll_cursor(cursor: str) -> str:
    """An item listing's cursor: the id of the first point of the next page (a UUID)."""
    decoded = _decode_cursor(cursor)
    if not isinstance(decoded, str):
        raise _invalid_cursor()
    try:
        return str(uuid.UUID(decoded))
    except ValueError:
        raise _invalid_cursor() from None


def list_knowledge_bases(
    state: AppState,
    *,
    workspace_id: str,
    model: str | None,
    scope_prefix: str | None,
    cursor: str | None,
    limit: int,
) -> KnowledgeBasesPublic:
    views = {view.model: view for view in releases.views(state.db, state.registry)}
    if model is not None and model not in views:
        state.registry.get(model)
    after: tuple[str, str] | None = None
    if cursor:
        decoded = _decode_cursor(cursor)
        if not (
            isinstance(decoded, list)
            and len(decoded) == 2
            and all(isinstance(part, str) for part in decoded)
        ):
            raise _invalid_cursor()
        after = (decoded[0], decoded[1])
    entries, total = catalog.list_entries(
        state.db,
        workspace_id=workspace_id,
        model=model,
        scope_prefix=scope_prefix,
        after=after,
        limit=limit + 1,
    )
    has_more = len(entries) > limit
    entries = entries[:limit]
    data = []
    published = {spec.slug: spec for spec in state.registry.models}
    for entry in entries:
        # A model that left the registry keeps its knowledge bases listable (and deletable).
        spec = published.get(entry.model)
        view = views.get(entry.model)
        migration = view.migration if view is not None else None
        vector_bytes = spec.dimension * 4 if spec is not None else 0
        data.append(
            KnowledgeBasePublic(
                model=entry.model,
                model_name=spec.name if spec is not None else entry.model,
                # The live release's collection: a migration moved the entry's points there.
                collection=entry.collection
                if view is None
                else namespaces.release_collection(entry.model, view.live),
                scope=entry.scope,
                modality=entry.modality,
                point_count=entry.point_count,
                last_write_at=entry.last_write_at,
                approx_bytes=int(entry.point_count * (vector_bytes + entry.avg_payload_bytes)),
                release=view.live if view is not None else None,
                migration=None
                if migration is None
                else MigrationPublic(
                    to_release=migration.to_release,
                    done=migration.done,
                    total=migration.total,
                    started_at=migration.started_at,
                ),
            )
        )
    next_cursor = _encode_cursor([entries[-1].model, entries[-1].scope]) if has_more else None
    return KnowledgeBasesPublic(data=data, count=total, next_cursor=next_cursor)


def namespace(state: AppState, *, workspace_id: str, model: str, scope: Scope) -> Namespace:
    """The namespace of a published model, or of one that left the registry while its
    knowledge bases still hold points (its last live release: listable and deletable)."""
    try:
        spec = state.registry.get(model)
    except NotFound:
        live = releases.live_release(state.db, model)
        if live is None:
            raise
        return namespaces.resolve_release(
            workspace_id=workspace_id, slug=model, release=live, scope=scope
        )
    return state.collections.resolve(workspace_id=workspace_id, model=spec, scope=scope)


def _require_known(state: AppState, ns: Namespace) -> None:
    entry = catalog.find_entry(
        state.db, workspace_id=ns.workspace_id, model=ns.model_slug, scope=ns.scope
    )
    if entry is None:
        raise NotFound(
            f"no knowledge base for model {ns.model_slug!r} and scope {ns.scope!r} in this "
            "workspace",
            field="scope",
            code="knowledge_base_not_found",
        )


def item_public(record: PointRecord, *, text: str | None = None) -> ItemPublic:
    """The item as the API shows it, from its chunk 0 (a field of an unexpected type shows
    as empty); `text`: its whole text, when read back."""
    item = read_payload(record.payload)
    return ItemPublic(
        id=str(item.item_id),
        text_snippet=item.text[:SNIPPET_CHARS] if isinstance(item.text, str) else None,
        media_ref=item.media_ref,
        thumbnail_url=item.thumbnail_url,
        metadata=item.metadata,
        indexed_at=item.indexed_at,
        chunks=read_chunk(record.payload).count,
        text=text,
    )


async def list_items(
    state: AppState, *, workspace_id: str, model: str, scope: Scope, cursor: str | None, limit: int
) -> ItemsPublic:
    ns = namespace(state, workspace_id=workspace_id, model=model, scope=scope)
    offset = _decode_scroll_cursor(cursor) if cursor else None

    def _scroll() -> ItemsPublic:
        _require_known(state, ns)
        page = state.store.scroll(  # chunk 0 of each item: items, never raw chunks
            ns.collection, filter=heads(ns.tenant_filter), limit=limit, offset=offset
        )
        return ItemsPublic(
            data=[item_public(p) for p in page.points],
            next_cursor=_encode_cursor(page.next_offset) if page.next_offset else None,
        )

    return await anyio.to_thread.run_sync(_scroll)


async def get_item(
    state: AppState, *, workspace_id: str, model: str, scope: Scope, item_id: str
) -> ItemPublic:
    ns = namespace(state, workspace_id=workspace_id, model=model, scope=scope)

    def _get() -> ItemPublic:
        _require_known(state, ns)
        found = state.store.scroll(
            ns.collection,
            filter=ns.tenant_filter.and_(HasIds((ns.point_id(item_id),))),
            limit=1,
        ).points
        if not found:
            raise NotFound(
                f"no item {item_id!r} in scope {scope!r}", field="item_id", code="item_not_found"
            )
        head = found[0].payload
        if read_chunk(head).count > 1:
            text = read_item_text(state.store, ns, item_id)
        else:
            text = read_chunk(head).text
        return item_public(found[0], text=text)

    return await anyio.to_thread.run_sync(_get)


async def delete_matching(
    state: AppState,
    *,
    workspace_id: str,
    model: str,
    scope: Scope,
    extra: Filter | None,
    dry_run: bool,
) -> DeleteResult:
    """Delete (or count, on a dry run) the scope's points matching `extra` (all if None)."""
    ns = namespace(state, workspace_id=workspace_id, model=model, scope=scope)
    flt = ns.tenant_filter if extra is None else ns.tenant_filter.and_(*extra.must)

    def _delete() -> DeleteResult:
        _require_known(state, ns)
        if dry_run:
            count = state.store.count(ns.collection, filter=heads(flt))
            return DeleteResult(dry_run=True, count=count, deleted=0)
        deleted = delete_and_recount(
            state.store, state.db, ns=ns, flt=flt, heal=True, collections=state.collections
        )
        return DeleteResult(dry_run=False, count=deleted, deleted=deleted)

    return await anyio.to_thread.run_sync(_delete)


def item_filter(ns_item_id: str, ns: Namespace) -> Filter:
    """Every chunk of one item."""
    return Filter(must=chunks.item_filter(ns, [ns_item_id]).must)


def metadata_filter(raw: dict[str, Any]) -> Filter:
    if not raw:
        raise ValidationFailed(
            "filter: an empty filter matches the whole scope; use DELETE on the scope instead",
            field="filter",
            code="invalid_filter",
        )
    return parse_metadata_filter(raw, field="filter")
