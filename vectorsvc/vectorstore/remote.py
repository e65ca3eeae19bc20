"""`VectorStore` on qdrant-client: a Qdrant server/cluster, or local mode (":memory:").

Collections and aliases are Qdrant's own. Every write waits (`wait=True`) so it is durable
and visible when the call returns, matching the Edge backend. Local mode ignores payload
indexes (it warns and carries on), which only costs speed there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from vectorsvc.vectorstore.base import (
    CollectionNotFound,
    CollectionSpec,
    Condition,
    DimensionMismatch,
    Filter,
    Fusion,
    HasIds,
    MatchAny,
    MatchValue,
    PointRecord,
    Range,
    ScoredPoint,
    ScrollPage,
    SparseVector,
    Vector,
    VectorStoreError,
)
from vectorsvc.vectorstore.filters import (
    DENSE_VECTOR,
    SPARSE_VECTOR,
    canonical_id,
    canonical_ids,
    facet_key,
    split_any,
)


def _condition(cond: Condition) -> qm.Condition:
    if isinstance(cond, MatchValue):
        return qm.FieldCondition(key=cond.key, match=qm.MatchValue(value=cond.value))
    if isinstance(cond, MatchAny):
        strings, integers = split_any(cond.values)
        if strings and integers:
            # Mixed kinds: OR of one keyword list and one integer list.
            return qm.Filter(
                should=[
                    qm.FieldCondition(key=cond.key, match=qm.MatchAny(any=strings)),
                    qm.FieldCondition(key=cond.key, match=qm.MatchAny(any=integers)),
                ]
            )
        values: list[str] | list[int] = integers if integers else strings
        return qm.FieldCondition(key=cond.key, match=qm.MatchAny(any=values))
    if isinstance(cond, Range):
        return qm.FieldCondition(
            key=cond.key, range=qm.Range(gt=cond.gt, gte=cond.gte, lt=cond.lt, lte=cond.lte)
        )
    if isinstance(cond, HasIds):
        ids: list[qm.ExtendedPointId] = list(canonical_ids(cond.ids))
        return qm.HasIdCondition(has_id=ids)
    raise TypeError(f"unsupported condition {cond!r}")


def to_qdrant_filter(flt: Filter) -> qm.Filter | None:
    """Our Filter -> `qdrant_client.models.Filter`, or None for "everything"."""
    if not flt.must and not flt.must_not:
        return None
    return qm.Filter(
        must=[_condition(c) for c in flt.must],
        must_not=[_condition(c) for c in flt.must_not] or None,
    )


def _as_list(vector: Vector) -> list[float]:
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1:
        raise VectorStoreError(f"expected a 1-d vector, got shape {array.shape}")
    values: list[float] = array.tolist()
    return values


def _vector(raw: object) -> Vector | None:
    """A retrieved point's dense vector (a list, or a dict keyed by vector name)."""
    if isinstance(raw, dict):
        raw = next(iter(raw.values()), None)
    return np.asarray(raw, dtype=np.float32) if isinstance(raw, list) else None


def _payload(raw: dict[str, Any] | None) -> dict[str, Any]:
    return dict(raw) if raw else {}


def _sparse(sparse: SparseVector) -> qm.SparseVector:
    return qm.SparseVector(indices=list(sparse.indices), values=list(sparse.values))


def _idf_params(idf_scope: Filter | None) -> qm.SearchParams | None:
    """IDF over the points `idf_scope` selects (Qdrant >= 1.19), else over the collection."""
    if idf_scope is None:
        return None
    corpus = to_qdrant_filter(idf_scope) or qm.Filter()
    return qm.SearchParams(idf=qm.IdfCorpusParams(corpus=corpus))


def _scored(points: Sequence[qm.ScoredPoint]) -> list[ScoredPoint]:
    return [
        ScoredPoint(id=str(p.id), score=float(p.score), payload=_payload(p.payload)) for p in points
    ]


def _index_plan(spec: CollectionSpec) -> dict[str, qm.PayloadSchemaType | qm.KeywordIndexParams]:
    """field -> index schema. The tenant key wins if also listed as a keyword field."""
    plan: dict[str, qm.PayloadSchemaType | qm.KeywordIndexParams] = {}
    for field_name in spec.float_fields:
        plan[field_name] = qm.PayloadSchemaType.FLOAT
    for field_name in spec.keyword_fields:
        plan[field_name] = qm.PayloadSchemaType.KEYWORD
    plan[spec.tenant_key] = qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=True)
    return plan


class RemoteVectorStore:
    """qdrant-client backend. Owns `client`: `close()` closes it.

    qdrant-client is thread-safe against a server; a per-collection lock serialises this
    process's writes to one collection so `delete` can report an exact count (writers in
    other processes are out of its reach).
    """

    backend_name = "remote"

    def __init__(self, client: QdrantClient) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._write_locks: dict[str, threading.Lock] = {}
        # name -> whether it holds keyword vectors, asked once: a collection's vectors are
        # fixed at creation, and the service names collections (not aliases) in writes
        # and searches.
        self._sparse: dict[str, bool] = {}

    def search_inline(self, collection: str) -> bool:
        return False  # HTTP or gRPC to the server: always from a worker thread

    @classmethod
    def from_url(
        cls, url: str, api_key: str | None = None, *, timeout: int | None = None
    ) -> RemoteVectorStore:
        return cls(QdrantClient(url=url, api_key=api_key, timeout=timeout))

    @property
    def client(self) -> QdrantClient:
        return self._client

    def warm(self, max_bytes: int | None = None) -> int:
        """Nothing to do: a Qdrant server keeps its own memory."""
        return 0

    def close(self) -> None:
        self._client.close()

    # --- helpers --------------------------------------------------------------------------

    def _write_lock(self, collection: str) -> threading.Lock:
        with self._lock:
            return self._write_locks.setdefault(collection, threading.Lock())

    def _dimension(self, name: str, info: qm.CollectionInfo | None = None) -> int:
        if info is None:
            info = self._client.get_collection(name)
        vectors = info.config.params.vectors
        if isinstance(vectors, dict) and DENSE_VECTOR in vectors:
            return int(vectors[DENSE_VECTOR].size)
        raise VectorStoreError(f"collection {name!r} has no {DENSE_VECTOR!r} dense vector")

    @contextmanager
    def _errors(self, name: str, vector_dims: Sequence[int] = ()) -> Iterator[None]:
        """Map client errors (ValueError in local mode, UnexpectedResponse from a server)
        onto the interface's errors by asking Qdrant what went wrong, only on failure."""
        try:
            yield
        except VectorStoreError:
            raise
        except Exception as exc:
            self._diagnose(name, exc, vector_dims)

    def _diagnose(self, name: str, exc: Exception, vector_dims: Sequence[int]) -> NoReturn:
        try:
            exists = self._client.collection_exists(name)
            dimension = self._dimension(name) if exists and vector_dims else None
        except Exception:
            exists, dimension = True, None  # cannot tell: surface the original error
        if not exists:
            raise CollectionNotFound(name) from exc
        for dim in vector_dims:
            if dimension is not None and dim != dimension:
                raise DimensionMismatch(name, expected=dim, actual=dimension) from exc
        raise exc

    # --- collections and aliases ----------------------------------------------------------

    def ensure_collection(self, spec: CollectionSpec) -> None:
        name = spec.name
        if spec.dimension <= 0:
            raise VectorStoreError(f"dimension must be positive, got {spec.dimension}")
        if not self._client.collection_exists(name):
            try:
                self._client.create_collection(
                    name,
                    vectors_config={
                        DENSE_VECTOR: qm.VectorParams(
                            size=spec.dimension, distance=qm.Distance.COSINE
                        )
                    },
                    # BM25 term weights made by the service; the server applies IDF.
                    sparse_vectors_config=(
                        {SPARSE_VECTOR: qm.SparseVectorParams(modifier=qm.Modifier.IDF)}
                        if spec.sparse
                        else None
                    ),
                )
            except Exception:
                # Lost a creation race to another process: fine if it now exists.
                if not self._client.collection_exists(name):
                    raise
        info = self._client.get_collection(name)
        dimension = self._dimension(name, info)
        if dimension != spec.dimension:
            raise DimensionMismatch(name, expected=spec.dimension, actual=dimension)
        indexed = set(info.payload_schema)
        for field_name, schema in _index_plan(spec).items():
            if field_name not in indexed:
                self._client.create_payload_index(name, field_name, schema, wait=True)

    def collection_exists(self, name: str) -> bool:
        """True for a collection or an alias of one (Qdrant's semantics)."""
        return bool(self._client.collection_exists(name))

    def list_collections(self) -> list[str]:
        return sorted(c.name for c in self._client.get_collections().collections)

    def delete_collection(self, name: str) -> None:
        if any(a.collection_name == name for a in self._client.get_aliases().aliases):
            raise VectorStoreError(f"{name!r} is the target of an alias")
        if self.collection_exists(name):
            self._client.delete_collection(name)

    def set_alias(self, alias: str, collection: str) -> None:
        if collection not in self.list_collections():
            raise CollectionNotFound(collection)
        operations: list[qm.AliasOperations] = []
        if self.resolve_alias(alias) is not None:
            operations.append(
                qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias))
            )
        operations.append(
            qm.CreateAliasOperation(
                create_alias=qm.CreateAlias(collection_name=collection, alias_name=alias)
            )
        )
        # One request: Qdrant applies the delete+create together, so readers never see
        # the alias missing.
        self._client.update_collection_aliases(change_aliases_operations=operations)

    def resolve_alias(self, alias: str) -> str | None:
        for description in self._client.get_aliases().aliases:
            if description.alias_name == alias:
                return description.collection_name
        return None

    # --- points ---------------------------------------------------------------------------

    def upsert(self, collection: str, points: Sequence[PointRecord]) -> None:
        structs: list[qm.PointStruct] = []
        dims: list[int] = []
        if not points:
            return
        with_sparse = any(p.sparse is not None for p in points) and self.has_sparse(collection)
        for point in points:
            if point.vector is None:
                raise VectorStoreError(f"point {point.id} has no vector")
            values = _as_list(point.vector)
            dims.append(len(values))
            vectors: dict[str, list[float] | qm.SparseVector] = {DENSE_VECTOR: values}
            if with_sparse and point.sparse is not None:
                vectors[SPARSE_VECTOR] = _sparse(point.sparse)
            structs.append(
                qm.PointStruct(
                    id=canonical_id(point.id), vector=vectors, payload=dict(point.payload)
                )
            )
        with self._write_lock(collection), self._errors(collection, sorted(set(dims))):
            self._client.upsert(collection, points=structs, wait=True)

    def search(
        self,
        collection: str,
        vector: Vector,
        *,
        filter: Filter,
        limit: int,
        offset: int = 0,
    ) -> list[ScoredPoint]:
        query = _as_list(vector)
        with self._errors(collection, [len(query)]):
            response = self._client.query_points(
                collection,
                query=query,
                using=DENSE_VECTOR,
                query_filter=to_qdrant_filter(filter),
                limit=limit,
                offset=offset,
                with_payload=True,
                with_vectors=False,
            )
        return _scored(response.points)

    def has_sparse(self, collection: str) -> bool:
        known = self._sparse.get(collection)
        if known is not None:
            return known
        with self._errors(collection):
            info = self._client.get_collection(collection)
        sparse = info.config.params.sparse_vectors or {}
        found = SPARSE_VECTOR in sparse
        self._sparse[collection] = found
        return found

    def _require_sparse(self, collection: str) -> None:
        if not self.has_sparse(collection):
            raise VectorStoreError(f"collection {collection!r} holds no keyword vectors")

    def search_keyword(
        self,
        collection: str,
        sparse: SparseVector,
        *,
        filter: Filter,
        limit: int,
        idf_scope: Filter | None = None,
    ) -> list[ScoredPoint]:
        self._require_sparse(collection)
        with self._errors(collection):
            response = self._client.query_points(
                collection,
                query=_sparse(sparse),
                using=SPARSE_VECTOR,
                query_filter=to_qdrant_filter(filter),
                search_params=_idf_params(idf_scope),
                limit=limit,
                with_payload=True,
                with_vectors=False,
            )
        return _scored(response.points)

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
        self._require_sparse(collection)
        fuse: qm.Query = (
            qm.FusionQuery(fusion=qm.Fusion.DBSF)
            if fusion == "dbsf"
            else qm.RrfQuery(rrf=qm.Rrf(k=rrf_k))
        )
        query = _as_list(vector)
        qfilter = to_qdrant_filter(filter)
        candidates = max(candidates, limit)
        with self._errors(collection, [len(query)]):
            response = self._client.query_points(
                collection,
                prefetch=[
                    qm.Prefetch(query=query, using=DENSE_VECTOR, filter=qfilter, limit=candidates),
                    qm.Prefetch(
                        query=_sparse(sparse),
                        using=SPARSE_VECTOR,
                        filter=qfilter,
                        params=_idf_params(idf_scope),
                        limit=candidates,
                    ),
                ],
                query=fuse,
                query_filter=qfilter,
                limit=limit,
                with_payload=True,
                with_vectors=False,
            )
        return _scored(response.points)

    def retrieve(
        self, collection: str, ids: Sequence[str], *, with_vectors: bool = False
    ) -> list[PointRecord]:
        wanted = canonical_ids(ids)
        if not wanted:
            return []
        with self._errors(collection):
            records = self._client.retrieve(
                collection, ids=list(wanted), with_payload=True, with_vectors=with_vectors
            )
        by_id = {str(r.id): r for r in records}
        # Request order, duplicates once, missing left out: same as the Edge backend.
        return [
            PointRecord(
                id=i,
                payload=_payload(by_id[i].payload),
                vector=_vector(by_id[i].vector) if with_vectors else None,
            )
            for i in dict.fromkeys(wanted)
            if i in by_id
        ]

    def count(self, collection: str, *, filter: Filter) -> int:
        with self._errors(collection):
            result = self._client.count(
                collection, count_filter=to_qdrant_filter(filter), exact=True
            )
        return int(result.count)

    def scroll(
        self,
        collection: str,
        *,
        filter: Filter,
        limit: int,
        offset: str | None = None,
    ) -> ScrollPage:
        with self._errors(collection):
            records, next_offset = self._client.scroll(
                collection,
                scroll_filter=to_qdrant_filter(filter),
                limit=limit,
                offset=canonical_id(offset) if offset is not None else None,
                with_payload=True,
                with_vectors=False,
            )
        return ScrollPage(
            points=[PointRecord(id=str(r.id), payload=_payload(r.payload)) for r in records],
            next_offset=str(next_offset) if next_offset is not None else None,
        )

    def delete(self, collection: str, *, filter: Filter) -> int:
        qfilter = to_qdrant_filter(filter)
        # Count first, then delete, both under this process's write lock for the collection.
        with self._write_lock(collection), self._errors(collection):
            removed = int(self._client.count(collection, count_filter=qfilter, exact=True).count)
            if removed:
                self._client.delete(
                    collection,
                    points_selector=qm.FilterSelector(filter=qfilter or qm.Filter()),
                    wait=True,
                )
        return removed

    def facet(self, collection: str, key: str, *, filter: Filter, limit: int) -> dict[str, int]:
        with self._errors(collection):
            response = self._client.facet(
                collection, key, facet_filter=to_qdrant_filter(filter), limit=limit, exact=True
            )
        return {facet_key(hit.value): int(hit.count) for hit in response.hits}
