"""`/api/runs`: parse, call the service, return."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from vectorsvc.auth.dependencies import Caller, CurrentCaller
from vectorsvc.errors import ERROR_RESPONSES, ServiceError
from vectorsvc.json_body import JSONRoute
from vectorsvc.observability import RUN_MODES, Metrics
from vectorsvc.runs.background import BackgroundRuns
from vectorsvc.runs.schemas import (
    RunRequest,
    RunResponse,
    RunState,
    RunStatusesPublic,
    RunStatusPublic,
    parse_run_request,
)
from vectorsvc.runs.service import start_run
from vectorsvc.state import AppState, StateDep

router = APIRouter(prefix="/api", tags=["runs"], responses=ERROR_RESPONSES, route_class=JSONRoute)

_EXAMPLE = {
    "model": "all-minilm-l6-v2",
    "mode": "search",
    "scope": "playground",
    "input": {"text": "Hello"},
    "params": {"top_k": 5},
}

RunIdPath = Annotated[str, Path(description="The run id", max_length=40)]


def background_runs(request: Request) -> BackgroundRuns:
    runs: BackgroundRuns = request.app.state.background_runs
    return runs


@router.post(
    "/runs",
    response_model=RunResponse,
    summary="Execute a model (execute, index, search, delete)",
    responses={202: {"model": RunStatusPublic, "description": "Background run accepted"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": RunRequest.model_json_schema(),
                    "example": _EXAMPLE,
                }
            },
        }
    },
)
async def create_run(
    http_request: Request,
    caller: CurrentCaller,
    state: StateDep,
    body: Annotated[Any, Body(include_in_schema=False)] = None,
) -> RunResponse | JSONResponse:
    try:
        response = await _create_run(http_request, caller, state, body)
    except ServiceError as exc:
        _count_run(http_request, state, body, "rejected" if exc.status < 500 else "error")
        raise
    except Exception:
        _count_run(http_request, state, body, "error")
        raise
    _count_run(
        http_request,
        state,
        body,
        "accepted" if isinstance(response, JSONResponse) else "succeeded",
    )
    return response


def _count_run(http_request: Request, state: AppState, body: Any, outcome: str) -> None:
    """`vectorsvc_runs_total`: labels from closed sets only (registry slugs, run modes)."""
    fields = body if isinstance(body, dict) else {}
    model, mode = fields.get("model"), fields.get("mode") or "execute"
    metrics: Metrics = http_request.app.state.metrics
    metrics.runs.labels(
        model if isinstance(model, str) and model in state.registry else "unknown",
        mode if isinstance(mode, str) and mode in RUN_MODES else "unknown",
        outcome,
    ).inc()


async def _create_run(
    http_request: Request, caller: Caller, state: AppState, body: Any
) -> RunResponse | JSONResponse:
    request = parse_run_request(body)
    http_request.state.run_mode = request.mode  # a metrics label (closed set, checked there)
    result = await start_run(
        state, background_runs(http_request), workspace_id=caller.workspace_id, request=request
    )
    if isinstance(result, RunStatusPublic):
        return JSONResponse(
            status_code=202,
            content=result.model_dump(mode="json"),
            headers={"Location": f"/api/runs/{result.id}"},
        )
    return result


@router.get("/runs", response_model=RunStatusesPublic, summary="Background runs, newest first")
def list_runs(
    request: Request,
    caller: CurrentCaller,
    status: RunState | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> RunStatusesPublic:
    runs = background_runs(request).list(
        workspace_id=caller.workspace_id, status=status, limit=limit
    )
    return RunStatusesPublic(data=runs, count=len(runs))


@router.get("/runs/{run_id}", response_model=RunStatusPublic, summary="A background run")
def get_run(request: Request, caller: CurrentCaller, run_id: RunIdPath) -> RunStatusPublic:
    return background_runs(request).get(workspace_id=caller.workspace_id, run_id=run_id)


@router.post(
    "/runs/{run_id}/cancel", response_model=RunStatusPublic, summary="Cancel a background run"
)
async def cancel_run(
    request: Request, caller: CurrentCaller, run_id: RunIdPath, response: Response
) -> RunStatusPublic:
    return await background_runs(request).cancel(workspace_id=caller.workspace_id, run_id=run_id)
