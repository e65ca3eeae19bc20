"""Media test helpers: small limits so that over-limit cases stay cheap, an uploader, and
images encoded from a real photo (scikit-image's `chelsea`)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tests.harness import Service, make_settings
from tests.helpers import Uploader
from vectorsvc.config import Settings
from vectorsvc.media.service import MediaService
from vectorsvc.workspaces.service import get_workspace_by_name

MAX_UPLOAD_BYTES = 1_000_000
MAX_IMAGE_PIXELS = 1_000_000


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path) -> Settings:
    return make_settings(
        tmp_path / "data",
        models_dir,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_image_pixels=MAX_IMAGE_PIXELS,
    )


@pytest.fixture(scope="session")
def chelsea() -> Image.Image:
    skimage_data = pytest.importorskip("skimage.data")
    return Image.fromarray(skimage_data.chelsea())  # 451x300 RGB photo of a cat


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares `width` x `height` 1-bit pixels (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def uploader(service: Service, api_key: str) -> Uploader:
    return Uploader(service, api_key)


def stored_files(media_dir: Path) -> list[Path]:
    """Every file the media store holds (blobs, incoming, partial bodies)."""
    return sorted(p for p in media_dir.rglob("*") if p.is_file())


def workspace_id(service: Service, name: str) -> str:
    with service.db.session() as session:
        return get_workspace_by_name(session, name=name).id


def media_service(service: Service) -> MediaService:
    """The media service over the running app's database and media directory."""
    return MediaService.from_settings(service.settings, service.db)
