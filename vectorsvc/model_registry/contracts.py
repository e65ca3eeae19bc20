"""Mode contracts: the JSON Schema of a run's `input` and `params`, per model and mode.

The schemas live in `models.yaml` (JSON Schema 2020-12) and are checked when the registry
loads. `ModeContract.check` turns the first violation into a `ValidationFailed` whose
`field` is the JSON path (`input.items[2].text`, `params.top_k`) and whose message says what
is allowed; `ModeContract.check_item` does the same for one of `input.items` alone, against
the same item schema (a background run's items, one by one as the run goes). A schema may
carry `x-error`: the message used when one of its composite rules (`oneOf`, `anyOf`,
`pattern`, `propertyNames`) fails, where a generic one would be cryptic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.exceptions import ValidationError as SchemaViolation
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from vectorsvc.errors import ValidationFailed

MAX_REPORTED_ERRORS = 20
_COMPOSITE_RULES = frozenset({"oneOf", "anyOf", "allOf", "not"})
_CUSTOM_MESSAGE_RULES = _COMPOSITE_RULES | {"pattern"}
_JSON_TYPES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "object": "a JSON object",
    "array": "a list",
    "null": "null",
}


def _check_schema(schema: dict[str, Any]) -> dict[str, Any]:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
    return schema


class ContractExample(BaseModel):
    """A request that satisfies the contract; shown on the model page, tested end to end."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: dict[str, Any]
    params: dict[str, Any] = Field(default_factory=dict)


class ModeContract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str
    input: dict[str, Any] = Field(description="JSON Schema of the run's `input`.")
    params: dict[str, Any] = Field(description="JSON Schema of the run's `params`.")
    example: ContractExample

    # Compiled once: validating a request must not re-read the schema.
    _input_validator: Draft202012Validator = PrivateAttr()
    _params_validator: Draft202012Validator = PrivateAttr()
    _item_validator: Draft202012Validator | None = PrivateAttr(default=None)

    _schemas = field_validator("input", "params")(_check_schema)

    def model_post_init(self, __context: Any) -> None:
        self._input_validator = Draft202012Validator(self.input)
        self._params_validator = Draft202012Validator(self.params)
        item = self.item_schema
        self._item_validator = Draft202012Validator(item) if item is not None else None

    @property
    def item_schema(self) -> dict[str, Any] | None:
        """The schema of one of `input.items` (the index modes' contracts), else None."""
        items = self.input.get("properties", {}).get("items")
        schema = items.get("items") if isinstance(items, dict) else None
        return schema if isinstance(schema, dict) else None

    def check(self, input: Any, params: Any) -> None:
        """Raise `ValidationFailed` naming the first field of `input`/`params` that breaks
        this contract."""
        _raise_first(self.violations(input, params))

    def check_item(self, item: Any, position: int) -> None:
        """Raise `ValidationFailed` naming the first field of `item`, the run's
        `input.items[position]`, that breaks this contract's item schema."""
        if self._item_validator is None:
            raise ValueError("this mode's input has no items")
        prefix = f"input.items[{position}]"
        found = list(_violations(self._item_validator.iter_errors(item), prefix))
        found.sort(key=lambda v: v.sort_key)
        _raise_first(found)

    def violations(self, input: Any, params: Any) -> list[Violation]:
        """Every violation of this contract, in document order (input first)."""
        found = [
            *_violations(self._input_validator.iter_errors(input), "input"),
            *_violations(self._params_validator.iter_errors(params), "params"),
        ]
        found.sort(key=lambda v: v.sort_key)
        return found


def _raise_first(found: list[Violation]) -> None:
    if found:
        first = found[0]
        raise ValidationFailed(
            first.message,
            field=first.field,
            details={
                "errors": [{"field": v.field, "message": v.message} for v in found][
                    :MAX_REPORTED_ERRORS
                ]
            },
        )


@dataclass(frozen=True)
class Violation:
    field: str
    message: str
    sort_key: tuple[tuple[int, int | str], ...]


def _join(prefix: str, parts: Iterable[str | int]) -> str:
    out = prefix
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _type_name(instance: Any) -> str:
    if instance is None:
        return "null"
    if isinstance(instance, bool):
        return "a boolean"
    if isinstance(instance, int):
        return "an integer"
    if isinstance(instance, float):
        return "a number"
    if isinstance(instance, str):
        return "a string"
    if isinstance(instance, list):
        return "a list"
    return "a JSON object"


def _properties(schema: dict[str, Any]) -> list[str]:
    return list(schema.get("properties", {}))


def _violations(errors: Iterable[SchemaViolation], prefix: str) -> Iterable[Violation]:
    for error in errors:
        path: list[str | int] = list(error.absolute_path)
        yield _describe(error, prefix, path)


def _describe(error: SchemaViolation, prefix: str, path: list[str | int]) -> Violation:
    rule = str(error.validator)
    schema: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    value: Any = error.validator_value
    instance = error.instance
    where = _join(prefix, path)
    custom = schema.get("x-error")

    if "propertyNames" in error.relative_schema_path:
        # The offending key is the instance; name it as a field of the object.
        path = [*path, str(instance)]
        message = custom or f"key {instance!r} is not allowed: {error.message}"
    elif rule == "required" and isinstance(instance, dict):
        missing = next(name for name in value if name not in instance)
        path = [*path, missing]
        accepts = ", ".join(_properties(schema)) or missing
        message = f"required; {where} takes: {accepts}"
    elif rule == "additionalProperties" and isinstance(instance, dict):
        known = set(_properties(schema))
        extra = sorted(name for name in instance if name not in known)
        path = [*path, extra[0]] if extra else path
        message = f"unknown field; {where} accepts: {', '.join(_properties(schema)) or 'nothing'}"
    elif rule == "type":
        allowed = [value] if isinstance(value, str) else list(value)
        wanted = " or ".join(_JSON_TYPES.get(t, t) for t in allowed)
        message = f"must be {wanted}, not {_type_name(instance)}"
    elif rule in ("minLength", "maxLength"):
        bound = "at least" if rule == "minLength" else "at most"
        message = f"must be {bound} {value} character{'s' if value != 1 else ''} long"
    elif rule in ("minItems", "maxItems"):
        bound = "at least" if rule == "minItems" else "at most"
        message = f"must have {bound} {value} item{'s' if value != 1 else ''}"
    elif rule == "minProperties":
        message = custom or f"must have at least {value} field{'s' if value != 1 else ''}"
    elif rule in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
        message = f"must be {op[rule]} {value} (got {instance!r})"
    elif rule == "enum":
        message = custom or f"must be one of: {', '.join(map(str, value))} (got {instance!r})"
    elif rule == "const":
        message = f"must be {value!r}"
    elif rule in _CUSTOM_MESSAGE_RULES and custom:
        message = str(custom)
    else:
        message = error.message
    field = _join(prefix, path)
    # Input before params; a specific rule before a composite one ("unknown field input.image"
    # says more than "send exactly one of ..."); then document order.
    key: tuple[tuple[int, int | str], ...] = (
        (0 if prefix == "input" else 1, 1 if rule in _COMPOSITE_RULES else 0),
        *((0, p) if isinstance(p, int) else (1, p) for p in path),
    )
    return Violation(field=field, message=f"{field}: {message}", sort_key=key)
