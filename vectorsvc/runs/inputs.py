"""Typed `input` and `params` for each mode.

A run's input and params have passed the mode's published contract (`models.yaml`, JSON
Schema) before they get here: a synchronous run's whole input at the gate
(`gate.run_context`), a background run's items one by one as it goes (`gate.check_item`). So
the models here only parse them, except for what the contract cannot say: the server's
limits on an item's metadata (depth, keys, numbers, size).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from vectorsvc.config import Settings
from vectorsvc.errors import ValidationFailed
from vectorsvc.points.metadata import number_problem

MAX_METADATA_BYTES = 16_384
# Error types of our own validators that become the error's `code` as they are.
_CONTRACT_CODES = frozenset({"metadata_too_deep", "metadata_too_many_keys", "invalid_number"})

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class MetadataLimits:
    """How deep an item's metadata may nest and how many keys it may hold; models that
    carry metadata read them from the validation context (defaults: the settings')."""

    max_depth: int = Settings.model_fields["max_metadata_depth"].default
    max_keys: int = Settings.model_fields["max_metadata_keys"].default

    @classmethod
    def from_settings(cls, settings: Settings) -> MetadataLimits:
        return cls(max_depth=settings.max_metadata_depth, max_keys=settings.max_metadata_keys)


def validate_part(model: type[M], data: Any, *, prefix: str, context: Any = None) -> M:
    """Validate `data` against `model`; the first error names its field under `prefix`."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = prefix
        for part in first["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(model.model_fields)
            message = f"unknown field; {prefix} accepts: {allowed}"
        code = first["type"] if first["type"] in _CONTRACT_CODES else None
        raise ValidationFailed(f"{path}: {message}", field=path, code=code) from None


def _check_metadata_tree(value: dict[str, Any], limits: MetadataLimits) -> None:
    """Depth, key count and numbers of the whole tree, walked without recursion (a tree
    deeper than Python's recursion limit is refused, not a crash)."""
    keys = 0
    stack: list[tuple[Any, int, str]] = [(value, 1, "metadata")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict | list):
            if depth > limits.max_depth:
                raise PydanticCustomError(
                    "metadata_too_deep",
                    "metadata nests more than {max_depth} levels deep (each object or array "
                    "is a level); at most {max_depth}",
                    {"max_depth": limits.max_depth},
                )
            if isinstance(node, dict):
                keys += len(node)
                if keys > limits.max_keys:
                    raise PydanticCustomError(
                        "metadata_too_many_keys",
                        "metadata holds more than {max_keys} keys (nested objects included); "
                        "at most {max_keys}",
                        {"max_keys": limits.max_keys},
                    )
                children = node.items()
            else:
                children = enumerate(node)  # type: ignore[assignment]
            for name, child in children:
                if isinstance(child, dict | list | int | float) and not isinstance(child, bool):
                    where = f"{path}[{name}]" if isinstance(name, int) else f"{path}.{name}"
                    stack.append((child, depth + 1, where))
        elif isinstance(node, int | float) and (problem := number_problem(node)):
            raise PydanticCustomError(
                "invalid_number", "{where} is {problem}", {"where": path[:200], "problem": problem}
            )


def _check_metadata(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    limits = info.context if isinstance(info.context, MetadataLimits) else MetadataLimits()
    _check_metadata_tree(value, limits)
    if len(json.dumps(value, ensure_ascii=False)) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is larger than {MAX_METADATA_BYTES} bytes as JSON")
    return value


class _Parsed(BaseModel):
    """Typed values of an input or params that the mode's contract (`models.yaml`) has
    already accepted: parse only, no rule here but the metadata limits."""


class MediaRef(_Parsed):
    media_ref: str


class IndexItem(_Parsed):
    """One item to index: exactly one of `text` or `image` (the contract's rule); its
    metadata within the server's limits (checked here: the contract cannot say them)."""

    id: str
    text: str | None = None
    image: MediaRef | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    _metadata = field_validator("metadata")(_check_metadata)


class IndexInput(_Parsed):
    items: list[IndexItem]


class ExecuteInput(_Parsed):
    """Exactly one of `text`, `texts`, `image`, `images` (the contract's rule)."""

    text: str | None = None
    texts: list[str] | None = None
    image: MediaRef | None = None
    images: list[MediaRef] | None = None


class SearchInput(_Parsed):
    """Query by `text` or by example `image` (exactly one: the contract's rule)."""

    text: str | None = None
    image: MediaRef | None = None


class DeleteInput(_Parsed):
    """Exactly one of `ids` or a non-empty `filter` (the contract's rule)."""

    ids: list[str] | None = None
    filter: dict[str, Any] | None = None


class SearchParams(_Parsed):
    top_k: int = 10
    filter: dict[str, Any] | None = None
    score_threshold: float | None = None
    retrieval: str | None = None  # the contract's enum; absent: its default
    fusion: str | None = None  # hybrid only; the contract's enum; absent: its default
