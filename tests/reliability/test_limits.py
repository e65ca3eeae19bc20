"""Limits: each one a clear 4xx with a stable code, and each configurable through settings.

Items per run (`max_items_per_run`), request body size (`max_body_bytes`, by Content-Length
and while a chunked body streams), text length (`max_text_chars`), upload size
(`max_upload_bytes`, at init and during the PUT) and the per-key rate limit
(`rate_limit_per_minute`, `rate_limit_burst`: 429 `rate_limited` with `Retry-After`).
Each test runs the service at two settings and shows the boundary moves with them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from embedders.base import Embedder
from tests.harness import Service, make_settings, running_service
from tests.helpers import Uploader, chunks
from vectorsvc.model_registry.registry import ModelSpec

pytestmark = pytest.mark.anyio

MODEL = "all-minilm-l6-v2"
Loader = Callable[[ModelSpec], Embedder]


def service_with(
    tmp_path: Path, models_dir: Path, loader: Loader, **limits: Any
) -> AbstractAsyncContextManager[Service]:
    settings = make_settings(tmp_path / "data", models_dir, **limits)
    return running_service(settings, loader)


def error_of(r: httpx.Response) -> tuple[int, str, str | None]:
    error = r.json()["error"]
    return r.status_code, error["code"], error.get("field")


def texts(n: int) -> list[dict[str, Any]]:
    return [{"id": f"doc-{i}", "text": f"short note number {i}"} for i in range(n)]


@pytest.mark.parametrize("limit", [3, 7])
async def test_items_per_run(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader, limit: int
) -> None:
    async with service_with(
        tmp_path, models_dir, embedder_loader, max_items_per_run=limit
    ) as service:
        key = service.new_key("acme")
        index = {"model": MODEL, "mode": "index", "scope": "s"}
        r = await service.run(key, {**index, "input": {"items": texts(limit)}})
        assert r.status_code == 200, r.text
        r = await service.run(key, {**index, "input": {"items": texts(limit + 1)}})
        assert error_of(r) == (422, "too_many_items", "input.items")
        assert f"at most {limit} items" in r.json()["error"]["message"]
        words = [f"word {i}" for i in range(limit + 1)]
        r = await service.run(key, {"model": MODEL, "input": {"texts": words}})
        assert error_of(r) == (422, "too_many_items", "input")
        r = await service.run(key, {"model": MODEL, "input": {"texts": words[:limit]}})
        assert r.status_code == 200


def padded_run(size: int) -> bytes:
    """A valid execute run whose JSON body is exactly `size` bytes (padding in the text)."""
    body = b'{"model": "all-minilm-l6-v2", "input": {"text": "pad '
    tail = b'"}}'
    return body + b"x" * (size - len(body) - len(tail)) + tail


@pytest.mark.parametrize("limit", [2048, 8192])
async def test_body_size(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader, limit: int
) -> None:
    async with service_with(tmp_path, models_dir, embedder_loader, max_body_bytes=limit) as svc:
        headers = {"X-API-Key": svc.new_key("acme"), "Content-Type": "application/json"}
        client = svc.client
        at_limit, over = padded_run(limit), padded_run(limit + 1)
        r = await client.post("/api/runs", content=at_limit, headers=headers)
        assert r.status_code == 200, r.text
        # Declared by Content-Length: refused before the body is read.
        r = await client.post("/api/runs", content=over, headers=headers)
        assert error_of(r) == (413, "payload_too_large", "body")
        assert str(limit) in r.json()["error"]["message"]
        # Chunked, no Content-Length: refused as soon as the stream passes the limit.
        r = await client.post("/api/runs", content=chunks(over, 512), headers=headers)
        assert "content-length" not in r.request.headers
        assert error_of(r) == (413, "payload_too_large", "body")
        r = await client.post("/api/runs", content=chunks(at_limit, 512), headers=headers)
        assert r.status_code == 200, r.text
        # Every JSON endpoint, not only runs.
        r = await client.post(
            "/api/media/upload/complete",
            content=b'{"upload_id": "' + b"u" * limit + b'"}',
            headers=headers,
        )
        assert error_of(r) == (413, "payload_too_large", "body")


X = object()  # where the text under test goes


@pytest.mark.parametrize("limit", [40, 120])
async def test_text_length(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader, limit: int
) -> None:
    async with service_with(tmp_path, models_dir, embedder_loader, max_text_chars=limit) as svc:
        key = svc.new_key("acme")
        fits, too_long = "a" * limit, "b" * (limit + 1)
        base = {"model": MODEL, "scope": "s"}
        cases = [
            (
                {"mode": "index", "input": {"items": [{"id": "1", "text": X}]}},
                "input.items[0].text",
            ),
            ({"mode": "search", "input": {"text": X}}, "input.text"),
            ({"mode": "execute", "input": {"texts": ["ok", X]}}, "input.texts[1]"),
        ]
        for template, field in cases:
            r = await svc.run(key, {**base, **fill(template, too_long)})
            assert error_of(r) == (422, "text_too_long", field), r.text
            assert f"the limit is {limit}" in r.json()["error"]["message"]
            r = await svc.run(key, {**base, **fill(template, fits)})
            assert r.status_code == 200, r.text


def fill(value: Any, text: str) -> Any:
    if value is X:
        return text
    if isinstance(value, dict):
        return {k: fill(v, text) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, text) for v in value]
    return value


def png_of_size(at_least: int) -> bytes:
    """A valid PNG of at least `at_least` bytes (noise compresses badly)."""
    side = 16
    while True:
        buffer = io.BytesIO()
        Image.effect_noise((side, side), 80).convert("RGB").save(buffer, format="PNG")
        if len(buffer.getvalue()) >= at_least:
            return buffer.getvalue()
        side += 4


def blobs(service: Service) -> list[Path]:
    return [p for p in (service.settings.media_dir / "blobs").rglob("*") if p.is_file()]


@pytest.mark.parametrize("limit", [10_000, 40_000])
async def test_upload_size(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader, limit: int
) -> None:
    async with service_with(tmp_path, models_dir, embedder_loader, max_upload_bytes=limit) as svc:
        uploader = Uploader(svc, svc.new_key("acme"))
        declared = {"filename": "a.png", "content_type": "image/png", "media_type": "image"}
        r = await uploader.init(**declared, size_bytes=limit + 1)
        assert error_of(r) == (413, "upload_too_large", "size_bytes")
        assert r.json()["error"]["details"] == {"max_bytes": limit}
        big = png_of_size(limit + 1)
        fits = png_of_size(limit // 2)
        assert len(fits) <= limit
        # Declared within the limit, but the PUT carries more: refused, by Content-Length
        # and while a chunked body streams; nothing is stored and the URL stays usable.
        ticket = await uploader.init_ok(fits, "image/png")
        assert ticket["max_bytes"] == limit
        r = await uploader.put(ticket["upload_url"], big)
        assert error_of(r)[:2] == (413, "upload_too_large")
        r = await uploader.put(ticket["upload_url"], big, stream=True)
        assert error_of(r)[:2] == (413, "upload_too_large")
        assert blobs(svc) == []
        assert (await uploader.put(ticket["upload_url"], fits)).status_code == 200
        assert (await uploader.complete(ticket["upload_id"])).status_code == 200
        assert len(blobs(svc)) == 1


@pytest.mark.parametrize("burst", [3, 6])
async def test_rate_limit_per_key(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader, burst: int
) -> None:
    # One token a minute once the burst is spent: nothing refills while this test runs.
    async with service_with(
        tmp_path,
        models_dir,
        embedder_loader,
        rate_limit_per_minute=1,
        rate_limit_burst=burst,
    ) as svc:
        first, second = svc.new_key("acme"), svc.new_key("acme")

        async def wallet(key: str) -> httpx.Response:
            return await svc.client.get("/api/billing/wallet", headers={"X-API-Key": key})

        statuses = [(await wallet(first)).status_code for _ in range(burst)]
        assert statuses == [200] * burst
        refused = await wallet(first)
        assert error_of(refused)[:2] == (429, "rate_limited")
        retry_after = refused.headers["Retry-After"]
        assert retry_after.isdigit() and 30 <= int(retry_after) <= 60
        assert f"bursts of {burst}" in refused.json()["error"]["message"]
        # Every endpoint behind authentication counts, runs included.
        r = await svc.run(first, {"model": MODEL, "input": {"text": "hi"}})
        assert error_of(r)[:2] == (429, "rate_limited")
        # Another key (even of the same workspace) has its own bucket of the same size.
        statuses = [(await wallet(second)).status_code for _ in range(burst + 1)]
        assert statuses == [200] * burst + [429]


async def test_rate_limit_passes_again_after_retry_after(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader
) -> None:
    async with service_with(
        tmp_path, models_dir, embedder_loader, rate_limit_per_minute=60, rate_limit_burst=2
    ) as svc:
        headers = {"X-API-Key": svc.new_key("acme")}
        for _ in range(50):
            refused = await svc.client.get("/api/billing/wallet", headers=headers)
            if refused.status_code == 429:
                break
        assert refused.status_code == 429
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 2  # a token a second
        await anyio.sleep(retry_after + 0.1)
        assert (await svc.client.get("/api/billing/wallet", headers=headers)).status_code == 200


async def test_rate_limit_zero_disables_it(
    tmp_path: Path, models_dir: Path, embedder_loader: Loader
) -> None:
    async with service_with(
        tmp_path, models_dir, embedder_loader, rate_limit_per_minute=0, rate_limit_burst=1
    ) as svc:
        key = svc.new_key("acme")
        for _ in range(20):
            r = await svc.client.get("/api/billing/wallet", headers={"X-API-Key": key})
            assert r.status_code == 200
