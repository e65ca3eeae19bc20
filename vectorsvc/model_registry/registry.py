"""The model registry: published models as data, looked up by slug.

The data is the operator's: `VECTORSVC_MODELS_FILE` names a registry file, the packaged
`models.yaml` is the default. `ModelRegistry.from_file` checks the whole file before the
service uses any of it and raises `RegistryError` naming each broken model and field
(`models[2] (slug 'my-model').pricing.search.micro_credits_per_unit: ...`).

Each model carries, per mode, its contract (`contracts.ModeContract`) and its price
(`pricing.ModePrice`); `validate_run_contract` and `example_request` read them for one mode.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from embedders.factory import EmbedderKind, validate_config
from embedders.sentence_transformer import MINILM_NAME
from vectorsvc.config import Settings
from vectorsvc.errors import NotFound, ValidationFailed
from vectorsvc.model_registry.contracts import ModeContract
from vectorsvc.model_registry.pricing import ModePrice

Mode = Literal["execute", "index", "search", "delete"]
Modality = Literal["text", "image"]
VECTOR_MODES: frozenset[str] = frozenset({"index", "search", "delete"})
DEFAULT_REGISTRY = Path(__file__).with_name("models.yaml")
# The scope of the examples the marketplace publishes for the vector modes.
EXAMPLE_SCOPE = "playground"


# Keys of an embedder config that say where its weights are (see each adapter's config).
_WEIGHTS_KEYS = ("path", "model")
# How many problems one RegistryError lists.
MAX_REPORTED_PROBLEMS = 20


class RegistryError(ValueError):
    """The registry file cannot be used; the message names each model and field at fault."""


class EmbedderRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str
    config: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_kind_and_config(self) -> EmbedderRef:
        # Closed sets, checked without loading weights: the kind, then its config keys and
        # value types (each error lists what is allowed).
        EmbedderKind.parse(self.kind)
        validate_config(self.kind, **self.config)
        return self


class Availability(BaseModel):
    """Whether the platform offers the model now; `reason` is shown to clients when not."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    available: bool = True
    reason: str | None = None


class Chunking(BaseModel):
    """How an index item's text is split into chunks, each embedded and stored on its own
    (`embedders.chunking`): windows of `window_tokens` of the model's tokens (None: as many
    as the model reads), `overlap_tokens` shared with the window before, and at most
    `max_chunk_chars` characters each. A text that fits one window is one chunk."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    window_tokens: int | None = Field(default=None, ge=16)
    overlap_tokens: int = Field(default=32, ge=0)
    max_chunk_chars: int = Field(default=8_000, ge=256)

    @model_validator(mode="after")
    def _overlap_within_window(self) -> Chunking:
        if self.window_tokens is not None and self.overlap_tokens >= self.window_tokens // 2:
            raise ValueError(
                f"overlap_tokens ({self.overlap_tokens}) must be under half of window_tokens "
                f"({self.window_tokens})"
            )
        return self


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
    chunking: Chunking = Field(default_factory=Chunking)

    @model_validator(mode="after")
    def _every_mode_has_contract_and_price(self) -> ModelSpec:
        for name, table in (("contracts", self.contracts), ("pricing", self.pricing)):
            if set(table) != set(self.modes):
                raise ValueError(
                    f"model {self.slug!r}: {name} must name exactly its modes "
                    f"({', '.join(self.modes)}), not {', '.join(table) or 'none'}"
                )
        return self

    @model_validator(mode="after")
    def _says_where_its_weights_are(self) -> ModelSpec:
        # A sentence-transformers entry that names no weights loads all-MiniLM-L6-v2: under
        # any other slug that would publish MiniLM's vectors as another model's.
        config = self.embedder.config
        if (
            self.embedder.kind == EmbedderKind.SENTENCE_TRANSFORMER_TEXT
            and self.slug != MINILM_NAME
            and not any(config.get(key) for key in _WEIGHTS_KEYS)
        ):
            raise ValueError(
                "embedder.config: say where the weights are: path (an absolute local folder "
                "holding the sentence-transformers model) or model (a hub id); without either "
                f"this model would serve {MINILM_NAME}"
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
    def from_file(cls, path: Path | None = None) -> ModelRegistry:
        """Load and check a registry file (default: the packaged one); `RegistryError` says
        what is wrong, naming the file, each model (index and slug) and field."""
        path = path or DEFAULT_REGISTRY
        return cls(_read_registry(path).models)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """The registry the service runs with: `VECTORSVC_MODELS_FILE`, else the packaged one."""
        return cls.from_file(settings.models_file)

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


def _read_registry(path: Path) -> RegistryFile:
    where = f"model registry {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{where}: cannot be read ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistryError(f"{where}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise RegistryError(
            f"{where}: must be a YAML mapping with a 'models' list (and optional 'schemas'), "
            f"not {type(data).__name__}"
        )
    try:
        registry = RegistryFile.model_validate(data)
    except ValidationError as exc:
        raise RegistryError(f"{where}: " + "; ".join(_problems(exc, data))) from None
    seen: dict[str, int] = {}
    for index, spec in enumerate(registry.models):
        if spec.slug in seen:
            raise RegistryError(
                f"{where}: models[{index}] (slug {spec.slug!r}).slug: duplicate; "
                f"models[{seen[spec.slug]}] has the same slug"
            )
        seen[spec.slug] = index
    return registry


def _problems(exc: ValidationError, data: dict[str, Any]) -> list[str]:
    """Each error as `models[2] (slug 'x').pricing.search.unit: message`."""
    models = data.get("models")
    problems: list[str] = []
    for error in exc.errors()[:MAX_REPORTED_PROBLEMS]:
        loc = list(error["loc"])
        field = ""
        if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
            index = loc[1]
            entry = models[index] if isinstance(models, list) else None
            slug = entry.get("slug") if isinstance(entry, dict) else None
            field = f"models[{index}]" + (f" (slug {slug!r})" if isinstance(slug, str) else "")
            loc = loc[2:]
        for part in loc:
            field += f"[{part}]" if isinstance(part, int) else f".{part}"
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{field.lstrip('.')}: {message}" if field else message)
    return problems
