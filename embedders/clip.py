"""CLIP ViT-B/32 through sentence-transformers `clip-ViT-B-32`: texts and images in one 512-d
space (cosine).

Weights, first match wins: `model` in the config (a folder, or else a hub id); the folder
`<models_dir>/clip-vit-b-32`; the hub id `sentence-transformers/clip-ViT-B-32` (hub cache first,
then a download when allowed). Nothing ships on PyPI, so where none of these works the embedder
raises `WeightsUnavailable` saying how to get them.

`build_random_clip_folder` writes a randomly initialised CLIP with the real ViT-B/32
configuration in the hub repo's folder layout: it exercises every step of loading and
embedding offline, and says nothing about relevance.

On CPU, `onednn=True` (the default) runs both towers' Linear layers through oneDNN rather than
MKL (see `embedders._onednn`); `describe()["linear_kernels"]` says which.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedders.base import (
    Embedder,
    Embeddings,
    MissingDependency,
    Modality,
    WeightsUnavailable,
    l2_normalise,
)
from embedders.sentence_transformer import load_sentence_transformer

if TYPE_CHECKING:
    from os import PathLike

    from PIL.Image import Image

CLIP_NAME = "clip-vit-b-32"
CLIP_HUB_ID = "sentence-transformers/clip-ViT-B-32"
CLIP_DIMENSION = 512


@dataclass(frozen=True)
class ClipConfig:
    """Config keys of `EmbedderKind.CLIP` (all optional)."""

    model: str | None = None  # local folder or hub id; None: models_dir, then the hub
    models_dir: str | None = None  # looked up as <models_dir>/clip-vit-b-32
    device: str = "cpu"
    batch_size: int = 32
    allow_download: bool = True  # may fetch from the hub when no local copy exists
    # On CPU: Linear layers through oneDNN (checked against MKL once at load, MKL kept if they
    # differ or the op is missing).
    onednn: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.device:
            raise ValueError("device must be a torch device string such as 'cpu' or 'cuda:0'")


def how_to_install(models_dir: str | None) -> str:
    target = f"{models_dir}/{CLIP_NAME}" if models_dir else f"<models_dir>/{CLIP_NAME}"
    return (
        f"Download {CLIP_HUB_ID} into {target} "
        f"(e.g. `hf download {CLIP_HUB_ID} --local-dir {target}`), or allow hub downloads"
    )


def check_weights(config: ClipConfig) -> None:
    """Raise `WeightsUnavailable` unless the weights are on disk or may be downloaded.

    Cheap (file checks only), so a model list can say whether CLIP is usable before anyone
    pays for loading it.
    """
    if config.model is not None and Path(config.model).is_dir():
        return
    local = Path(config.models_dir) / CLIP_NAME if config.models_dir else None
    if config.model is None and local is not None and local.is_dir():
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(config.model or CLIP_HUB_ID, "config.json")
    except Exception:  # noqa: BLE001 - a broken cache only means "not cached"
        cached = None
    if isinstance(cached, str) or config.allow_download:
        return
    where = f"{config.models_dir}/{CLIP_NAME}" if config.models_dir else "no models_dir"
    raise WeightsUnavailable(
        CLIP_NAME,
        f"the CLIP weights are not installed ({where} is absent, the hub cache has no copy, "
        "and downloads are off)",
        how_to_install(config.models_dir),
    )


class ClipEmbedder(Embedder):
    """CLIP ViT-B/32: texts and PIL images to float32, L2-normalised, shape (n, 512)."""

    name = CLIP_NAME
    dimension = CLIP_DIMENSION
    modalities = frozenset({Modality.TEXT, Modality.IMAGE})

    def __init__(self, config: ClipConfig | None = None) -> None:
        self.config = config or ClipConfig()
        model = self.config.model
        if model is None:
            local = Path(self.config.models_dir or "") / CLIP_NAME
            if self.config.models_dir is not None and local.is_dir():
                model = str(local)
            else:
                model = CLIP_HUB_ID
        self._model, self.source = load_sentence_transformer(
            self.name,
            model,
            device=self.config.device,
            allow_download=self.config.allow_download,
            how_to_install=how_to_install(self.config.models_dir),
        )
        from embedders._onednn import linear_kernels, use_onednn_linear  # imports torch

        # One text and one image through both towers; the first call also settles the
        # tokenizer's truncation/padding before any concurrent call could race it.
        reference = self._probe()
        if self.config.onednn:
            use_onednn_linear(self._model, self._probe, reference=reference, name=self.name)
        self.linear_kernels = linear_kernels(self._model)

    def _probe(self) -> Any:
        from PIL import Image as PILImage

        image = PILImage.linear_gradient("L").convert("RGB")
        texts = self._model.encode(
            ["a photo of a dog"], show_progress_bar=False, convert_to_numpy=True
        )
        images = self._model.encode([image], show_progress_bar=False, convert_to_numpy=True)
        return np.concatenate([texts, images])

    def embed_texts(self, texts: Sequence[str]) -> Embeddings:
        if isinstance(texts, str):
            raise TypeError(f"{self.name}: pass a sequence of strings, not one string")
        items: list[Any] = list(texts)
        for index, item in enumerate(items):
            # sentence-transformers would embed a non-string as another modality; refuse it.
            if not isinstance(item, str):
                raise TypeError(f"{self.name}: input {index} is {type(item).__name__}, not str")
        return self._encode(items)

    def embed_images(self, images: Sequence[Image]) -> Embeddings:
        from PIL.Image import Image as PILImage

        items: list[Any] = []
        for index, image in enumerate(images):
            if not isinstance(image, PILImage):
                raise TypeError(
                    f"{self.name}: input {index} is {type(image).__name__}, not an image"
                )
            # The processor converts too, but palette/alpha images are clearer done here.
            items.append(image if image.mode == "RGB" else image.convert("RGB"))
        return self._encode(items)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": "clip",
            "source": self.source,
            "dimension": self.dimension,
            "device": self.config.device,
            "batch_size": self.config.batch_size,
            "linear_kernels": self.linear_kernels,
        }

    def _encode(self, items: list[Any]) -> Embeddings:
        if not items:
            return np.zeros((0, self.dimension), dtype=np.float32)
        raw = self._model.encode(
            items,
            batch_size=self.config.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        # CLIP's projections are not unit length; the contract is.
        vectors = l2_normalise(raw)
        if vectors.shape != (len(items), self.dimension):
            raise RuntimeError(
                f"{self.name}: model returned shape {vectors.shape}, "
                f"expected {(len(items), self.dimension)}"
            )
        return vectors


# ViT-B/32 as published in openai/clip-vit-base-patch32 (and so sentence-transformers'
# clip-ViT-B-32): only the weights are random.
_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}
_VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 32,
    "num_channels": 3,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
_PROJECTION_DIM = 512
_LOGIT_SCALE_INIT = 2.6592
_OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _bytes_to_unicode() -> list[str]:
    """CLIP's (and GPT-2's) byte-level alphabet: one printable character per byte, in order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    # Listed in the order of `printable` (as the original dict's values), not by byte value.
    return [chr(code) for code in codes]


def _byte_level_vocab() -> dict[str, int]:
    """The first 512 entries of CLIP's BPE vocab plus its two special tokens at their real ids.

    CLIP's vocab starts with the 256 byte characters, then the same with the end-of-word mark
    "</w>", then the merged tokens, and ends with <|startoftext|>=49406, <|endoftext|>=49407.
    Without the merges every word splits into characters; that is enough for random weights,
    and needs no download (no installed package ships CLIP's vocab).
    """
    alphabet = _bytes_to_unicode()
    vocab = {char: index for index, char in enumerate(alphabet)}
    vocab.update({char + "</w>": 256 + index for index, char in enumerate(alphabet)})
    vocab["<|startoftext|>"] = _TEXT_CONFIG["bos_token_id"]
    vocab["<|endoftext|>"] = _TEXT_CONFIG["eos_token_id"]
    return vocab


def build_random_clip_folder(path: str | PathLike[str], *, seed: int = 0) -> Path:
    """Write a randomly initialised CLIP ViT-B/32 that `SentenceTransformer(path)` loads.

    The layout is the hub repo's (`modules.json` naming the `CLIPModel` module in
    `0_CLIPModel/`, with the model, `preprocessor_config.json` and tokenizer files there), so
    loading it takes the same path as loading the real download. About 600 MB on disk.
    For plumbing tests only: the embeddings are deterministic but meaningless.
    """
    try:
        import torch
        from transformers import CLIPConfig, CLIPModel
    except ImportError as exc:
        raise MissingDependency(CLIP_NAME, "transformers", "pip install transformers") from exc

    root = Path(path)
    module_dir = root / "0_CLIPModel"
    module_dir.mkdir(parents=True, exist_ok=True)

    config = CLIPConfig(
        text_config=_TEXT_CONFIG,
        vision_config=_VISION_CONFIG,
        projection_dim=_PROJECTION_DIM,
        logit_scale_init_value=_LOGIT_SCALE_INIT,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = CLIPModel(config)
    finally:
        torch.random.set_rng_state(generator_state)  # don't disturb the caller's randomness
    model.save_pretrained(module_dir)

    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
    files: dict[str, object] = {
        "vocab.json": _byte_level_vocab(),
        "tokenizer_config.json": {
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": _TEXT_CONFIG["max_position_embeddings"],
            "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "do_lower_case": True,
            **special,
        },
        "special_tokens_map.json": {
            "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            **special,
        },
        "preprocessor_config.json": {
            "feature_extractor_type": "CLIPFeatureExtractor",
            "do_resize": True,
            "size": 224,
            "resample": 3,  # bicubic
            "do_center_crop": True,
            "crop_size": 224,
            "do_normalize": True,
            "image_mean": _OPENAI_CLIP_MEAN,
            "image_std": _OPENAI_CLIP_STD,
        },
    }
    for name, content in files.items():
        (module_dir / name).write_text(json.dumps(content, indent=2), encoding="utf-8")
    (module_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    modules = [
        {
            "idx": 0,
            "name": "0",
            "path": "0_CLIPModel",
            "type": "sentence_transformers.models.CLIPModel",
        }
    ]
    (root / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")
    return root
