"""Collection: expired uploads are purged (bytes at expiry, rows a day later), and files the
store holds for nothing (unused blobs, orphaned bodies, old shared thumbnails) are removed,
never a blob that an upload is completing with. By `MediaService.collect`, a task of the
app's lifespan and `vectorsvc media gc`."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from embedders.base import Embedder
from tests.harness import Service, make_settings, running_service
from tests.helpers import Uploader, encode
from tests.media.conftest import media_service, workspace_id
from tests.media.stores import StoreView
from vectorsvc.cli import main
from vectorsvc.db.tables import MediaUpload
from vectorsvc.media import collector as media_collector
from vectorsvc.media.storage import MediaStore
from vectorsvc.model_registry.registry import ModelSpec

if TYPE_CHECKING:
    from vectorsvc.media.collector import CollectReport

pytestmark = pytest.mark.anyio

PNG = encode(Image.new("RGB", (40, 30), (200, 30, 30)), "PNG")


def expire(service: Service, upload_id: str, ago: timedelta) -> None:
    with service.db.session() as session:
        session.execute(
            update(MediaUpload)
            .where(MediaUpload.id == upload_id)
            .values(expires_at=datetime.now(UTC) - ago)
        )


def upload_ids(service: Service) -> set[str]:
    with service.db.session() as session:
        return set(session.scalars(select(MediaUpload.id)))


def put_blob(store: StoreView, data: bytes) -> str:
    """A blob as a crash would leave it: stored, no media row."""
    name = store.blob(hashlib.sha256(data).hexdigest())
    store.write(name, data)
    return name


async def test_expired_uploads_lose_their_bytes_at_once_and_their_rows_a_day_later(
    store: StoreView, service: Service, uploader: Uploader
) -> None:
    pending = await uploader.init_ok(PNG, "image/png")
    received = await uploader.init_ok(PNG, "image/png")
    assert (await uploader.put(received["upload_url"], PNG)).status_code == 200
    recent = await uploader.init_ok(PNG, "image/png")
    assert (await uploader.put(recent["upload_url"], PNG)).status_code == 200
    live = await uploader.init_ok(PNG, "image/png")
    done = await uploader.upload(PNG, "image/png")
    for ticket in (pending, received):
        expire(service, ticket["upload_id"], timedelta(days=2))
    expire(service, recent["upload_id"], timedelta(seconds=1))
    assert store.files() == sorted(
        [store.blob(done["sha256"]), *(f"incoming/{t['upload_id']}" for t in (received, recent))]
    )

    report = media_service(service).collect()
    assert (report.uploads_expired, report.uploads_purged) == (2, 2)
    assert store.files() == [store.blob(done["sha256"])]
    ids = upload_ids(service)
    assert pending["upload_id"] not in ids and received["upload_id"] not in ids
    assert {recent["upload_id"], live["upload_id"]} <= ids
    # Expired a second ago: still answers 410 (its row stays a day); the others go on.
    r = await uploader.complete(recent["upload_id"])
    assert r.status_code == 410 and r.json()["error"]["code"] == "upload_expired"
    r = await uploader.complete(received["upload_id"])
    assert r.status_code == 404
    assert (await uploader.put(live["upload_url"], PNG)).status_code == 200
    assert (await uploader.complete(live["upload_id"])).status_code == 200
    r = await service.client.get(f"/api/media/{done['media_ref']}", headers=uploader.headers)
    assert r.status_code == 200


async def test_unused_blobs_and_leftovers_are_removed_used_ones_kept(
    store: StoreView, service: Service, uploader: Uploader
) -> None:
    from vectorsvc.db.tables import MediaBlob

    used = await uploader.upload(PNG, "image/png")
    used_blob = store.blob(used["sha256"])
    put_blob(store, b"a crash left me here")
    registered = put_blob(store, b"my media row was lost")
    with service.db.session() as session:
        session.add(MediaBlob(sha256=registered.rsplit("/", 1)[-1], size_bytes=21))
    store.write(f"{used_blob}.thumb256.jpg", b"a shared thumbnail of an earlier version")
    week = 7 * 24 * 3600
    store.write("incoming/studio_upload_0123", b"received, never owned")
    store.age("incoming/studio_upload_0123", week)
    new_body = "incoming/studio_upload_4567"  # maybe a PUT committing now
    store.write(new_body, b"just moved in")
    store.write("tmp/part-0123", b"a PUT cut by a crash")
    store.age("tmp/part-0123", week)

    report = service.app.state.vectorsvc.media.collect()
    assert store.files() == sorted([used_blob, new_body])
    assert (report.blobs_removed, report.bytes_freed) == (2, 20 + 21)
    assert (report.incoming_removed, report.partial_removed) == (1, 1)
    assert report.legacy_thumbnails_removed == 1
    with service.db.session() as session:
        assert set(session.scalars(select(MediaBlob.sha256))) == {used["sha256"]}
    r = await service.client.get(
        f"/api/media/{used['media_ref']}/thumbnail", headers=uploader.headers
    )
    assert r.status_code == 200
    # Nothing left to do the second time.
    assert not media_service(service).collect().removed_anything()


async def test_collect_never_deletes_a_blob_an_upload_is_completing_with(
    store: StoreView, service: Service, uploader: Uploader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector lists the blob file while the completing upload has moved it in but not
    yet committed its media row; the collector must then wait for that commit and keep it."""
    ticket = await uploader.init_ok(PNG, "image/png")
    assert (await uploader.put(ticket["upload_url"], PNG)).status_code == 200
    completer, collector = media_service(service), media_service(service)
    moved_in, collector_checks = threading.Event(), threading.Event()

    real_adopt = completer.blobs.adopt

    def adopt(upload_id: str, sha256: str, size_bytes: int) -> None:
        real_adopt(upload_id, sha256, size_bytes)
        moved_in.set()
        assert collector_checks.wait(10)
        time.sleep(0.3)  # let the collector reach its lock on the blob before the commit

    real_drop = media_collector.drop_blob_if_unused

    def drop(session: Session, blobs: MediaStore, sha256: str, *, adopt_orphan: bool) -> int:
        collector_checks.set()
        return real_drop(session, blobs, sha256, adopt_orphan=adopt_orphan)

    completer.blobs.adopt = adopt  # type: ignore[method-assign]
    # Only the collector drops blobs (a completing upload holds them): this times the collector.
    monkeypatch.setattr(media_collector, "drop_blob_if_unused", drop)
    ws = workspace_id(service, "acme")
    reports: list[CollectReport] = []

    def collect() -> None:
        assert moved_in.wait(10)
        reports.append(collector.collect())

    thread = threading.Thread(target=collect)
    thread.start()
    done = await anyio.to_thread.run_sync(
        lambda: completer.complete_upload(workspace_id=ws, upload_id=ticket["upload_id"])
    )
    await anyio.to_thread.run_sync(thread.join, 20)
    assert reports and reports[0].blobs_removed == 0
    assert store.read(store.blob(done.sha256)) == PNG
    r = await service.client.get(f"/api/media/{done.media_ref}/thumbnail", headers=uploader.headers)
    assert r.status_code == 200


async def test_the_app_collects_every_interval(
    tmp_path: Path,
    models_dir: Path,
    embedder_loader: Callable[[ModelSpec], Embedder],
    media_store: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(tmp_path / "data", models_dir, media_gc_interval_s=0.05, **media_store)
    store = StoreView(settings, monkeypatch)
    async with running_service(settings, embedder_loader):
        orphan = put_blob(store, b"collect me")
        with anyio.fail_after(30):
            while store.exists(orphan):
                await anyio.sleep(0.05)
        assert store.files() == []


def test_media_gc_command(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    media_store: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "data"
    for name, value in media_store.items():  # `vectorsvc` reads its settings from the env
        monkeypatch.setenv(f"VECTORSVC_{name.upper()}", value)
    assert main(["workspace", "create", "acme", "--data-dir", str(data)]) == 0
    store = StoreView(make_settings(data, tmp_path / "models", **media_store), monkeypatch)
    orphan = put_blob(store, b"collect me")
    assert main(["media", "gc", "--data-dir", str(data)]) == 0
    assert "blobs_removed: 1" in capsys.readouterr().out
    assert not store.exists(orphan)
