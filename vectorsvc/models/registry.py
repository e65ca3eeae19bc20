"""The model registry: published models as data (`models.yaml`), looked up by slug."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from vectorsvc.errors import NotFound, ValidationFailed

Mode = Literal["execute", "index", "search", "delete"]
VECTOR_MODES: frozenset[str] = frozenset({"index", "search", "delete"})
DEFAULT_REGISTRY = Path(__file__).with_name("models.yaml")


class EmbedderRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str
    config: dict[str, Any] = Field(default_factory=dict)


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    name: str
    description: str
    embedder: EmbedderRef
    modalities: list[Literal["text", "image"]]
    modes: list[Mode]
    dimension: int = Field(gt=0)
    release: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]{0,15}$")
    hardware_tier: str

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

    def get(self, slug: str) -> ModelSpec:
        try:
            return self._by_slug[slug]
        except KeyError:
            raise NotFound(
                f"model {slug!r} is not published; see GET /api/marketplace/models",
                field="model",
                code="model_not_found",
            ) from None
