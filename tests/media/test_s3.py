"""What only the S3 store has: replicas sharing one bucket, its settings, a clear start-up
error when the bucket cannot be used, 503 when it goes away, a received object checked
before it becomes a blob, multipart for large bodies, and no credential in any message or
log line. (Everything else runs on both stores: see `media_store` in conftest.py.)"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from embedders.base import Embedder
from tests.harness import Service, make_settings, running_service
from tests.helpers import Uploader, encode
from tests.media.stores import StoreView
from tests.s3server import S3Server
from vectorsvc.app import create_app
from vectorsvc.cli import main
from vectorsvc.config import Settings
from vectorsvc.media.storage import MediaStoreUnavailable
from vectorsvc.model_registry.registry import ModelSpec

pytestmark = pytest.mark.anyio

PNG = encode(Image.new("RGB", (40, 30), (200, 30, 30)), "PNG")
IMAGE_MODEL = "image-similarity"


@pytest.fixture
def media_store(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return {
        "media_url": f"s3://{s3_server.new_bucket()}/media",
        "media_s3_endpoint_url": s3_server.url,
    }


def use_env(monkeypatch: pytest.MonkeyPatch, data_dir: Path, **values: str) -> None:
    monkeypatch.setenv("VECTORSVC_DATA_DIR", str(data_dir))
    for name, value in values.items():
        monkeypatch.setenv(name, value)


async def test_two_replicas_on_one_bucket_see_every_media_ref(
    tmp_path: Path,
    models_dir: Path,
    media_store: dict[str, Any],
    embedder_loader: Callable[[ModelSpec], Embedder],
    chelsea: Image.Image,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two services with their own data directories (and vector stores) on one database and
    one bucket: each step of the upload on another replica, the media used on the other."""
    database_url = f"sqlite:///{tmp_path / 'shared.db'}"
    a_settings, b_settings = (
        make_settings(tmp_path / name, models_dir, database_url=database_url, **media_store)
        for name in ("a", "b")
    )
    data = encode(chelsea, "PNG")
    async with (
        running_service(a_settings, embedder_loader) as a,
        running_service(b_settings, embedder_loader) as b,
    ):
        key = a.new_key("acme")
        on_a, on_b = Uploader(a, key), Uploader(b, key)
        ticket = await on_a.init_ok(data, "image/png")
        assert (await on_b.put(ticket["upload_url"], data)).status_code == 200
        done = (await on_a.complete(ticket["upload_id"])).json()
        ref = done["media_ref"]
        r = await b.client.get(f"/api/media/{ref}/thumbnail", headers=on_b.headers)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        item = {"id": "cat", "image": {"media_ref": ref}}
        body = {"model": IMAGE_MODEL, "mode": "index", "scope": "pets", "input": {"items": [item]}}
        r = await b.run(key, body)
        assert r.status_code == 200, r.text
        # Neither replica's data directory holds the bytes: the bucket does.
        for settings in (a_settings, b_settings):
            assert not list((settings.media_dir / "blobs").rglob("*"))
        store = StoreView(a_settings, monkeypatch)
        assert store.files() == [store.blob(done["sha256"])]
        # Deleted on A (the point is on B's vector store, so A finds none): gone for both.
        r = await a.client.delete(f"/api/media/{ref}", headers=on_a.headers)
        assert r.status_code == 204
        assert store.files() == []
        r = await b.client.get(f"/api/media/{ref}", headers=on_b.headers)
        assert r.status_code == 404


async def test_a_large_body_goes_up_in_parts_and_round_trips(
    tmp_path: Path,
    models_dir: Path,
    media_store: dict[str, Any],
    embedder_loader: Callable[[ModelSpec], Embedder],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vectorsvc.media.s3store import MULTIPART_THRESHOLD

    data = os.urandom(MULTIPART_THRESHOLD + 1024 * 1024)
    settings = make_settings(
        tmp_path / "data", models_dir, max_upload_bytes=len(data), **media_store
    )
    async with running_service(settings, embedder_loader) as service:
        uploader = Uploader(service, service.new_key("acme"))
        ticket = await uploader.init_ok(data, "application/octet-stream", "file")
        r = await uploader.put(ticket["upload_url"], data, stream=True)
        assert r.status_code == 200, r.text
        store = StoreView(settings, monkeypatch)
        received = f"{store.prefix}incoming/{ticket['upload_id']}"
        head = store.s3.head_object(Bucket=store.bucket, Key=received)
        assert head["ETag"].strip('"').endswith("-2")  # sent in two parts
        done = (await uploader.complete(ticket["upload_id"])).json()
    blob = store.blob(hashlib.sha256(data).hexdigest())
    assert store.files() == [blob]
    assert store.read(blob) == data
    assert done["size_bytes"] == len(data)


async def test_received_bytes_changed_in_the_bucket_never_become_a_blob(
    service: Service, store: StoreView
) -> None:
    uploader = Uploader(service, service.new_key("acme"))
    ticket = await uploader.init_ok(PNG, "image/png")
    assert (await uploader.put(ticket["upload_url"], PNG)).status_code == 200
    forged = bytes(reversed(PNG))  # the same size, other bytes, no recorded digest
    store.write(f"incoming/{ticket['upload_id']}", forged)
    r = await uploader.complete(ticket["upload_id"])
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "upload_bytes_mismatch"
    assert store.files() == [f"incoming/{ticket['upload_id']}"]
    # Not completed: the upload is still received, and no media row was made.
    r = await service.client.get("/api/media/usage", headers=uploader.headers)
    assert r.json()["used_count"] == 1


async def test_a_bucket_gone_while_serving_is_503_and_the_upload_can_be_retried(
    service: Service,
    store: StoreView,
    s3_server: S3Server,
    caplog: pytest.LogCaptureFixture,
) -> None:
    uploader = Uploader(service, service.new_key("acme"))
    ticket = await uploader.init_ok(PNG, "image/png")
    store.s3.delete_bucket(Bucket=store.bucket)
    with caplog.at_level(logging.DEBUG):
        r = await uploader.put(ticket["upload_url"], PNG)
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "media_store_unavailable"
    # The client learns storage is down, not where it is; the operator's log says both.
    assert store.bucket not in r.text and s3_server.url not in r.text
    assert f"s3://{store.bucket}/media" in caplog.text and "does not exist" in caplog.text
    for secret in (s3_server.secret_key, s3_server.access_key):
        assert secret not in caplog.text and secret not in r.text
    store.s3.create_bucket(Bucket=store.bucket)
    assert (await uploader.put(ticket["upload_url"], PNG)).status_code == 200
    assert (await uploader.complete(ticket["upload_id"])).status_code == 200


def test_crash_left_multipart_uploads_are_aborted_by_age(settings: Settings) -> None:
    from vectorsvc.media.stores import open_media_store

    blobs = open_media_store(settings)
    client = blobs.client  # type: ignore[attr-defined]
    key = f"{blobs.prefix}incoming/studio_upload_cut"  # type: ignore[attr-defined]
    client.create_multipart_upload(Bucket=blobs.bucket, Key=key)  # type: ignore[attr-defined]
    # (moto dates every multipart upload 2010-11-10, so the 24-hour grace that spares a PUT
    # under way cannot be seen here: the default sweep takes it too.)
    assert blobs.sweep_temp() == 1
    assert not client.list_multipart_uploads(Bucket=blobs.bucket).get("Uploads")  # type: ignore[attr-defined]


# -- settings and start-up ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["ftp://bucket/x", "s3://", "s3://B/x", "s3://ab", "s3://bucket/a//b", "s3://bucket/../x"],
)
def test_a_bad_media_url_is_refused_naming_the_setting(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_env(monkeypatch, tmp_path, VECTORSVC_MEDIA_URL=url)
    assert main(["media", "gc"]) == 2
    err = capsys.readouterr().err
    assert "VECTORSVC_MEDIA_URL" in err
    assert "s3://BUCKET" in err or "no empty, . or .. segments" in err


def test_an_endpoint_with_credentials_in_it_is_refused_without_echoing_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_env(
        monkeypatch,
        tmp_path,
        VECTORSVC_MEDIA_URL="s3://bucket",
        VECTORSVC_MEDIA_S3_ENDPOINT_URL="http://admin:hunter2secret@minio:9000",
    )
    assert main(["media", "gc"]) == 2
    err = capsys.readouterr().err
    assert "VECTORSVC_MEDIA_S3_ENDPOINT_URL" in err and "AWS_ACCESS_KEY_ID" in err
    assert "hunter2secret" not in err
    assert Settings(media_s3_endpoint_url="http://minio:9000/").media_s3_endpoint_url == (
        "http://minio:9000"
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong secret", "access denied (SignatureDoesNotMatch)"),
        ("unknown key", "access denied (InvalidAccessKeyId)"),
        ("no credentials", "no credentials found"),
        ("no such bucket", "does not exist"),
        ("unreachable", "cannot connect to the server"),
    ],
)
def test_serve_refuses_to_start_on_an_unusable_bucket_naming_it_and_why(
    case: str,
    reason: str,
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    bucket = s3_server.new_bucket()
    env = {
        **s3_server.env(),
        "VECTORSVC_MEDIA_URL": f"s3://{bucket}/media",
        "VECTORSVC_MEDIA_S3_ENDPOINT_URL": s3_server.url,
        "VECTORSVC_PRELOAD_MODELS": "",
    }
    if case == "wrong secret":
        env["AWS_SECRET_ACCESS_KEY"] = "not-" + s3_server.secret_key
    elif case == "unknown key":
        env["AWS_ACCESS_KEY_ID"] = "AKIAUNKNOWNKEY000000"
    elif case == "no credentials":
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name, raising=False)
            del env[name]
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    elif case == "no such bucket":
        env["VECTORSVC_MEDIA_URL"] = "s3://no-such-bucket-here/media"
    else:
        env["VECTORSVC_MEDIA_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{_closed_port()}"
    use_env(monkeypatch, tmp_path / "data", **env)

    def serving(*args: object, **kwargs: object) -> None:
        raise AssertionError("serve started on an unusable bucket")

    monkeypatch.setattr("uvicorn.run", serving)
    # Records stay with caplog (the JSON handler would replace the root's handlers).
    monkeypatch.setattr("vectorsvc.cli.configure_logging", lambda level: None)
    with caplog.at_level(logging.DEBUG):
        assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "VECTORSVC_MEDIA_URL" in err and reason in err, err
    assert env["VECTORSVC_MEDIA_URL"].removeprefix("s3://") in err
    for secret in (s3_server.secret_key, s3_server.access_key):
        assert secret not in err and secret not in caplog.text


async def test_the_app_does_not_start_on_an_unusable_bucket(
    s3_server: S3Server,
    tmp_path: Path,
    models_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    settings = make_settings(
        tmp_path / "data",
        models_dir,
        media_url=f"s3://{s3_server.new_bucket()}",
        media_s3_endpoint_url=s3_server.url,
    )
    app = create_app(settings)
    with pytest.raises(MediaStoreUnavailable) as caught:
        async with app.router.lifespan_context(app):
            pass
    assert "access denied" in caught.value.message and "wrong" not in caught.value.message
