"""The upload flow: init, PUT the bytes to upload_url, complete; and every way to get it wrong.

Each refused upload answers a 4xx with a stable code and leaves nothing in the store.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image
from sqlalchemy import update

from tests.harness import Service
from tests.helpers import Uploader, encode
from tests.media.conftest import MAX_UPLOAD_BYTES
from tests.media.stores import StoreView
from vectorsvc.config import Settings
from vectorsvc.db.tables import MediaUpload

pytestmark = pytest.mark.anyio

PNG = encode(Image.new("RGB", (40, 30), (200, 30, 30)), "PNG")


def expire(service: Service, upload_id: str) -> None:
    with service.db.session() as session:
        session.execute(
            update(MediaUpload)
            .where(MediaUpload.id == upload_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


async def test_happy_path(store: StoreView, service: Service, uploader: Uploader) -> None:
    r = await uploader.init(
        filename="red.png", content_type="image/png", media_type="image", size_bytes=len(PNG)
    )
    assert r.status_code == 200, r.text
    ticket = r.json()
    assert set(ticket) == {"upload_id", "upload_url", "expires_at", "max_bytes"}
    assert ticket["upload_id"].startswith("studio_upload_")
    assert ticket["max_bytes"] == MAX_UPLOAD_BYTES
    url = urlsplit(ticket["upload_url"])
    assert url.path == f"/api/media/uploads/{ticket['upload_id']}"
    assert len(parse_qs(url.query)["token"][0]) >= 40  # unguessable
    expires_at = datetime.fromisoformat(ticket["expires_at"])
    ttl = timedelta(seconds=service.settings.upload_ttl_s)
    assert abs(expires_at - (datetime.now(UTC) + ttl)) < timedelta(minutes=1)

    r = await uploader.put(ticket["upload_url"], PNG)
    assert r.status_code == 200, r.text
    sha256 = hashlib.sha256(PNG).hexdigest()
    assert r.json() == {"upload_id": ticket["upload_id"], "size_bytes": len(PNG), "sha256": sha256}

    r = await uploader.complete(ticket["upload_id"])
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["media_ref"].startswith("media_")
    assert done == {
        "media_ref": done["media_ref"],
        "sha256": sha256,
        "size_bytes": len(PNG),
        "content_type": "image/png",
    }
    # Content-addressed: media/blobs/<sha[:2]>/<sha>, on disk or in the bucket.
    blob = store.blob(sha256)
    assert store.read(blob) == PNG
    assert store.files() == [blob]

    r = await service.client.get(f"/api/media/{done['media_ref']}", headers=uploader.headers)
    assert r.status_code == 200, r.text
    meta = r.json()
    assert meta["filename"] == "red.png"
    assert (meta["width"], meta["height"], meta["media_type"]) == (40, 30, "image")


async def test_complete_twice_returns_the_same_media_ref(uploader: Uploader) -> None:
    ticket = await uploader.init_ok(PNG, "image/png")
    assert (await uploader.put(ticket["upload_url"], PNG)).status_code == 200
    first = await uploader.complete(ticket["upload_id"])
    second = await uploader.complete(ticket["upload_id"])
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()


async def test_identical_bytes_are_stored_once(
    store: StoreView, service: Service, uploader: Uploader
) -> None:
    a = await uploader.upload(PNG, "image/png")
    b = await uploader.upload(PNG, "image/png")
    assert a["media_ref"] != b["media_ref"]
    assert a["sha256"] == b["sha256"]
    assert len(store.files()) == 1


async def test_streamed_body_without_content_length(uploader: Uploader) -> None:
    data = encode(Image.effect_noise((300, 300), 50), "PNG")
    assert len(data) > 64 * 1024  # several chunks
    ticket = await uploader.init_ok(data, "image/png")
    r = await uploader.put(ticket["upload_url"], data, stream=True)
    assert r.status_code == 200, r.text


async def test_a_rejected_put_can_be_retried_with_the_right_bytes(uploader: Uploader) -> None:
    ticket = await uploader.init_ok(PNG, "image/png")
    assert (await uploader.put(ticket["upload_url"], PNG[:-1])).status_code == 400
    assert (await uploader.put(ticket["upload_url"], PNG)).status_code == 200


# -- init -----------------------------------------------------------------------------------


async def test_init_over_the_size_limit_is_413(uploader: Uploader) -> None:
    r = await uploader.init(
        filename="big.png",
        content_type="image/png",
        media_type="image",
        size_bytes=MAX_UPLOAD_BYTES + 1,
    )
    assert r.status_code == 413
    error = r.json()["error"]
    assert (error["code"], error["field"]) == ("upload_too_large", "size_bytes")
    assert str(MAX_UPLOAD_BYTES) in error["message"]


@pytest.mark.parametrize(
    ("content_type", "media_type"),
    [
        ("application/pdf", "image"),
        ("audio/mpeg", "image"),
        ("image/png", "audio"),
        ("text/plain", "video"),
        ("image/x-unheard-of", "image"),
        ("application/x-unheard-of", "file"),
    ],
)
async def test_content_type_must_fit_media_type(
    uploader: Uploader, content_type: str, media_type: str
) -> None:
    r = await uploader.init(
        filename="x", content_type=content_type, media_type=media_type, size_bytes=10
    )
    assert r.status_code == 422
    error = r.json()["error"]
    assert (error["code"], error["field"]) == ("unsupported_content_type", "content_type")
    assert error["details"]["allowed"]


async def test_any_supported_type_is_a_file_and_aliases_are_normalized(
    uploader: Uploader,
) -> None:
    ticket = await uploader.init_ok(PNG, "IMAGE/PNG; charset=binary", media_type="file")
    assert (await uploader.put(ticket["upload_url"], PNG)).status_code == 200
    assert (await uploader.complete(ticket["upload_id"])).json()["content_type"] == "image/png"
    jpeg = encode(Image.new("RGB", (8, 8)), "JPEG")
    assert (await uploader.upload(jpeg, "image/jpg"))["content_type"] == "image/jpeg"


@pytest.mark.parametrize(
    "body",
    [
        {"filename": "a.png", "content_type": "image/png", "media_type": "image"},
        {"filename": "a.png", "content_type": "image/png", "media_type": "photo", "size_bytes": 1},
        {"filename": "a.png", "content_type": "image/png", "media_type": "image", "size_bytes": 0},
        {
            "filename": "a.png",
            "content_type": "image/png",
            "media_type": "image",
            "size_bytes": 1,
            "bucket": "mine",
        },
    ],
)
async def test_init_body_is_validated(uploader: Uploader, body: dict[str, object]) -> None:
    r = await uploader.init(**body)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "validation_error"


async def test_init_and_complete_need_credentials(service: Service) -> None:
    body = {"filename": "a", "content_type": "image/png", "media_type": "image", "size_bytes": 1}
    assert (await service.client.post("/api/media/upload/init", json=body)).status_code == 401
    r = await service.client.post("/api/media/upload/complete", json={"upload_id": "x"})
    assert r.status_code == 401


# -- PUT ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["content-length", "streamed"])
async def test_put_of_another_size_than_declared_is_400(
    store: StoreView, service: Service, uploader: Uploader, stream: bool
) -> None:
    ticket = await uploader.init_ok(PNG, "image/png", size_bytes=len(PNG) + 10)
    r = await uploader.put(ticket["upload_url"], PNG, stream=stream)
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["code"], error["field"]) == ("size_mismatch", "size_bytes")
    # Streamed bodies are counted; a Content-Length is refused before reading the body.
    assert ("Content-Length" in error["message"]) is not stream
    assert store.files() == []
    assert (await uploader.complete(ticket["upload_id"])).json()["error"]["code"] == (
        "upload_not_received"
    )


@pytest.mark.parametrize("stream", [False, True], ids=["content-length", "streamed"])
async def test_put_over_the_limit_is_413_and_stops_reading(
    store: StoreView, service: Service, uploader: Uploader, stream: bool
) -> None:
    ticket = await uploader.init_ok(b"", "application/octet-stream", "file", size_bytes=10)
    r = await uploader.put(ticket["upload_url"], b"\x00" * (MAX_UPLOAD_BYTES + 1), stream=stream)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "upload_too_large"
    assert ("Content-Length" in r.json()["error"]["message"]) is not stream
    assert store.files() == []


async def test_text_declared_as_png_is_refused(
    store: StoreView, service: Service, uploader: Uploader
) -> None:
    text = b"this is plain text, not a picture\n" * 20
    ticket = await uploader.init_ok(text, "image/png")
    r = await uploader.put(ticket["upload_url"], text)
    assert r.status_code == 422
    error = r.json()["error"]
    assert (error["code"], error["field"]) == ("content_mismatch", "content_type")
    assert "image/png" in error["message"]
    assert store.files() == []


async def test_jpeg_declared_as_png_is_refused_and_named(uploader: Uploader) -> None:
    jpeg = encode(Image.new("RGB", (16, 16)), "JPEG")
    ticket = await uploader.init_ok(jpeg, "image/png")
    r = await uploader.put(ticket["upload_url"], jpeg)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "content_mismatch"
    assert "image/jpeg" in r.json()["error"]["message"]


async def test_truncated_png_is_refused(
    store: StoreView, service: Service, uploader: Uploader
) -> None:
    photo = Image.effect_noise((200, 200), 64).convert("RGB")
    broken = encode(photo, "PNG")[:5000]
    ticket = await uploader.init_ok(broken, "image/png")
    r = await uploader.put(ticket["upload_url"], broken)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_image"
    assert store.files() == []


@pytest.mark.parametrize(
    ("data", "content_type", "media_type", "ok"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "application/pdf", "file", True),
        (b"just text", "application/pdf", "file", False),
        (b"ID3\x04\x00" + bytes(40), "audio/mpeg", "audio", True),
        (b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(20), "audio/wav", "audio", True),
        (b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(20), "video/mp4", "video", False),
        (b"\x00\x00\x00\x18ftypmp42" + bytes(20), "video/mp4", "video", True),
        ("héllo, wörld\n".encode(), "text/plain", "file", True),
        (b"\xff\xfe\x00bin\x00ary", "text/plain", "file", False),
        (b"\x01\x02\x03 anything", "application/octet-stream", "file", True),
    ],
)
async def test_bytes_are_sniffed_for_every_media_type(
    uploader: Uploader, data: bytes, content_type: str, media_type: str, ok: bool
) -> None:
    ticket = await uploader.init_ok(data, content_type, media_type)
    r = await uploader.put(ticket["upload_url"], data)
    if ok:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "content_mismatch"


async def test_put_before_init_or_with_a_wrong_token_is_404(
    service: Service, uploader: Uploader
) -> None:
    r = await service.client.put("/api/media/uploads/studio_upload_nope?token=abc", content=PNG)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "upload_not_found"
    ticket = await uploader.init_ok(PNG, "image/png")
    base = ticket["upload_url"].split("?")[0]
    for url in (base, f"{base}?token=wrong", f"{base}?token="):
        r = await service.client.put(url, content=PNG)
        assert r.status_code == 404, url
        assert r.json()["error"]["code"] == "upload_not_found"


async def test_upload_url_is_single_use(uploader: Uploader) -> None:
    ticket = await uploader.init_ok(PNG, "image/png")
    assert (await uploader.put(ticket["upload_url"], PNG)).status_code == 200
    again = await uploader.put(ticket["upload_url"], PNG)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "upload_already_received"
    assert (await uploader.complete(ticket["upload_id"])).status_code == 200
    after = await uploader.put(ticket["upload_url"], PNG)
    assert after.status_code == 409
    assert after.json()["error"]["code"] == "upload_already_received"


# -- complete and expiry --------------------------------------------------------------------


async def test_complete_unknown_upload_is_404(uploader: Uploader) -> None:
    r = await uploader.complete("studio_upload_does_not_exist")
    assert r.status_code == 404
    error = r.json()["error"]
    assert (error["code"], error["field"]) == ("upload_not_found", "upload_id")


async def test_complete_before_put_is_409(uploader: Uploader) -> None:
    ticket = await uploader.init_ok(PNG, "image/png")
    r = await uploader.complete(ticket["upload_id"])
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "upload_not_received"


async def test_put_after_expiry_is_410(
    store: StoreView, service: Service, uploader: Uploader
) -> None:
    ticket = await uploader.init_ok(PNG, "image/png")
    expire(service, ticket["upload_id"])
    r = await uploader.put(ticket["upload_url"], PNG)
    assert r.status_code == 410
    assert r.json()["error"]["code"] == "upload_expired"
    assert store.files() == []


async def test_complete_after_expiry_is_410_and_the_bytes_are_swept(
    store: StoreView, service: Service, uploader: Uploader
) -> None:
    ticket = await uploader.init_ok(PNG, "image/png")
    assert (await uploader.put(ticket["upload_url"], PNG)).status_code == 200
    assert len(store.files()) == 1  # waiting in incoming/
    expire(service, ticket["upload_id"])
    r = await uploader.complete(ticket["upload_id"])
    assert r.status_code == 410
    assert r.json()["error"]["code"] == "upload_expired"
    await uploader.init_ok(PNG, "image/png")  # any init sweeps expired uploads' bytes
    assert store.files() == []
    assert (await uploader.complete(ticket["upload_id"])).status_code == 410


async def test_a_completed_upload_stays_completed_after_expiry(
    service: Service, uploader: Uploader
) -> None:
    ticket = await uploader.init_ok(PNG, "image/png")
    assert (await uploader.put(ticket["upload_url"], PNG)).status_code == 200
    first = await uploader.complete(ticket["upload_id"])
    expire(service, ticket["upload_id"])
    again = await uploader.complete(ticket["upload_id"])
    assert again.status_code == 200
    assert again.json() == first.json()


def test_upload_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAX_UPLOAD_BYTES", "UPLOAD_TTL_S", "MAX_IMAGE_PIXELS"):
        monkeypatch.delenv(f"VECTORSVC_{name}", raising=False)
    defaults = Settings()
    assert defaults.max_upload_bytes == 20 * 1024 * 1024
    assert defaults.upload_ttl_s == 3600
    assert defaults.max_image_pixels == 50_000_000
    monkeypatch.setenv("VECTORSVC_MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("VECTORSVC_UPLOAD_TTL_S", "60")
    monkeypatch.setenv("VECTORSVC_MAX_IMAGE_PIXELS", "1000")
    configured = Settings()
    assert (configured.max_upload_bytes, configured.upload_ttl_s) == (1234, 60)
    assert configured.max_image_pixels == 1000
