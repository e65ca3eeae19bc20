"""Health: the only endpoint readable without credentials."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from vectorsvc import __version__
from vectorsvc.errors import ERROR_RESPONSES, Unauthenticated
from vectorsvc.json_body import JSONRoute
from vectorsvc.observability import Metrics
from vectorsvc.points import releases
from vectorsvc.state import StateDep

router = APIRouter(tags=["health"], responses=ERROR_RESPONSES, route_class=JSONRoute)


class Health(BaseModel):
    status: str
    version: str
    vector_store: str


@router.get("/health", response_model=Health)
@router.get("/api/health", response_model=Health, include_in_schema=False)
def health(state: StateDep) -> Health:
    return Health(status="ok", version=__version__, vector_store=state.store.backend_name)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, state: StateDep) -> Response:
    """Prometheus metrics: aggregate only (bounded labels, no tenant data).

    Served to loopback clients, or to anyone presenting `VECTORSVC_METRICS_TOKEN` as
    `X-Metrics-Token`.
    """
    token = state.settings.metrics_token
    client = request.client.host if request.client else ""
    presented = request.headers.get("x-metrics-token")
    # A request a proxy forwarded is not a loopback client, even from a proxy on this host
    # (X-Forwarded-For is honoured only from VECTORSVC_TRUSTED_PROXIES).
    forwarded = "x-forwarded-for" in request.headers or "forwarded" in request.headers
    loopback = client in ("127.0.0.1", "::1", "localhost") and not forwarded
    allowed = loopback or (
        token is not None and presented is not None and hmac.compare_digest(presented, token)
    )
    if not allowed:
        raise Unauthenticated(
            "metrics are served to loopback clients or with X-Metrics-Token",
            code="metrics_forbidden",
        )
    registry: Metrics = request.app.state.metrics
    registry.observe_releases(
        [
            (
                view.model,
                view.live,
                None
                if view.migration is None
                else (view.migration.to_release, view.migration.done, view.migration.total),
            )
            for view in releases.views(state.db, state.registry)
        ]
    )
    return registry.render()
