"""The media quota: a workspace's stored media plus its open uploads stay within
VECTORSVC_MEDIA_QUOTA_BYTES and VECTORSVC_MEDIA_QUOTA_COUNT, however many inits run at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import update

from tests.harness import Service, make_settings
from tests.helpers import Uploader, encode
from tests.media.conftest import MAX_IMAGE_PIXELS, MAX_UPLOAD_BYTES
from vectorsvc.config import Settings
from vectorsvc.db.tables import MediaUpload

pytestmark = pytest.mark.anyio

QUOTA_BYTES = 10_000
QUOTA_COUNT = 12
PNG = encode(Image.new("RGB", (40, 30), (200, 30, 30)), "PNG")


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path, media_store: dict[str, Any]) -> Settings:
    return make_settings(
        tmp_path / "data",
        models_dir,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_image_pixels=MAX_IMAGE_PIXELS,
        media_quota_bytes=QUOTA_BYTES,
        media_quota_count=QUOTA_COUNT,
        **media_store,
    )


async def init(uploader: Uploader, size_bytes: int) -> httpx.Response:
    return await uploader.init(
        filename="a.png", content_type="image/png", media_type="image", size_bytes=size_bytes
    )


async def usage(service: Service, uploader: Uploader) -> dict[str, int]:
    r = await service.client.get("/api/media/usage", headers=uploader.headers)
    assert r.status_code == 200, r.text
    body: dict[str, int] = r.json()
    return body


async def test_an_init_over_the_byte_quota_is_refused_naming_limit_and_usage(
    service: Service, uploader: Uploader
) -> None:
    assert (await init(uploader, 6000)).status_code == 200  # pending: counts already
    r = await init(uploader, 5000)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "media_quota_exceeded"
    assert error["field"] == "size_bytes"
    assert "VECTORSVC_MEDIA_QUOTA_BYTES" in error["message"] and "6000" in error["message"]
    assert error["details"] == {
        "limit_bytes": QUOTA_BYTES,
        "used_bytes": 6000,
        "requested_bytes": 5000,
        "limit_count": QUOTA_COUNT,
        "used_count": 1,
    }
    # What fits still goes, and the refused init reserved nothing.
    assert (await init(uploader, 4000)).status_code == 200
    assert await usage(service, uploader) == {
        "used_bytes": 10_000,
        "limit_bytes": QUOTA_BYTES,
        "used_count": 2,
        "limit_count": QUOTA_COUNT,
    }
    # Another workspace has its own quota.
    other = Uploader(service, service.new_key("other-co"))
    assert (await init(other, 10_000)).status_code == 200


async def test_an_init_over_the_count_quota_is_refused(uploader: Uploader) -> None:
    for _ in range(QUOTA_COUNT):
        assert (await init(uploader, 10)).status_code == 200
    r = await init(uploader, 10)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "media_quota_exceeded"
    assert "VECTORSVC_MEDIA_QUOTA_COUNT" in r.json()["error"]["message"]


async def test_parallel_inits_cannot_overshoot(service: Service, uploader: Uploader) -> None:
    # The init endpoint runs on worker threads: these twenty really race.
    answers = await asyncio.gather(*(init(uploader, 1000) for _ in range(20)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * 10 + [409] * 10
    assert (await usage(service, uploader))["used_bytes"] == QUOTA_BYTES


async def test_stored_media_count_and_expired_or_deleted_media_free_the_quota(
    service: Service, uploader: Uploader
) -> None:
    done = await uploader.upload(PNG, "image/png")
    assert await usage(service, uploader) == {
        "used_bytes": len(PNG),
        "limit_bytes": QUOTA_BYTES,
        "used_count": 1,
        "limit_count": QUOTA_COUNT,
    }
    ticket = (await init(uploader, QUOTA_BYTES - len(PNG))).json()
    assert (await init(uploader, 1)).status_code == 409
    # An expired upload no longer holds its bytes.
    with service.db.session() as session:
        session.execute(
            update(MediaUpload)
            .where(MediaUpload.id == ticket["upload_id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert (await usage(service, uploader))["used_bytes"] == len(PNG)
    assert (await init(uploader, QUOTA_BYTES - len(PNG))).status_code == 200
    assert (await init(uploader, 1)).status_code == 409
    # Deleting media gives its bytes back.
    r = await service.client.delete(f"/api/media/{done['media_ref']}", headers=uploader.headers)
    assert r.status_code == 204, r.text
    assert (await init(uploader, len(PNG))).status_code == 200
    assert (await init(uploader, 1)).status_code == 409


def test_quota_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert defaults.media_quota_bytes == 1024**3
    assert defaults.media_quota_count == 10_000
    assert defaults.media_gc_interval_s == 3600
    assert defaults.thumbnail_cache_mb == 64
    monkeypatch.setenv("VECTORSVC_MEDIA_QUOTA_BYTES", "5000")
    monkeypatch.setenv("VECTORSVC_MEDIA_QUOTA_COUNT", "3")
    monkeypatch.setenv("VECTORSVC_MEDIA_GC_INTERVAL_S", "0")
    settings = Settings()
    assert (settings.media_quota_bytes, settings.media_quota_count) == (5000, 3)
    assert settings.media_gc_interval_s == 0
    monkeypatch.setenv("VECTORSVC_MEDIA_QUOTA_BYTES", "0")
    with pytest.raises(ValueError):
        Settings()
