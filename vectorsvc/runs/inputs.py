"""Typed `input` and `params` for each mode, with field-level errors."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from vectorsvc.errors import ValidationFailed
from vectorsvc.namespaces import METADATA_FIELD
from vectorsvc.vectorstore.base import Condition, Filter, MatchAny, MatchValue, Range

METADATA_KEY_RULE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
MAX_METADATA_BYTES = 16_384
MAX_ID_CHARS = 256

M = TypeVar("M", bound=BaseModel)


def validate_part(model: type[M], data: Any, *, prefix: str) -> M:
    """Validate `data` against `model`; the first error names its field under `prefix`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = prefix
        for part in first["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(model.model_fields)
            message = f"unknown field; {prefix} accepts: {allowed}"
        raise ValidationFailed(f"{path}: {message}", field=path) from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    for key in value:
        if not METADATA_KEY_RULE.match(key):
            raise ValueError(
                f"metadata key {key!r} must match {METADATA_KEY_RULE.pattern} "
                "(letters, digits, '_' and '-', at most 64 characters)"
            )
    if len(json.dumps(value, ensure_ascii=False)) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is larger than {MAX_METADATA_BYTES} bytes as JSON")
    return value


class MediaRef(_Strict):
    media_ref: str = Field(min_length=1, max_length=200)


class IndexItem(_Strict):
    """One item to index: exactly one of `text` or `image`."""

    id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    text: str | None = Field(default=None, min_length=1)
    image: MediaRef | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    _metadata = field_validator("metadata")(_check_metadata)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("text must not be empty or only whitespace")
        return value

    @model_validator(mode="after")
    def _one_content(self) -> IndexItem:
        if (self.text is None) == (self.image is None):
            raise ValueError("send exactly one of 'text' or 'image' ({\"media_ref\": ...})")
        return self


class IndexInput(_Strict):
    items: list[IndexItem] = Field(min_length=1)


class ExecuteInput(_Strict):
    """Exactly one of `text`, `texts`, `image`, `images`."""

    text: str | None = Field(default=None, min_length=1)
    texts: list[str] | None = Field(default=None, min_length=1)
    image: MediaRef | None = None
    images: list[MediaRef] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> ExecuteInput:
        given = [n for n in ("text", "texts", "image", "images") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("send exactly one of 'text', 'texts', 'image' or 'images'")
        return self


class SearchInput(_Strict):
    """Query by `text` or by example `image`."""

    text: str | None = Field(default=None, min_length=1)
    image: MediaRef | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchInput:
        if (self.text is None) == (self.image is None):
            raise ValueError("send exactly one of 'text' or 'image' ({\"media_ref\": ...})")
        return self


class DeleteInput(_Strict):
    ids: list[str] | None = Field(default=None, min_length=1)
    filter: dict[str, Any] | None = None


class ExecuteParams(_Strict):
    pass


class IndexParams(_Strict):
    pass


class SearchParams(_Strict):
    top_k: int = Field(default=10, ge=1)
    filter: dict[str, Any] | None = None
    score_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)


class DeleteParams(_Strict):
    pass


_RANGE_OPS = ("gt", "gte", "lt", "lte")


def parse_metadata_filter(raw: dict[str, Any], *, field: str) -> Filter:
    """`{"lang": "en", "tag": {"any": ["a", "b"]}, "year": {"gte": 2000, "lt": 2010}}`:
    equality, any-of and numeric range on metadata keys, all of which must hold."""
    conditions: list[Condition] = []
    for key, spec in raw.items():
        path = f"{field}.{key}"
        if not METADATA_KEY_RULE.match(key):
            raise ValidationFailed(
                f"{path}: filter keys are metadata keys ({METADATA_KEY_RULE.pattern})",
                field=path,
                code="invalid_filter",
            )
        target = f"{METADATA_FIELD}.{key}"
        if isinstance(spec, str | bool | int) and not isinstance(spec, float):
            conditions.append(MatchValue(key=target, value=spec))
        elif isinstance(spec, dict) and set(spec) == {"any"}:
            values = spec["any"]
            if (
                not isinstance(values, list)
                or not values
                or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in values)
            ):
                raise ValidationFailed(
                    f"{path}.any: a non-empty list of strings or integers",
                    field=f"{path}.any",
                    code="invalid_filter",
                )
            conditions.append(MatchAny(key=target, values=tuple(values)))
        elif isinstance(spec, dict) and spec and set(spec) <= set(_RANGE_OPS):
            bounds: dict[str, float] = {}
            for op, bound in spec.items():
                if isinstance(bound, bool) or not isinstance(bound, int | float):
                    raise ValidationFailed(
                        f"{path}.{op}: range bounds must be numbers",
                        field=f"{path}.{op}",
                        code="invalid_filter",
                    )
                bounds[op] = float(bound)
            conditions.append(Range(key=target, **bounds))
        else:
            raise ValidationFailed(
                f"{path}: use a value (string, integer, boolean) for equality, "
                '{"any": [...]} for any-of, or {"gt"|"gte"|"lt"|"lte": number} for a range',
                field=path,
                code="invalid_filter",
            )
    return Filter(must=tuple(conditions))
