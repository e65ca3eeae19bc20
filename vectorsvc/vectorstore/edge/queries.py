"""The Edge query requests: dense, keyword (sparse) and hybrid (both, fused in one query).

A hybrid query is one `QueryRequest`: a dense prefetch and a keyword prefetch, each
restricted by the same filter, fused in the engine by Reciprocal Rank Fusion or by
Distribution-Based Score Fusion.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import qdrant_edge as qe

from vectorsvc.vectorstore.base import Filter, Fusion, SparseVector, Vector
from vectorsvc.vectorstore.edge.filters import to_edge_filter
from vectorsvc.vectorstore.filters import DENSE_VECTOR, SPARSE_VECTOR


def edge_sparse(sparse: SparseVector) -> qe.SparseVector:
    return qe.SparseVector(list(sparse.indices), list(sparse.values))


def idf_params(idf_filter: qe.Filter | None) -> qe.SearchParams | None:
    """IDF over the points `idf_filter` selects (a tenant's own statistics), else None:
    over the whole shard."""
    return None if idf_filter is None else qe.SearchParams(idf=qe.IdfParams(corpus=idf_filter))


def dense_request(
    query: list[float], edge_filter: qe.Filter | None, *, limit: int, offset: int
) -> qe.QueryRequest:
    return qe.QueryRequest(
        limit=limit,
        offset=offset,
        query=qe.Query.Nearest(query, using=DENSE_VECTOR),
        filter=edge_filter,
        with_payload=True,
        with_vector=False,
    )


def keyword_request(
    sparse: SparseVector,
    edge_filter: qe.Filter | None,
    *,
    limit: int,
    idf_filter: qe.Filter | None,
) -> qe.QueryRequest:
    return qe.QueryRequest(
        limit=limit,
        query=qe.Query.Nearest(edge_sparse(sparse), using=SPARSE_VECTOR),
        filter=edge_filter,
        params=idf_params(idf_filter),
        with_payload=True,
        with_vector=False,
    )


def hybrid_request(
    query: list[float],
    sparse: SparseVector,
    edge_filter: qe.Filter | None,
    *,
    limit: int,
    candidates: int,
    rrf_k: int,
    idf_filter: qe.Filter | None,
    fusion: Fusion = "rrf",
) -> qe.QueryRequest:
    # The .pyi types `query` as `Fusion`, not its variants `Rrf` and `Dbsf`.
    fuse: Any = qe.Fusion.Dbsf() if fusion == "dbsf" else qe.Fusion.Rrf(k=rrf_k)
    return qe.QueryRequest(
        limit=limit,
        prefetches=[
            qe.Prefetch(
                limit=candidates,
                query=qe.Query.Nearest(query, using=DENSE_VECTOR),
                filter=edge_filter,
            ),
            qe.Prefetch(
                limit=candidates,
                query=qe.Query.Nearest(edge_sparse(sparse), using=SPARSE_VECTOR),
                filter=edge_filter,
                params=idf_params(idf_filter),
            ),
        ],
        query=fuse,
        filter=edge_filter,
        with_payload=True,
        with_vector=False,
    )


def edge_vector(raw: object) -> Vector | None:
    """A retrieved point's dense vector (Edge: a list, or a dict keyed by vector name)."""
    if isinstance(raw, dict):
        raw = next(iter(raw.values()), None)
    return np.asarray(raw, dtype=np.float32) if isinstance(raw, list) else None


def edge_payload(raw: dict[str, Any] | None) -> dict[str, Any]:
    return dict(raw) if raw else {}


def idf_filter(idf_scope: Filter | None) -> qe.Filter | None:
    if idf_scope is None:
        return None
    return to_edge_filter(idf_scope) or qe.Filter(must=[])  # an empty scope: every point
