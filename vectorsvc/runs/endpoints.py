"""`POST /api/runs`: parse, call the service, return."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Request

from vectorsvc.auth.dependencies import CurrentCaller
from vectorsvc.errors import ServiceError
from vectorsvc.runs.schemas import RunRequest, RunResponse, parse_run_request
from vectorsvc.runs.service import execute_run
from vectorsvc.state import StateDep

router = APIRouter(prefix="/api", tags=["runs"])

_EXAMPLE = {
    "model": "all-minilm-l6-v2",
    "mode": "search",
    "scope": "playground",
    "input": {"text": "Hello"},
    "params": {"top_k": 5},
}


@router.post(
    "/runs",
    response_model=RunResponse,
    summary="Execute a model (execute, index, search, delete)",
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
) -> RunResponse:
    request = parse_run_request(body)
    http_request.state.run_mode = request.mode  # a metrics label (closed set, checked there)
    timeout = request.options.get("timeout_s")
    if timeout is None:
        return await execute_run(state, workspace_id=caller.workspace_id, request=request)
    try:
        with anyio.fail_after(float(timeout)):
            return await execute_run(state, workspace_id=caller.workspace_id, request=request)
    except TimeoutError:
        raise ServiceError(
            f"the run did not finish within options.timeout_s={timeout}",
            code="run_timeout",
            status=504,
            field="options.timeout_s",
        ) from None
