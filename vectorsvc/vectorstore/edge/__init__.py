"""The Qdrant Edge backend: in-process shards, no server (see `store`)."""

from vectorsvc.vectorstore.edge.filters import to_edge_filter
from vectorsvc.vectorstore.edge.store import EdgeVectorStore, VectorDatatype

__all__ = ["EdgeVectorStore", "VectorDatatype", "to_edge_filter"]
