"""The gate of a run: each rule about a run request checked once, here or where named.

- `schemas.parse_run_request`: the body's shape, routing fields, options, the scope rule
  (`points.namespaces.validate_scope`) and that vector modes carry a scope;
- `run_context` (here): the model is published, offers the mode (`ModelSpec.require_mode`),
  takes the input's modalities (`require_modality`), and the input and params satisfy the
  mode's published contract (`models.yaml`, JSON Schema); then the namespace is resolved;
- `check_item` (here): a background run's items, one by one as the run goes, by the same
  modality rule and the same contract's item schema;
- the mode handlers (`service`) parse the checked input into typed values (`inputs`) and
  apply the server's limits (items per run, top_k, metadata depth and keys).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from vectorsvc.errors import ValidationFailed
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.points.namespaces import Namespace
from vectorsvc.runs.schemas import RunRequest
from vectorsvc.state import AppState


def new_run_id() -> str:
    return f"run_{secrets.token_hex(10)}"


@dataclass(frozen=True)
class RunContext:
    state: AppState
    model: ModelSpec
    workspace_id: str
    namespace: Namespace | None
    request: RunRequest
    run_id: str

    @property
    def ns(self) -> Namespace:
        assert self.namespace is not None, "vector modes always carry a scope"
        return self.namespace


def run_context(
    state: AppState,
    *,
    workspace_id: str,
    request: RunRequest,
    run_id: str | None = None,
    validate_contract: bool = True,
) -> RunContext:
    """Resolve the model, check the mode, the input's modalities and the model's contract
    (a background run's items are checked one by one as it goes: `validate_contract=False`),
    build the namespace. The scope was checked by `parse_run_request`."""
    model = state.registry.get(request.model)
    model.require_mode(request.mode)
    if validate_contract:
        check_input_modalities(model, request.input)
        model.contracts[request.mode].check(request.input, request.params)  # type: ignore[index]
    namespace = (
        state.collections.resolve(workspace_id=workspace_id, model=model, scope=request.scope)
        if request.scope is not None
        else None
    )
    return RunContext(state, model, workspace_id, namespace, request, run_id or new_run_id())


_MODALITY_KEYS = {"text": "text", "texts": "text", "image": "image", "images": "image"}


def check_input_modalities(model: ModelSpec, data: dict[str, Any]) -> None:
    """A clear 422 `modality_not_supported` before the contract's "field required" would."""
    _check_modalities(model, data, "input")
    items = data.get("items")
    if isinstance(items, list):
        for i, item in enumerate(items):
            _check_modalities(model, item, f"input.items[{i}]")


def check_item(model: ModelSpec, item: Any, position: int) -> None:
    """A background run's item `input.items[position]`, checked alone as the run goes: its
    modalities, then the index contract's item schema (the gate checks a synchronous run's
    items with its whole input, `run_context`)."""
    _check_modalities(model, item, f"input.items[{position}]")
    model.contracts["index"].check_item(item, position)


def _check_modalities(model: ModelSpec, obj: Any, prefix: str) -> None:
    if isinstance(obj, dict):
        for key, modality in _MODALITY_KEYS.items():
            if key in obj:
                require_modality(model, modality, f"{prefix}.{key}")


def require_modality(model: ModelSpec, modality: str, field: str) -> None:
    """The modality rule, in one place: a synchronous run's input is checked by
    `check_input_modalities`, a background run's items one by one (`check_item`)."""
    if modality not in model.modalities:
        raise ValidationFailed(
            f"{field}: model {model.slug!r} does not take {modality} inputs; "
            f"it takes {', '.join(model.modalities)}",
            field=field,
            code="modality_not_supported",
            details={"allowed": list(model.modalities)},
        )
