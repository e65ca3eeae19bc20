"""Helpers shared by test packages: media uploads through the public API, image encoding."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import uvicorn
from PIL import Image

from embedders.base import Embedder
from tests.harness import Service
from vectorsvc.app import create_app
from vectorsvc.config import Settings
from vectorsvc.model_registry.registry import ModelSpec


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


@contextlib.contextmanager
def uvicorn_in_thread(settings: Settings, loader: Callable[[ModelSpec], Embedder]) -> Iterator[str]:
    """The real app under uvicorn in a thread on a free loopback port; yields its base URL.

    For tests that need a real HTTP server (a browser, the CLI, the client)."""
    app = create_app(settings, embedder_loader=loader)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # the OS picks a free port: no race with other tests
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the service did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
