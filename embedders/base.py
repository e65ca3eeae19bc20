"""The embedder interface. `embedders` never imports `vectorsvc`."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from embedders.chunking import split_windows

if TYPE_CHECKING:
    from PIL.Image import Image

Embeddings = npt.NDArray[np.float32]  # shape (n, dimension), float32, rows L2-normalised


class Modality(enum.StrEnum):
    TEXT = "text"
    IMAGE = "image"


class ModalityNotSupported(ValueError):
    def __init__(self, embedder: str, modality: Modality) -> None:
        super().__init__(f"embedder {embedder!r} does not embed {modality.value} inputs")
        self.embedder = embedder
        self.modality = modality


class WeightsUnavailable(RuntimeError):
    """The model's weights are not on this machine; `how_to_install` says how to get them."""

    def __init__(self, embedder: str, reason: str, how_to_install: str) -> None:
        super().__init__(f"{embedder}: {reason}. {how_to_install}")
        self.embedder = embedder
        self.reason = reason
        self.how_to_install = how_to_install


class MissingDependency(ImportError):
    """An optional package that this embedder needs is not installed; `pip_install` fixes it."""

    def __init__(self, embedder: str, package: str, pip_install: str) -> None:
        super().__init__(f"{embedder} needs the {package!r} package: {pip_install}")
        self.embedder = embedder
        self.package = package
        self.pip_install = pip_install


class Embedder(ABC):
    """Turns batches of texts or images into float32, L2-normalised vectors.

    Implementations load their weights in `__init__` and must be safe to call from several
    threads at once: the service runs up to `model_workers` calls of one model side by side
    on one copy of the weights. Anything a first call changes (a tokenizer's padding and
    truncation settings) is settled by a call in `__init__`.
    """

    name: str
    dimension: int
    modalities: frozenset[Modality]

    def embed_texts(self, texts: Sequence[str]) -> Embeddings:
        """Embed documents (texts to index)."""
        raise ModalityNotSupported(self.name, Modality.TEXT)

    def embed_queries(self, texts: Sequence[str]) -> Embeddings:
        """Embed search queries; same space as `embed_texts`. Defaults to it."""
        return self.embed_texts(texts)

    def embed_images(self, images: Sequence[Image]) -> Embeddings:
        raise ModalityNotSupported(self.name, Modality.IMAGE)

    def text_windows(
        self, text: str, *, window: int | None, overlap: int, max_chars: int
    ) -> list[tuple[int, int]]:
        """Character spans of the windows `text` is embedded in (`embedders.chunking`):
        `window` tokens at most (None: as many as the model reads), `overlap` tokens shared
        with the previous window. Default: the whole text, cut only at `max_chars`."""
        return split_windows(text, [(0, len(text))], window=1, overlap=0, max_chars=max_chars)

    @abstractmethod
    def describe(self) -> dict[str, object]:
        """Where the weights came from and on what device; for logs and health."""


def l2_normalise(vectors: npt.NDArray[np.floating]) -> Embeddings:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(arr / norms, dtype=np.float32)
