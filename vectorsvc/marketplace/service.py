"""Marketplace listings and model pages, read from the registry (no database)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, get_args

from vectorsvc.billing.money import format_credits
from vectorsvc.errors import NotFound, ValidationFailed
from vectorsvc.marketplace.schemas import (
    ModeContractPublic,
    ModelDetailPublic,
    ModelPublic,
    ModelsPublic,
    PricePublic,
)
from vectorsvc.model_registry.pricing import ModePrice
from vectorsvc.model_registry.registry import Modality, Mode, ModelSpec, example_request
from vectorsvc.state import AppState

MODALITIES: tuple[str, ...] = get_args(Modality)
MODES: tuple[str, ...] = get_args(Mode)
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def list_models(
    state: AppState, *, modality: str | None, mode: str | None, cursor: str | None, limit: int
) -> ModelsPublic:
    _check_choice("modality", modality, MODALITIES)
    _check_choice("mode", mode, MODES)
    matching = [
        spec
        for spec in state.registry.models  # sorted by slug: the cursor is the last slug seen
        if (modality is None or modality in spec.modalities)
        and (mode is None or mode in spec.modes)
    ]
    after = _decode_cursor(cursor) if cursor else None
    page = [spec for spec in matching if after is None or spec.slug > after][: limit + 1]
    has_more = len(page) > limit
    page = page[:limit]
    return ModelsPublic(
        data=[ModelPublic(**_summary(state, spec)) for spec in page],
        count=len(matching),
        next_cursor=_encode_cursor(page[-1].slug) if has_more and page else None,
    )


def get_model(state: AppState, *, slug: str) -> ModelDetailPublic:
    try:
        spec = state.registry.get(slug)
    except NotFound:
        raise NotFound(
            f"no published model {slug!r}; list them with GET /api/marketplace/models",
            field="slug",
            code="model_not_found",
        ) from None
    contracts = {
        mode: ModeContractPublic(
            mode=mode,
            description=spec.contracts[mode].description,
            input_schema=spec.contracts[mode].input,
            params_schema=spec.contracts[mode].params,
            price=_price(spec.pricing[mode]),
            example_request=example_request(spec, mode),
        )
        for mode in spec.modes
    }
    return ModelDetailPublic(
        **_summary(state, spec), hardware_tier=spec.hardware_tier, contracts=contracts
    )


def _summary(state: AppState, spec: ModelSpec) -> dict[str, Any]:
    available, reason = spec.availability.available, spec.availability.reason
    if available:
        # The runtime knows when the weights are missing on this server (after a load try).
        missing = state.embeddings.availability(spec)
        if missing is not None:
            available, reason = False, missing.reason
    return {
        "slug": spec.slug,
        "name": spec.name,
        "description": spec.description,
        "modalities": list(spec.modalities),
        "modes": list(spec.modes),
        "dimension": spec.dimension,
        "release": spec.release,
        "available": available,
        "unavailable_reason": None if available else (reason or "not offered at present"),
        "pricing": {mode: _price(spec.pricing[mode]) for mode in spec.modes},
    }


def _price(price: ModePrice) -> PricePublic:
    return PricePublic(
        unit=price.unit,
        credits_per_unit=format_credits(price.micro_credits_per_unit),
        micro_credits_per_unit=price.micro_credits_per_unit,
    )


def _check_choice(field: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise ValidationFailed(
            f"{field} {value!r} is not one of: {', '.join(allowed)}",
            field=field,
            code="invalid_filter",
            details={"allowed": list(allowed)},
        )


def _encode_cursor(slug: str) -> str:
    return base64.urlsafe_b64encode(slug.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        slug = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
        if not _SLUG.match(slug):
            raise ValueError(slug)
        return slug
    except (binascii.Error, ValueError):
        raise ValidationFailed(
            "cursor is not valid; pass the next_cursor of the previous page",
            field="cursor",
            code="invalid_cursor",
        ) from None
