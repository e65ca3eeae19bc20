"""Helpers shared by test packages: media uploads through the public API, image encoding."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
from PIL import Image

from tests.conftest import Service


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


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
