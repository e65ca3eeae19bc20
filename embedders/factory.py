"""Build an embedder from a kind and plain config data.

Each backend module is imported only when its kind is asked for, so a model that is not used
costs no import time and no memory. Config keys and values are closed sets: an unknown kind,
an unknown key or a value outside its allowed set is a `ValueError` that lists what is allowed.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from embedders.base import Embedder, MissingDependency

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    ConfigT = TypeVar("ConfigT", bound=DataclassInstance)


class EmbedderKind(enum.StrEnum):
    SENTENCE_TRANSFORMER_TEXT = "sentence_transformer_text"
    EFFICIENTNET_LITE0 = "efficientnet_lite0"
    CLIP = "clip"

    @classmethod
    def parse(cls, value: EmbedderKind | str) -> EmbedderKind:
        if isinstance(value, EmbedderKind):
            return value
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(repr(kind.value) for kind in cls)
            raise ValueError(f"unknown embedder kind {value!r}; valid kinds: {valid}") from None


@dataclass(frozen=True)
class _Backend:
    module: str
    embedder_class: str
    config_class: str


_BACKENDS: dict[EmbedderKind, _Backend] = {
    EmbedderKind.SENTENCE_TRANSFORMER_TEXT: _Backend(
        "embedders.sentence_transformer",
        "SentenceTransformerTextEmbedder",
        "SentenceTransformerTextConfig",
    ),
    EmbedderKind.EFFICIENTNET_LITE0: _Backend(
        "embedders.efficientnet", "EfficientNetLite0Embedder", "EfficientNetLite0Config"
    ),
    EmbedderKind.CLIP: _Backend("embedders.clip", "ClipEmbedder", "ClipConfig"),
}

# Import name -> what to pip install, for the modules a backend imports at module level.
_PIP_NAMES: dict[str, str] = {
    "torch": "torch",
    "numpy": "numpy",
    "PIL": "pillow",
    "sentence_transformers": "sentence-transformers",
    "transformers": "transformers",
    "huggingface_hub": "huggingface-hub",
}


def create_embedder(kind: EmbedderKind | str, **config: object) -> Embedder:
    """Load the embedder of `kind`; `config` holds that kind's config keys (see its dataclass)."""
    parsed = EmbedderKind.parse(kind)
    backend = _BACKENDS[parsed]
    try:
        module = importlib.import_module(backend.module)
    except ImportError as exc:
        if isinstance(exc, MissingDependency):
            raise
        top = (exc.name or "").split(".")[0]
        package = _PIP_NAMES.get(top, top or "?")
        raise MissingDependency(parsed.value, package, f"pip install {package}") from exc
    config_class: Any = getattr(module, backend.config_class)
    embedder_class: Any = getattr(module, backend.embedder_class)
    embedder: Embedder = embedder_class(build_config(config_class, config, kind=parsed.value))
    return embedder


def build_config(
    config_class: type[ConfigT], values: Mapping[str, object], *, kind: str
) -> ConfigT:
    """Check `values` against the dataclass's fields and types, then build it.

    Why not just `config_class(**values)`: that turns a typo into a TypeError without the list of
    valid keys, and lets a wrong-typed value (e.g. batch_size "32") through to the model.
    """
    fields = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(map(repr, unknown))} for embedder kind {kind!r}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(config_class)
    checked = {key: _check_value(kind, key, hints[key], value) for key, value in values.items()}
    return config_class(**checked)


def _check_value(kind: str, key: str, hint: Any, value: object) -> object:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            valid = ", ".join(repr(option) for option in allowed)
            raise ValueError(f"{kind}: config {key!r} is {value!r}; valid values: {valid}")
        return value
    if origin is types.UnionType or origin is typing.Union:
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors: list[ValueError] = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(kind, key, option, value)
            except ValueError as exc:
                errors.append(exc)
        raise errors[0]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):  # a pathlib.Path for a folder key is fine
            return os.fspath(value)
    else:  # pragma: no cover - config dataclasses only use the types above
        raise TypeError(f"{kind}: config {key!r} has an unsupported type {hint!r}")
    raise ValueError(
        f"{kind}: config {key!r} must be {getattr(hint, '__name__', hint)}, "
        f"got {type(value).__name__} {value!r}"
    )


def validate_config(kind: EmbedderKind | str, **config: object) -> None:
    """Check a kind and its config without loading weights (e.g. a model registry at startup).

    Imports the backend module (and so torch), but builds no model.
    """
    parsed = EmbedderKind.parse(kind)
    backend = _BACKENDS[parsed]
    module = importlib.import_module(backend.module)
    build_config(getattr(module, backend.config_class), config, kind=parsed.value)


def config_keys(kind: EmbedderKind | str) -> frozenset[str]:
    """The config keys `kind` accepts (imports its backend module, loads no weights)."""
    parsed = EmbedderKind.parse(kind)
    backend = _BACKENDS[parsed]
    module = importlib.import_module(backend.module)
    return frozenset(
        field.name for field in dataclasses.fields(getattr(module, backend.config_class))
    )


def check_weights(kind: EmbedderKind | str, **config: object) -> None:
    """Raise `WeightsUnavailable` when `kind` could not find its weights, without loading them.

    Backends whose weights ship in an installed package have nothing to check; a backend with
    a module-level `check_weights(config)` is asked.
    """
    parsed = EmbedderKind.parse(kind)
    backend = _BACKENDS[parsed]
    module = importlib.import_module(backend.module)
    checker = getattr(module, "check_weights", None)
    if checker is not None:
        checker(build_config(getattr(module, backend.config_class), config, kind=parsed.value))
