"""Marketplace endpoints: parse, call the service, return. Authenticated like every API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from vectorsvc.auth.dependencies import CurrentCaller
from vectorsvc.errors import ERROR_RESPONSES
from vectorsvc.json_body import JSONRoute
from vectorsvc.marketplace import service
from vectorsvc.marketplace.schemas import ModelDetailPublic, ModelsPublic
from vectorsvc.state import StateDep

router = APIRouter(
    prefix="/api/marketplace",
    tags=["marketplace"],
    responses=ERROR_RESPONSES,
    route_class=JSONRoute,
)


@router.get("/models", response_model=ModelsPublic, summary="List the published models")
def list_models(
    _caller: CurrentCaller,
    state: StateDep,
    modality: Annotated[str | None, Query(max_length=32, description="text or image")] = None,
    mode: Annotated[
        str | None, Query(max_length=32, description="execute, index, search or delete")
    ] = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ModelsPublic:
    return service.list_models(state, modality=modality, mode=mode, cursor=cursor, limit=limit)


@router.get(
    "/models/{slug}",
    response_model=ModelDetailPublic,
    summary="A model's page: its contract, price and an example request per mode",
)
def get_model(
    _caller: CurrentCaller,
    state: StateDep,
    slug: Annotated[str, Path(max_length=100, description="The model slug")],
) -> ModelDetailPublic:
    return service.get_model(state, slug=slug)
