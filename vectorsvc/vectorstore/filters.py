"""Backend-neutral helpers shared by the Edge and remote translations.

Each backend has its own filter model classes, so the final translation lives in each
backend module; what is common (id canonicalisation, splitting mixed `MatchAny` values,
vector checks, facet value keys) lives here so both backends behave identically.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import numpy as np

from vectorsvc.vectorstore.base import DimensionMismatch, Vector

# The one dense vector every collection holds. Named (not the default "") so a later
# sparse/hybrid vector can be added next to it without renaming anything.
DENSE_VECTOR = "dense"
# The keyword (BM25) sparse vector beside it, in collections created with one.
SPARSE_VECTOR = "bm25"


def canonical_id(point_id: str) -> str:
    """Canonical lowercase hyphenated UUID string; Qdrant returns ids in this form, so
    normalising on the way in makes ids round-trip unchanged. Raises ValueError."""
    return str(uuid.UUID(point_id))


def canonical_ids(point_ids: Iterable[str]) -> list[str]:
    return [canonical_id(p) for p in point_ids]


def split_any(values: Iterable[str | int]) -> tuple[list[str], list[int]]:
    """Qdrant's MatchAny takes either keywords or integers, never both in one list."""
    strings: list[str] = []
    integers: list[int] = []
    for value in values:
        if isinstance(value, str):
            strings.append(value)
        else:
            integers.append(int(value))
    return strings, integers


def dense_list(collection: str, dimension: int, vector: Vector) -> list[float]:
    """Validate shape up front so both backends raise the same `DimensionMismatch`."""
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1 or array.shape[0] != dimension:
        actual = int(array.shape[-1]) if array.ndim >= 1 else 0
        raise DimensionMismatch(collection, expected=actual, actual=dimension)
    values: list[float] = array.tolist()
    return values


def facet_key(value: object) -> str:
    """Facet values come back as str/int/bool; the interface reports them as strings
    (JSON spelling for booleans so both backends agree)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
