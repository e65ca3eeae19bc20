"""Media test helpers: small limits so that over-limit cases stay cheap, an uploader, and
images encoded from a real photo (scikit-image's `chelsea`).

Every test that builds the service's settings runs twice, on each media store: the local
directory and an S3 bucket on a moto server started for the session (`media_store`).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.harness import Service, make_settings
from tests.helpers import Uploader
from tests.media.stores import StoreView
from tests.s3server import S3Server, running_s3_server
from vectorsvc.config import Settings
from vectorsvc.media.service import MediaService
from vectorsvc.workspaces.service import get_workspace_by_name

MAX_UPLOAD_BYTES = 1_000_000
MAX_IMAGE_PIXELS = 1_000_000


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("moto.server", reason="moto[server] is a test dependency (.[dev])")
    with running_s3_server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def media_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The settings that pick the media store under test: none for the local directory; for
    S3 a fresh bucket on the session's server, credentials in the standard AWS variables."""
    if request.param == "local":
        return {}
    server: S3Server = request.getfixturevalue("s3_server")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return {"media_url": f"s3://{server.new_bucket()}/media", "media_s3_endpoint_url": server.url}


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path, media_store: dict[str, Any]) -> Settings:
    return make_settings(
        tmp_path / "data",
        models_dir,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_image_pixels=MAX_IMAGE_PIXELS,
        **media_store,
    )


@pytest.fixture
def store(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> StoreView:
    """What the media store under test holds, by name."""
    return StoreView(settings, monkeypatch)


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


def workspace_id(service: Service, name: str) -> str:
    with service.db.session() as session:
        return get_workspace_by_name(session, name=name).id


def media_service(service: Service) -> MediaService:
    """The media service over the running app's database and media directory."""
    return MediaService.from_settings(service.settings, service.db)
