"""Knowledge Bases endpoints: the caller's workspace only, always."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from vectorsvc.auth.dependencies import CurrentCaller
from vectorsvc.errors import ERROR_RESPONSES, NotFound
from vectorsvc.json_body import JSONRoute
from vectorsvc.knowledge_bases import service
from vectorsvc.knowledge_bases.schemas import (
    DeleteByFilter,
    DeleteResult,
    ItemPublic,
    ItemsPublic,
    KnowledgeBasesPublic,
)
from vectorsvc.points import namespaces
from vectorsvc.state import StateDep

router = APIRouter(
    prefix="/api/knowledge-bases",
    tags=["knowledge-bases"],
    responses=ERROR_RESPONSES,
    route_class=JSONRoute,
)

ModelPath = Annotated[str, Path(description="Model slug", max_length=100)]
ScopePath = Annotated[str, Path(description="Scope", max_length=64)]
ItemPath = Annotated[str, Path(description="The client's item id", max_length=256)]
Limit = Annotated[int, Query(ge=1, le=500)]


@router.get("", response_model=KnowledgeBasesPublic)
def list_knowledge_bases(
    caller: CurrentCaller,
    state: StateDep,
    model: Annotated[str | None, Query(max_length=100)] = None,
    scope_prefix: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
    limit: Limit = 50,
) -> KnowledgeBasesPublic:
    """Knowledge bases grouped by model, collection and scope, with counts."""
    return service.list_knowledge_bases(
        state,
        workspace_id=caller.workspace_id,
        model=model,
        scope_prefix=scope_prefix,
        cursor=cursor,
        limit=limit,
    )


@router.get("/{model}/{scope}/items", response_model=ItemsPublic)
async def list_items(
    caller: CurrentCaller,
    state: StateDep,
    model: ModelPath,
    scope: ScopePath,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
    limit: Limit = 20,
) -> ItemsPublic:
    checked = namespaces.validate_scope(scope)
    return await service.list_items(
        state,
        workspace_id=caller.workspace_id,
        model=model,
        scope=checked,
        cursor=cursor,
        limit=limit,
    )


@router.get("/{model}/{scope}/items/{item_id}", response_model=ItemPublic)
async def get_item(
    caller: CurrentCaller, state: StateDep, model: ModelPath, scope: ScopePath, item_id: ItemPath
) -> ItemPublic:
    checked = namespaces.validate_scope(scope)
    return await service.get_item(
        state, workspace_id=caller.workspace_id, model=model, scope=checked, item_id=item_id
    )


@router.delete("/{model}/{scope}/items/{item_id}", response_model=DeleteResult)
async def delete_item(
    caller: CurrentCaller, state: StateDep, model: ModelPath, scope: ScopePath, item_id: ItemPath
) -> DeleteResult:
    checked = namespaces.validate_scope(scope)
    ns = service.namespace(state, workspace_id=caller.workspace_id, model=model, scope=checked)
    result = await service.delete_matching(
        state,
        workspace_id=caller.workspace_id,
        model=model,
        scope=checked,
        extra=service.item_filter(item_id, ns),
        dry_run=False,
    )
    if result.deleted == 0:
        raise NotFound(
            f"no item {item_id!r} in scope {scope!r}", field="item_id", code="item_not_found"
        )
    return result


@router.post("/{model}/{scope}/delete", response_model=DeleteResult)
async def delete_by_filter(
    caller: CurrentCaller,
    state: StateDep,
    model: ModelPath,
    scope: ScopePath,
    body: DeleteByFilter,
) -> DeleteResult:
    """Delete the scope's items matching a metadata filter; `dry_run` only counts them."""
    checked = namespaces.validate_scope(scope)
    return await service.delete_matching(
        state,
        workspace_id=caller.workspace_id,
        model=model,
        scope=checked,
        extra=service.metadata_filter(body.filter),
        dry_run=body.dry_run,
    )


@router.delete("/{model}/{scope}", response_model=DeleteResult)
async def delete_scope(
    caller: CurrentCaller,
    state: StateDep,
    model: ModelPath,
    scope: ScopePath,
    dry_run: bool = False,
) -> DeleteResult:
    """Delete a whole scope; `dry_run=true` answers how many items would go."""
    checked = namespaces.validate_scope(scope)
    return await service.delete_matching(
        state,
        workspace_id=caller.workspace_id,
        model=model,
        scope=checked,
        extra=None,
        dry_run=dry_run,
    )
