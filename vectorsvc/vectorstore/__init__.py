"""Vector stores: the backend-neutral interface plus a factory for its two backends."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from vectorsvc.vectorstore.base import (
    FUSIONS,
    CollectionNotFound,
    CollectionSpec,
    Condition,
    DimensionMismatch,
    Filter,
    Fusion,
    HasIds,
    MatchAny,
    MatchValue,
    Payload,
    PointRecord,
    Range,
    ScoredPoint,
    ScrollPage,
    SparseVector,
    Vector,
    VectorStore,
    VectorStoreError,
)

if TYPE_CHECKING:
    from vectorsvc.config import Settings

__all__ = [
    "FUSIONS",
    "CollectionNotFound",
    "CollectionSpec",
    "Condition",
    "DimensionMismatch",
    "Filter",
    "Fusion",
    "HasIds",
    "MatchAny",
    "MatchValue",
    "Payload",
    "PointRecord",
    "Range",
    "ScoredPoint",
    "ScrollPage",
    "SparseVector",
    "Vector",
    "VectorStore",
    "VectorStoreError",
    "open_configured_store",
    "open_vector_store",
]


def open_vector_store(
    *,
    data_dir: Path,
    qdrant_url: str | None,
    qdrant_api_key: str | None,
    vector_datatype: Literal["float32", "float16"] = "float32",
    edge_search_threads: int = 0,
) -> VectorStore:
    """Edge (in-process, rooted at `data_dir`) when no URL is configured, else a remote
    Qdrant. Backends are imported here so the unused one's library is never loaded."""
    if not qdrant_url:  # None or "" (an unset env var) both mean "no server"
        from vectorsvc.vectorstore.edge import EdgeVectorStore

        return EdgeVectorStore(
            Path(data_dir),
            vector_datatype=vector_datatype,
            max_search_threads=edge_search_threads or None,  # 0: Edge's default
        )
    from vectorsvc.vectorstore.remote import RemoteVectorStore

    return RemoteVectorStore.from_url(qdrant_url, api_key=qdrant_api_key)


def open_configured_store(settings: Settings) -> VectorStore:
    """The store the service opens with `settings` (the bench opens the same)."""
    return open_vector_store(
        data_dir=settings.vectors_dir,
        qdrant_url=settings.qdrant_url,
        qdrant_api_key=settings.qdrant_api_key,
        vector_datatype=settings.vector_datatype,
        edge_search_threads=settings.edge_search_threads,
    )
