"""Marketplace API shapes: a model in listings, and its full page with every mode's contract."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class PricePublic(BaseModel):
    unit: str = Field(
        description="What is counted: item (embedded), chunk (a text indexed is split into "
        "chunks the model reads whole: a long text is several), query, or request (run)."
    )
    credits_per_unit: str = Field(description="Credits, as an exact decimal string.")
    micro_credits_per_unit: int = Field(description="The same price; 1 credit = 1,000,000.")


class ModelPublic(BaseModel):
    slug: str
    name: str
    description: str
    modalities: list[str]
    modes: list[str]
    dimension: int
    release: str
    available: bool = Field(description="Whether runs on this model can be served now.")
    unavailable_reason: str | None = None
    pricing: dict[str, PricePublic] = Field(description="Price per mode.")


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int = Field(description="How many models match the filters in total.")
    next_cursor: str | None


class ModeContractPublic(BaseModel):
    mode: str
    description: str
    input_schema: dict[str, Any] = Field(description="JSON Schema (2020-12) of `input`.")
    params_schema: dict[str, Any] = Field(description="JSON Schema (2020-12) of `params`.")
    price: PricePublic
    example_request: dict[str, Any] = Field(description="A complete POST /api/runs body.")


class ModelDetailPublic(ModelPublic):
    hardware_tier: str = Field(description="Resolved by the platform; never sent by clients.")
    contracts: dict[str, ModeContractPublic] = Field(description="Per mode, in mode order.")
