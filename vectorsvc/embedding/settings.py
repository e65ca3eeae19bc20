"""What the platform adds to a registry entry's embedder config, and the seams built on it.

`EmbedderSettings` turns a model's registry entry into an embedder (`load`) or a check that
its weights are on disk (`check`); the callables the runtime is given are typed here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Self

from embedders.base import Embedder
from embedders.factory import check_weights, config_keys, create_embedder
from vectorsvc.config import Settings
from vectorsvc.model_registry.registry import ModelSpec

InputKind = Literal["document", "query", "image"]
EmbedderLoader = Callable[[ModelSpec], Embedder]
# Called after each model call with (model slug, input kind, batch size, seconds).
BatchObserver = Callable[[str, str, int, float], None]


WeightsCheck = Callable[[ModelSpec], None]


@dataclass(frozen=True)
class EmbedderSettings:
    """What the platform adds to a registry entry's embedder config."""

    models_dir: str
    batch_size: int = 64
    allow_downloads: bool = False
    text_backend: str = "torch"  # for kinds with a `backend` key (sentence-transformers text)
    onednn: bool = True  # torch Linear layers through oneDNN on CPU (kinds with `onednn`)

    @classmethod
    def from_settings(cls, settings: Settings, *, allow_downloads: bool | None = None) -> Self:
        return cls(
            models_dir=str(settings.resolved_models_dir),
            batch_size=settings.embed_batch_size,
            allow_downloads=(
                settings.allow_model_downloads if allow_downloads is None else allow_downloads
            ),
            text_backend=settings.text_backend,
            onednn=settings.onednn,
        )

    def config_for(self, spec: ModelSpec) -> dict[str, Any]:
        config = dict(spec.embedder.config)
        keys = config_keys(spec.embedder.kind)
        config.setdefault("batch_size", self.batch_size)
        config.setdefault("models_dir", self.models_dir)
        if "name" in keys:  # logs and errors name the model by its slug
            config.setdefault("name", spec.slug)
        if "allow_download" in keys:
            config.setdefault("allow_download", self.allow_downloads)
        if "backend" in keys:
            config.setdefault("backend", self.text_backend)
        if "onednn" in keys:
            config.setdefault("onednn", self.onednn)
        return config

    def load(self, spec: ModelSpec) -> Embedder:
        return create_embedder(spec.embedder.kind, **self.config_for(spec))

    def check(self, spec: ModelSpec) -> None:
        check_weights(spec.embedder.kind, **self.config_for(spec))


def default_loader(models_dir: str, batch_size: int) -> EmbedderLoader:
    """Build an embedder from the registry entry: `embedder.kind` with its config."""
    return EmbedderSettings(models_dir=models_dir, batch_size=batch_size).load
