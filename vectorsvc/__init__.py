"""vectorsvc: a vector index and search service for scoped knowledge bases."""

__version__ = "0.1.0"
