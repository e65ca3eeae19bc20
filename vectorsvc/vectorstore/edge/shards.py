"""How a collection's Edge shard is configured: its vectors, no graph, and payload indexes.

Every search is exact: the HNSW graph is switched off (m=0, payload_m=0), and a scope is
found through the tenant keyword index, so a search reads only its scope's vectors.
Compacted segments keep vectors, payloads and ids on disk, paged in on demand
(`Memory.Cold`); float16 vectors (VECTORSVC_VECTOR_DATATYPE) halve vector memory.
"""

from __future__ import annotations

from typing import Any

import qdrant_edge as qe

from vectorsvc.vectorstore.base import CollectionSpec
from vectorsvc.vectorstore.edge.layout import DATATYPE_KEY
from vectorsvc.vectorstore.filters import DENSE_VECTOR, SPARSE_VECTOR


def edge_config(spec: CollectionSpec, max_search_threads: int | None) -> qe.EdgeConfig:
    """What Edge is told when a shard is created or loaded: the vectors, no graph, memory."""
    # Edge needs the vectors declared on create AND on load (EdgeConfig() without
    # vectors is rejected); on load it also validates them against the segments.
    # No graph (m=0): every search is exact, and optimize() only compacts. Compacted
    # segments keep vectors, payloads and ids on disk, paged in on demand (Cold):
    # Cached vectors made the service far larger (docs/performance.md); the price is
    # a page fault per vector page on a scope's first search, until warm() has read
    # the files into the page cache.
    half = spec.extra.get(DATATYPE_KEY) == "float16"
    # The keyword vector: BM25 term weights made by the service, IDF applied by the engine
    # at query time (over the whole shard). Its inverted index is small (a few terms per
    # point) and paged in on demand like the rest.
    sparse = (
        {SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}
        if spec.sparse
        else None
    )
    return qe.EdgeConfig(
        vectors={
            DENSE_VECTOR: qe.EdgeVectorParams(
                size=spec.dimension,
                distance=qe.Distance.Cosine,
                memory=qe.Memory.Cold,
                datatype=qe.VectorStorageDatatype.Float16 if half else None,
            )
        },
        sparse_vectors=sparse,
        hnsw_config=qe.HnswIndexConfig(
            m=0, ef_construct=100, full_scan_threshold=10_000, payload_m=0
        ),
        payload_memory=qe.Memory.Cold,
        id_tracker_memory=qe.Memory.Cold,
        max_search_threads=max_search_threads,
    )


def index_plan(spec: CollectionSpec) -> dict[str, qe.KeywordIndexParams | qe.FloatIndexParams]:
    """field -> Edge index params. The tenant key wins if also listed as a keyword field."""
    plan: dict[str, qe.KeywordIndexParams | qe.FloatIndexParams] = {}
    for field_name in spec.float_fields:
        plan[field_name] = qe.FloatIndexParams()
    # Keyword indexes on disk (mmap'd, in the page cache that warm() fills): in RAM they
    # held far more memory, and searches were no faster (docs/performance.md,
    # "Keyword indexes on disk").
    for field_name in spec.keyword_fields:
        plan[field_name] = qe.KeywordIndexParams(on_disk=True)
    plan[spec.tenant_key] = qe.KeywordIndexParams(is_tenant=True, on_disk=True)
    return plan


def same_index(have: Any, want: qe.KeywordIndexParams | qe.FloatIndexParams) -> bool:
    """Whether an existing index (`ShardInfo.payload_schema` entry) has the planned params."""
    params = have.params
    if type(params) is not type(want):
        return False
    return all(
        bool(getattr(params, attr, None)) == bool(getattr(want, attr, None))
        for attr in ("is_tenant", "on_disk")
    )


def add_indexes(shard: qe.EdgeShard, spec: CollectionSpec) -> None:
    """Create the planned payload indexes the shard does not have yet."""
    indexed = set(shard.info().payload_schema)
    for field_name, params in index_plan(spec).items():
        if field_name not in indexed:
            shard.update(qe.UpdateOperation.create_field_index(field_name, params))
