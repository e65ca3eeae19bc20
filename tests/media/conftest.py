"""Media test helpers: small limits so that over-limit cases stay cheap, an uploader, and
images encoded from a real photo (scikit-image's `chelsea`)."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import Service, make_settings
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


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


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


async def chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """A streamed body: httpx sends it chunked, without Content-Length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


class Uploader:
    """The three upload calls for one workspace's API key."""

    def __init__(self, service: Service, key: str) -> None:
        self.client = service.client
        self.headers = {"X-API-Key": key}

    async def init(self, **body: Any) -> httpx.Response:
        return await self.client.post("/api/media/upload/init", json=body, headers=self.headers)

    async def init_ok(
        self, data: bytes, content_type: str, media_type: str = "image", **extra: Any
    ) -> dict[str, Any]:
        r = await self.init(
            filename=extra.pop("filename", "upload.bin"),
            content_type=content_type,
            media_type=media_type,
            size_bytes=extra.pop("size_bytes", len(data)),
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def put(self, upload_url: str, data: bytes, *, stream: bool = False) -> httpx.Response:
        # No credentials: the URL's token authorises the PUT.
        if stream:
            return await self.client.put(upload_url, content=chunks(data))
        return await self.client.put(upload_url, content=data)

    async def complete(self, upload_id: str) -> httpx.Response:
        return await self.client.post(
            "/api/media/upload/complete", json={"upload_id": upload_id}, headers=self.headers
        )

    async def upload(
        self, data: bytes, content_type: str, media_type: str = "image"
    ) -> dict[str, Any]:
        """init, PUT, complete; the completion body."""
        ticket = await self.init_ok(data, content_type, media_type)
        r = await self.put(ticket["upload_url"], data)
        assert r.status_code == 200, r.text
        r = await self.complete(ticket["upload_id"])
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


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
