"""A point's keyword vector: BM25 term weights of its own text, made by the service.

qdrant-edge-py's `Bm25` hashes tokens exactly as a Qdrant server's `qdrant/bm25` does
(English tokenizer, stopwords and stemmer, k=1.2, b=0.75, avg_len=256: the defaults of
both), so the Edge and server backends store the same vectors. The weights carry term
frequency and length normalisation only; the collection's sparse vector has the IDF
modifier, so the engine applies IDF (over the whole collection: see
docs/performance.md, "Hybrid search") when it scores a query.

Only text-only models get keyword vectors (`has_keywords`): an image has no text, and a
text-and-image model (CLIP) mixes items that have words with items that have none, where
BM25 would rank only the texts.
"""

from __future__ import annotations

from functools import cache

import qdrant_edge as qe

from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.vectorstore.base import SparseVector


def has_keywords(model: ModelSpec) -> bool:
    """Whether `model`'s collections hold keyword vectors beside the dense ones."""
    return list(model.modalities) == ["text"]


@cache
def _bm25() -> qe.Bm25:
    # Stateless and thread-safe: one for the process.
    return qe.Bm25(qe.Bm25Config())


def _sparse(vector: qe.SparseVector) -> SparseVector:
    return SparseVector(indices=tuple(vector.indices), values=tuple(vector.values))


def document_vector(text: str) -> SparseVector:
    """The keyword vector stored with a point whose text is `text`."""
    return _sparse(_bm25().embed_document(text))


def query_vector(text: str) -> SparseVector:
    """The keyword vector of a query: weight 1 for each distinct term (empty when the text
    holds only stopwords or punctuation)."""
    return _sparse(_bm25().embed_query(text))
