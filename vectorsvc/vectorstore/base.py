"""The vector-store interface: one protocol, two Qdrant backends.

The service speaks only these types. `EdgeVectorStore` (Qdrant Edge, in-process) and
`RemoteVectorStore` (qdrant-client against a server or cluster) translate them. Names of
collections, aliases and tenant keys are never built here: they arrive from
`vectorsvc.points.namespaces`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
Payload = dict[str, Any]
# How a hybrid query fuses its dense and keyword lists (`VectorStore.search_hybrid`).
Fusion = Literal["rrf", "dbsf"]
FUSIONS: tuple[Fusion, ...] = ("rrf", "dbsf")


# --- Filters: a small backend-neutral AST ------------------------------------------------
# Keys are dotted payload paths ("metadata.lang", "_tenant"). Every condition in
# `Filter.must` must hold (logical AND).


@dataclass(frozen=True)
class MatchValue:
    key: str
    value: str | int | bool


@dataclass(frozen=True)
class MatchAny:
    key: str
    values: tuple[str | int, ...]


@dataclass(frozen=True)
class Range:
    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class HasIds:
    """Restrict to point ids (UUID strings)."""

    ids: tuple[str, ...]


Condition = MatchValue | MatchAny | Range | HasIds


@dataclass(frozen=True)
class Filter:
    must: tuple[Condition, ...] = ()
    must_not: tuple[Condition, ...] = ()  # none of these may hold

    def and_(self, *conditions: Condition) -> Filter:
        return Filter(must=self.must + tuple(conditions), must_not=self.must_not)

    def and_not(self, *conditions: Condition) -> Filter:
        return Filter(must=self.must, must_not=self.must_not + tuple(conditions))


# --- Points --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SparseVector:
    """A sparse vector: term ids (hashed tokens) and their weights, in step."""

    indices: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class PointRecord:
    """A point to write or a point read back. `id` is a UUID string. `sparse` is its
    keyword (BM25) vector: written only to a collection that declares one, else dropped."""

    id: str
    payload: Payload
    vector: Vector | None = None
    sparse: SparseVector | None = None


@dataclass(frozen=True)
class ScoredPoint:
    id: str
    score: float
    payload: Payload


@dataclass(frozen=True)
class ScrollPage:
    points: list[PointRecord]
    next_offset: str | None


@dataclass(frozen=True)
class CollectionSpec:
    """What a collection holds: one dense vector per point, cosine distance, and, when
    `sparse`, a keyword vector beside it (BM25 term weights; the engine applies IDF).

    `tenant_key` is the payload field indexed as a keyword with `is_tenant=True`;
    `keyword_fields` get plain keyword indexes, `datetime_fields`/`float_fields` likewise.
    `sparse` is fixed when the collection is created: an older collection keeps none.
    """

    name: str
    dimension: int
    tenant_key: str
    keyword_fields: tuple[str, ...] = ()
    float_fields: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    sparse: bool = False


@runtime_checkable
class VectorStore(Protocol):
    """Blocking interface; the service calls it from worker threads, and on the event loop
    only a `search` that `search_inline` allows (the embedded engine's, once its shard is open).

    Implementations must be safe to call from several threads at once.
    """

    backend_name: str

    def search_inline(self, collection: str) -> bool:
        """Whether a `search` of `collection` may run on the event loop: an in-process call
        that neither waits on I/O nor on a lock, and is short (it holds the GIL anyway)."""
        ...

    def ensure_collection(self, spec: CollectionSpec) -> None:
        """Create the collection (and its payload indexes) if absent. Idempotent.

        Raises `DimensionMismatch` if it exists with another dimension.
        """

    def collection_exists(self, name: str) -> bool: ...

    def list_collections(self) -> list[str]: ...

    def delete_collection(self, name: str) -> None:
        """Drop a collection and its points (a no-op if absent); never one an alias names."""

    def set_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at `collection` (create or switch atomically)."""

    def resolve_alias(self, alias: str) -> str | None: ...

    def upsert(self, collection: str, points: Sequence[PointRecord]) -> None:
        """Insert or replace points by id. Durable when it returns (WAL written)."""

    def search(
        self,
        collection: str,
        vector: Vector,
        *,
        filter: Filter,
        limit: int,
        offset: int = 0,
    ) -> list[ScoredPoint]:
        """Nearest points by cosine similarity, best first, restricted by `filter`."""

    def has_sparse(self, collection: str) -> bool:
        """Whether the collection (or the one an alias names) holds keyword vectors."""
        ...

    def search_keyword(
        self,
        collection: str,
        sparse: SparseVector,
        *,
        filter: Filter,
        limit: int,
        idf_scope: Filter | None = None,
    ) -> list[ScoredPoint]:
        """Points by BM25 score (the dot product of `sparse` with the stored keyword
        vectors, each term weighted by its IDF over the points `idf_scope` selects, the
        whole collection if None), best first; points sharing no term are left out. The
        collection must hold keyword vectors."""
        ...

    def search_hybrid(
        self,
        collection: str,
        vector: Vector,
        sparse: SparseVector,
        *,
        filter: Filter,
        limit: int,
        candidates: int,
        rrf_k: int,
        idf_scope: Filter | None = None,
        fusion: Fusion = "rrf",
    ) -> list[ScoredPoint]:
        """One query: the `candidates` best dense hits and the `candidates` best keyword
        hits (both restricted by `filter`; keyword IDF as in `search_keyword`), fused in
        the engine. "rrf", Reciprocal Rank Fusion: a point's score is the sum over both
        lists of 1 / (rrf_k + rank), rank counted from 0. "dbsf", Distribution-Based Score
        Fusion (`rrf_k` unused): each list's scores are mapped by (score - (mean - 3 sd)) /
        (6 sd), sd the sample standard deviation (a list of one hit, or of equal scores,
        gives 0.5), and summed over both lists."""
        ...

    def retrieve(
        self, collection: str, ids: Sequence[str], *, with_vectors: bool = False
    ) -> list[PointRecord]:
        """Points by id (payload, and vectors if `with_vectors`); missing ids are left out."""

    def count(self, collection: str, *, filter: Filter) -> int:
        """Exact count of points matching `filter`."""

    def scroll(
        self,
        collection: str,
        *,
        filter: Filter,
        limit: int,
        offset: str | None = None,
    ) -> ScrollPage:
        """Points matching `filter` in id order, `limit` at a time; `offset` is the
        `next_offset` of the previous page."""

    def delete(self, collection: str, *, filter: Filter) -> int:
        """Delete every point matching `filter`; returns how many were removed."""

    def facet(self, collection: str, key: str, *, filter: Filter, limit: int) -> dict[str, int]:
        """Counts per distinct value of keyword field `key` among points matching `filter`."""

    def warm(self, max_bytes: int | None = None) -> int:
        """Bring the stored collections into memory (the page cache), so that searches do
        not wait on the disk; returns the bytes read (at most about `max_bytes`). Blocking,
        safe beside searches and writes, and cheap to repeat. May do nothing (0)."""

    def close(self) -> None: ...


class VectorStoreError(Exception):
    """Base for store errors the service maps to its own error envelope."""


class CollectionNotFound(VectorStoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"collection {name!r} does not exist")
        self.name = name


class DimensionMismatch(VectorStoreError):
    def __init__(self, name: str, expected: int, actual: int) -> None:
        super().__init__(f"collection {name!r} holds {actual}-d vectors, not {expected}-d")
        self.name = name
        self.expected = expected
        self.actual = actual
