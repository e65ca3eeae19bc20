"""Upload URLs behind a proxy: `VECTORSVC_PUBLIC_BASE_URL`, when set, is their base, and the
request's Host header (which the caller controls) no longer is."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from tests.harness import Service, make_settings
from tests.helpers import Uploader, encode
from vectorsvc.config import Settings

pytestmark = pytest.mark.anyio

PNG = encode(Image.new("RGB", (40, 30), (30, 30, 200)), "PNG")
PUBLIC = "https://vectors.example.com/gw"


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path, media_store: dict[str, Any]) -> Settings:
    return make_settings(tmp_path / "data", models_dir, public_base_url=PUBLIC + "/", **media_store)


async def test_upload_url_is_built_on_the_public_base_url(
    service: Service, uploader: Uploader
) -> None:
    r = await uploader.client.post(
        "/api/media/upload/init",
        json={
            "filename": "blue.png",
            "content_type": "image/png",
            "media_type": "image",
            "size_bytes": len(PNG),
        },
        headers={**uploader.headers, "Host": "evil.example", "X-Forwarded-Host": "evil.example"},
    )
    assert r.status_code == 200, r.text
    ticket = r.json()
    assert "evil.example" not in ticket["upload_url"]
    url = urlsplit(ticket["upload_url"])
    assert (url.scheme, url.netloc) == ("https", "vectors.example.com")
    assert url.path == f"/gw/api/media/uploads/{ticket['upload_id']}"

    # The proxy strips its /gw prefix: the path and token behind it take the bytes.
    r = await uploader.put(f"{url.path.removeprefix('/gw')}?{url.query}", PNG)
    assert r.status_code == 200, r.text
    assert parse_qs(url.query)["token"][0]
    r = await uploader.complete(ticket["upload_id"])
    assert r.status_code == 200, r.text
    assert r.json()["media_ref"].startswith("media_")
