"""The `POST /api/runs` contract, to the letter of the gateway REST document.

`parse_run_request` checks the raw JSON object in a fixed order so each broken rule gets
its own stable error code, then builds a typed `RunRequest`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from vectorsvc.errors import ValidationFailed
from vectorsvc.model_registry.registry import VECTOR_MODES
from vectorsvc.points.namespaces import SCOPE_RULE, Scope, validate_scope

TOP_LEVEL_FIELDS = ("model", "mode", "scope", "input", "params", "options")
ROUTING_FIELDS = ("resources", "alias", "collection", "namespace")
# Execution options a client may send. `hardware_tier` is never one: the platform resolves it.
ALLOWED_OPTIONS: dict[str, str] = {
    "timeout_s": "number of seconds (0 < t <= 300) after which the run is abandoned",
    "background": "true to run an index run in the background: 202 with a run id to poll "
    "at GET /api/runs/{id}",
}


class RunRequest(BaseModel):
    """A run as documented: the body of `POST /api/runs`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The published model slug.", min_length=1, max_length=100)
    mode: str = Field(default="execute", description="execute, index, search or delete.")
    # The rule is published here and checked once, by `parse_run_request`.
    scope: (
        Annotated[Scope, WithJsonSchema({"pattern": SCOPE_RULE.pattern, "type": "string"})] | None
    ) = Field(default=None, description="Vector namespace; required for index, search and delete.")
    input: dict[str, Any] = Field(description="Model input; shape depends on the mode.")
    params: dict[str, Any] = Field(default_factory=dict, description="Model parameters.")
    options: dict[str, Any] = Field(default_factory=dict, description="Execution options.")


class RunOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    timeout_s: float | int | None = Field(default=None, gt=0, le=300)
    background: bool = False


class RunUsage(BaseModel):
    items: int = Field(default=0, description="Items embedded and stored or returned.")
    chunks: int | None = Field(
        default=None,
        description="Index runs: the text chunks embedded, what the run is billed for (a long "
        "text is several chunks; a chunk whose text is stored already is not embedded again).",
    )
    queries: int = Field(default=0, description="Queries served.")
    skipped: int = Field(default=0, description="Unchanged items not embedded (not billed).")
    cost: str = Field(default="0", description="Credits charged, as an exact decimal string.")


class RunResponse(BaseModel):
    id: str
    model: str
    mode: str
    scope: str | None
    status: Literal["succeeded"]
    output: dict[str, Any]
    usage: RunUsage


def _routing_violation(container: dict[str, Any], prefix: str) -> None:
    for name in ROUTING_FIELDS:
        if name in container:
            raise ValidationFailed(
                f"{prefix}{name} is managed by the platform and must not be supplied by "
                "clients; send only model and scope, the platform derives collection, alias "
                "and namespace from them",
                field=f"{prefix}{name}",
                code="routing_field_forbidden",
            )


def parse_run_request(body: Any) -> RunRequest:
    if not isinstance(body, dict):
        raise ValidationFailed("the request body must be a JSON object", field="body")
    if "parameters" in body:
        raise ValidationFailed(
            "use 'params', not 'parameters': model parameters go in a JSON object named params",
            field="parameters",
            code="use_params",
        )
    _routing_violation(body, "")
    params = body.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValidationFailed(
            f"params must be a JSON object, not {type(params).__name__}",
            field="params",
            code="invalid_params",
        )
    _routing_violation(params, "params.")
    options = body.get("options", {})
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ValidationFailed(
            "options must be a JSON object", field="options", code="invalid_options"
        )
    _routing_violation(options, "options.")
    if "hardware_tier" in options:
        raise ValidationFailed(
            "do not send options.hardware_tier: hardware is resolved from the published "
            "model release",
            field="options.hardware_tier",
            code="hardware_tier_forbidden",
        )
    for name in options:
        if name not in ALLOWED_OPTIONS:
            allowed = ", ".join(f"{k} ({v})" for k, v in ALLOWED_OPTIONS.items())
            raise ValidationFailed(
                f"option {name!r} is not allowed; allowed options: {allowed}",
                field=f"options.{name}",
                code="option_not_allowed",
                details={"allowed": list(ALLOWED_OPTIONS)},
            )
    for name in body:
        if name not in TOP_LEVEL_FIELDS:
            raise ValidationFailed(
                f"unknown field {name!r}; a run accepts: {', '.join(TOP_LEVEL_FIELDS)}",
                field=name,
                code="unknown_field",
            )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValidationFailed(
            "model is required: the published model slug, e.g. 'all-minilm-l6-v2'",
            field="model",
            code="model_required" if model is None else "validation_error",
        )
    mode = body.get("mode", "execute")
    if mode is None:
        mode = "execute"
    if not isinstance(mode, str):
        raise ValidationFailed("mode must be a string", field="mode")
    if "input" not in body or body["input"] is None:
        raise ValidationFailed(
            "input is required (a JSON object)", field="input", code="input_required"
        )
    if not isinstance(body["input"], dict):
        raise ValidationFailed("input must be a JSON object", field="input", code="invalid_input")
    raw_scope = body.get("scope")
    scope: Scope | None = None
    if raw_scope is None:
        if mode in VECTOR_MODES:
            raise ValidationFailed(
                f"scope is required for mode {mode!r}: it is the vector namespace that "
                "separates indexed datasets (search with the scope you indexed with)",
                field="scope",
                code="scope_required",
            )
    else:
        scope = validate_scope(raw_scope)
    try:
        RunOptions.model_validate(options)
    except ValidationError as exc:
        name = str(exc.errors()[0]["loc"][0])
        raise ValidationFailed(
            f"options.{name}: {ALLOWED_OPTIONS[name]}",
            field=f"options.{name}",
            code="invalid_option",
        ) from None
    try:
        return RunRequest(
            model=model, mode=mode, scope=scope, input=body["input"], params=params, options=options
        )
    except ValidationError as exc:  # e.g. a model name over 100 characters: 422, not 500
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first["loc"]) or "body"
        raise ValidationFailed(f"{name}: {first['msg']}", field=name) from None


RunState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class RunProgress(BaseModel):
    total: int
    done: int = Field(description="Items embedded and stored.")
    skipped: int = Field(description="Items unchanged in the namespace: not embedded.")
    failed: int = Field(description="Items that could not be indexed (see errors).")


class RunErrorPublic(BaseModel):
    index: int | None = Field(default=None, description="Position of the item in input.items.")
    id: str | None = None
    code: str
    message: str


class RunTimings(BaseModel):
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    elapsed_seconds: float | None
    embed_seconds: float
    write_seconds: float
    items_per_second: float | None


class RunStatusPublic(BaseModel):
    """A background run, as `POST /api/runs` (202) and `GET /api/runs/{id}` show it."""

    id: str
    model: str
    mode: str
    scope: str
    status: RunState
    progress: RunProgress
    errors: list[RunErrorPublic] = Field(description="Per-item failures (first 1,000).")
    error: RunErrorPublic | None = Field(description="Why the whole run stopped, if it did.")
    timings: RunTimings
    usage: RunUsage
    output: None = None


class RunStatusesPublic(BaseModel):
    data: list[RunStatusPublic]
    count: int
