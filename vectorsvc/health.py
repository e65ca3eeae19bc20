"""Health: the only endpoint readable without credentials."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from vectorsvc import __version__
from vectorsvc.state import StateDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    version: str
    vector_store: str


@router.get("/health", response_model=Health)
@router.get("/api/health", response_model=Health, include_in_schema=False)
def health(state: StateDep) -> Health:
    return Health(status="ok", version=__version__, vector_store=state.store.backend_name)
