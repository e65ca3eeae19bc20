"""Fixtures for the embedder tests: photos shipped by scikit-image, and a random CLIP folder.

The models themselves are module-scoped fixtures in their test modules, so each loads once.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from embedders.clip import build_random_clip_folder

PHOTO_NAMES = ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry")


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    """Real photos that scikit-image ships in its wheel (no download)."""
    data = pytest.importorskip("skimage.data", reason="scikit-image is a test dependency")
    return {name: Image.fromarray(getattr(data, name)()) for name in PHOTO_NAMES}


@pytest.fixture(scope="session")
def random_clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A randomly initialised CLIP ViT-B/32 in the hub layout (~600 MB, built once)."""
    root = tmp_path_factory.mktemp("clip")
    yield build_random_clip_folder(root / "clip-vit-b-32")
    # pytest keeps the last few temp dirs; 600 MB each is worth giving back at once.
    shutil.rmtree(root, ignore_errors=True)
