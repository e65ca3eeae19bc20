"""CLIP plumbing on RANDOM weights (the real ones are not on PyPI): shapes, dtypes, norms,
determinism and error paths. These tests say nothing about relevance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from embedders.base import Modality, WeightsUnavailable
from embedders.clip import CLIP_HUB_ID, ClipConfig, ClipEmbedder
from embedders.factory import create_embedder


@pytest.fixture(scope="module")
def random_clip(random_clip_folder: Path) -> ClipEmbedder:
    # Loaded the way the service loads it: <models_dir>/clip-vit-b-32.
    embedder = create_embedder(
        "clip", models_dir=str(random_clip_folder.parent), allow_download=False, batch_size=4
    )
    assert isinstance(embedder, ClipEmbedder)
    return embedder


def test_clip_plumbing_random_weights_loads_from_models_dir(
    random_clip: ClipEmbedder, random_clip_folder: Path
) -> None:
    assert random_clip.name == "clip-vit-b-32"
    assert random_clip.dimension == 512
    assert random_clip.modalities == frozenset({Modality.TEXT, Modality.IMAGE})
    assert str(random_clip_folder) in str(random_clip.describe()["source"])


def test_clip_plumbing_random_weights_texts_are_normalised_and_deterministic(
    random_clip: ClipEmbedder,
) -> None:
    texts = ["a photo of a cat", "a cup of coffee", "Ünïcode & punctuation!", "x " * 200]
    vectors = random_clip.embed_texts(texts)  # the last one is past 77 tokens: truncated
    assert vectors.shape == (4, 512)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(random_clip.embed_texts(texts), vectors, atol=1e-6)
    np.testing.assert_allclose(random_clip.embed_queries(texts[:1])[0], vectors[0], atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


def test_clip_plumbing_random_weights_images_are_normalised_and_deterministic(
    random_clip: ClipEmbedder, photos: dict[str, Image.Image]
) -> None:
    images = [
        photos["chelsea"],
        photos["coffee"],
        photos["astronaut"].convert("L"),
        Image.new("RGBA", (40, 90), (10, 200, 30, 128)),
        photos["rocket"],  # 5 images with batch_size 4: two batches
    ]
    vectors = random_clip.embed_images(images)
    assert vectors.shape == (5, 512)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(random_clip.embed_images(images), vectors, atol=1e-6)
    assert not np.allclose(vectors[0], vectors[1])


def test_clip_plumbing_random_weights_texts_and_images_share_one_space(
    random_clip: ClipEmbedder, photos: dict[str, Image.Image]
) -> None:
    text = random_clip.embed_texts(["a cat"])
    image = random_clip.embed_images([photos["chelsea"]])
    assert text.shape == image.shape == (1, 512)
    assert -1.0 <= float((text @ image.T)[0, 0]) <= 1.0


def test_clip_plumbing_random_weights_refuses_wrong_modalities(random_clip: ClipEmbedder) -> None:
    with pytest.raises(TypeError, match="not an image"):
        random_clip.embed_images(["a cat"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not str"):
        random_clip.embed_texts([Image.new("RGB", (4, 4))])  # type: ignore[list-item]
    assert random_clip.embed_texts([]).shape == (0, 512)
    assert random_clip.embed_images([]).shape == (0, 512)


def test_clip_absent_weights_raise_weights_unavailable_with_how_to_install(
    tmp_path: Path,
) -> None:
    with pytest.raises(WeightsUnavailable) as caught:
        create_embedder("clip", models_dir=str(tmp_path), allow_download=False)
    error = caught.value
    assert error.embedder == "clip-vit-b-32"
    assert "allow_download=False" in error.reason
    assert CLIP_HUB_ID in error.how_to_install
    assert str(tmp_path / "clip-vit-b-32") in error.how_to_install


def test_clip_absent_weights_with_hub_offline_fail_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="offline"):
        ClipEmbedder(ClipConfig(models_dir=str(tmp_path)))


def test_clip_unreachable_hub_becomes_weights_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download that fails (no network) is reported, not raised as a bare OSError."""
    import sentence_transformers

    calls: list[bool] = []

    def unreachable(model: str, **kwargs: Any) -> None:
        calls.append(bool(kwargs["local_files_only"]))
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {model}")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("embedders.sentence_transformer.hub_offline", lambda: False)
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", unreachable)
    with pytest.raises(WeightsUnavailable, match="could not download") as caught:
        create_embedder("clip", models_dir=str(tmp_path))
    assert calls == [True, False]  # the hub cache first, then the download
    assert "hf download" in caught.value.how_to_install


def test_clip_broken_folder_is_weights_unavailable(tmp_path: Path) -> None:
    (tmp_path / "clip-vit-b-32").mkdir()
    with pytest.raises(WeightsUnavailable, match="does not hold a loadable model"):
        create_embedder("clip", models_dir=str(tmp_path))


def test_clip_onednn_linear_layers_give_the_mkl_vectors(
    random_clip: ClipEmbedder, random_clip_folder: Path, photos: dict[str, Image.Image]
) -> None:
    """Random weights, but real arithmetic: both towers agree with MKL's Linear layers."""
    from torch import nn

    from embedders._onednn import OneDnnLinear, onednn_linear_available

    if not onednn_linear_available():
        pytest.skip("this torch build has no oneDNN linear op")
    assert random_clip.describe()["linear_kernels"] == "onednn"
    mkl = create_embedder(
        "clip", models_dir=str(random_clip_folder.parent), allow_download=False, onednn=False
    )
    assert mkl.describe()["linear_kernels"] == "mkl"
    assert isinstance(mkl, ClipEmbedder)
    assert not any(isinstance(m, OneDnnLinear) for m in mkl._model.modules())
    assert any(type(m) is nn.Linear for m in mkl._model.modules())
    texts = ["a photo of a cat", "a cup of coffee", "x " * 200]
    images = [photos["chelsea"], photos["coffee"], photos["rocket"]]
    for got, want in (
        (random_clip.embed_texts(texts), mkl.embed_texts(texts)),
        (random_clip.embed_images(images), mkl.embed_images(images)),
    ):
        assert float(np.min(np.sum(got * want, axis=1))) >= 0.99999
