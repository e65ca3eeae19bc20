"""The model registry: published models as data (`models.yaml`), looked up by slug.

Each model carries, per mode, its contract (`contracts.ModeContract`) and its price
(`pricing.ModePrice`); `validate_run_contract` and `example_request` read them for one mode.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from vectorsvc.errors import NotFound, ValidationFailed
from vectorsvc.model_registry.contracts import ModeContract
from vectorsvc.model_registry.pricing import ModePrice

Mode = Literal["execute", "index", "search", "delete"]
Modality = Literal["text", "image"]
VECTOR_MODES: frozenset[str] = frozenset({"index", "search", "delete"})
DEFAULT_REGISTRY = Path(__file__).with_name("models.yaml")
# The scope of the examples the marketplace publishes for the vector modes.
EXAMPLE_SCOPE = "playground"


class EmbedderRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str
    config: dict[str, Any] = Field(default_factory=dict)


class Availability(BaseModel):
    """Whether the platform offers the model now; `reason` is shown to clients when not."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    available: bool = True
    reason: str | None = None


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    name: str
    description: str
    embedder: EmbedderRef
    modalities: list[Modality]
    modes: list[Mode]
    dimension: int = Field(gt=0)
    release: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]{0,15}$")
    hardware_tier: str
    # Per mode: the input/params contract (JSON Schema) and the price. Every mode has both.
    contracts: dict[Mode, ModeContract]
    pricing: dict[Mode, ModePrice]
    availability: Availability = Field(default_factory=Availability)

    @model_validator(mode="after")
    def _every_mode_has_contract_and_price(self) -> ModelSpec:
        for name, table in (("contracts", self.contracts), ("pricing", self.pricing)):
            if set(table) != set(self.modes):
                raise ValueError(
                    f"model {self.slug!r}: {name} must name exactly its modes "
                    f"({', '.join(self.modes)}), not {', '.join(table) or 'none'}"
                )
        return self

    def require_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise ValidationFailed(
                f"model {self.slug!r} does not offer mode {mode!r}; "
                f"its modes are: {', '.join(self.modes)}",
                field="mode",
                code="mode_not_supported",
                details={"allowed": list(self.modes)},
            )


class RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Reusable schema fragments, referenced from the contracts through YAML anchors.
    schemas: dict[str, Any] = Field(default_factory=dict)
    models: list[ModelSpec]


class ModelRegistry:
    def __init__(self, models: list[ModelSpec]) -> None:
        slugs = [m.slug for m in models]
        if len(set(slugs)) != len(slugs):
            raise ValueError(f"duplicate model slugs in registry: {slugs}")
        self._by_slug = {m.slug: m for m in models}

    @classmethod
    def from_file(cls, path: Path = DEFAULT_REGISTRY) -> ModelRegistry:
        data = yaml.safe_load(path.read_text())
        return cls(RegistryFile.model_validate(data).models)

    @cached_property
    def models(self) -> list[ModelSpec]:
        return sorted(self._by_slug.values(), key=lambda m: m.slug)

    def __contains__(self, slug: object) -> bool:
        return slug in self._by_slug

    def get(self, slug: str) -> ModelSpec:
        try:
            return self._by_slug[slug]
        except KeyError:
            raise NotFound(
                f"model {slug!r} is not published; see GET /api/marketplace/models",
                field="model",
                code="model_not_found",
            ) from None


def validate_run_contract(
    spec: ModelSpec, mode: str, input: dict[str, Any], params: dict[str, Any]
) -> None:
    """Raise `ValidationFailed` naming the first field of `input`/`params` that breaks the
    model's contract for `mode`. The mode must be one of the model's modes."""
    spec.require_mode(mode)
    spec.contracts[mode].check(input, params)  # type: ignore[index]


def example_request(spec: ModelSpec, mode: str) -> dict[str, Any]:
    """The full `POST /api/runs` body of the mode's example."""
    example = spec.contracts[mode].example  # type: ignore[index]
    body: dict[str, Any] = {"model": spec.slug, "mode": mode}
    if mode in VECTOR_MODES:
        body["scope"] = EXAMPLE_SCOPE
    body["input"] = example.input
    body["params"] = example.params
    return body
