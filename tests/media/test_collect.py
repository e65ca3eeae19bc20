"""Collection: expired uploads are purged (bytes at expiry, rows a day later), and files the
store holds for nothing (unused blobs, orphaned bodies, old shared thumbnails) are removed,
never a blob that an upload is completing with. By `MediaService.collect`, a task of the
app's lifespan and `vectorsvc media gc`."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from embedders.base import Embedder
from tests.harness import Service, make_settings, running_service
from tests.helpers import Uploader, encode
from tests.media.conftest import media_service, stored_files, workspace_id
from vectorsvc.cli import main
from vectorsvc.db.tables import MediaUpload
from vectorsvc.media import collector as media_collector
from vectorsvc.media.storage import BlobStore
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


def put_blob(media_dir: Path, data: bytes) -> Path:
    """A blob file as a crash would leave it: on disk, no media row."""
    sha256 = hashlib.sha256(data).hexdigest()
    path = media_dir / "blobs" / sha256[:2] / sha256
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


async def test_expired_uploads_lose_their_bytes_at_once_and_their_rows_a_day_later(
    service: Service, uploader: Uploader
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
    incoming = service.settings.media_dir / "incoming"
    assert {p.name for p in incoming.iterdir()} == {received["upload_id"], recent["upload_id"]}

    report = media_service(service).collect()
    assert (report.uploads_expired, report.uploads_purged) == (2, 2)
    assert list(incoming.iterdir()) == []
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
    service: Service, uploader: Uploader
) -> None:
    from vectorsvc.db.tables import MediaBlob

    media_dir = service.settings.media_dir
    used = await uploader.upload(PNG, "image/png")
    used_blob = media_dir / "blobs" / used["sha256"][:2] / used["sha256"]
    put_blob(media_dir, b"a crash left me here")
    registered = put_blob(media_dir, b"my media row was lost")
    with service.db.session() as session:
        session.add(MediaBlob(sha256=registered.name, size_bytes=21))
    legacy = used_blob.with_name(f"{used_blob.name}.thumb256.jpg")
    legacy.write_bytes(b"a shared thumbnail of an earlier version")
    old_body = media_dir / "incoming" / "studio_upload_0123"
    old_body.write_bytes(b"received, never owned")
    week_ago = time.time() - 7 * 24 * 3600
    os.utime(old_body, (week_ago, week_ago))
    new_body = media_dir / "incoming" / "studio_upload_4567"  # maybe a PUT committing now
    new_body.write_bytes(b"just moved in")
    old_part = media_dir / "tmp" / "part-0123"
    old_part.write_bytes(b"a PUT cut by a crash")
    os.utime(old_part, (week_ago, week_ago))

    report = service.app.state.vectorsvc.media.collect()
    assert stored_files(media_dir) == sorted([used_blob, new_body])
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
    service: Service, uploader: Uploader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector lists the blob file while the completing upload has moved it in but not
    yet committed its media row; the collector must then wait for that commit and keep it."""
    ticket = await uploader.init_ok(PNG, "image/png")
    assert (await uploader.put(ticket["upload_url"], PNG)).status_code == 200
    completer, collector = media_service(service), media_service(service)
    moved_in, collector_checks = threading.Event(), threading.Event()

    real_adopt = completer.blobs.adopt

    def adopt(source: Path, sha256: str) -> Path:
        path = real_adopt(source, sha256)
        moved_in.set()
        assert collector_checks.wait(10)
        time.sleep(0.3)  # let the collector reach its lock on the blob before the commit
        return path

    real_drop = media_collector.drop_blob_if_unused

    def drop(session: Session, blobs: BlobStore, sha256: str, *, adopt_orphan: bool) -> int:
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
    blob = service.settings.media_dir / "blobs" / done.sha256[:2] / done.sha256
    assert blob.read_bytes() == PNG
    r = await service.client.get(f"/api/media/{done.media_ref}/thumbnail", headers=uploader.headers)
    assert r.status_code == 200


async def test_the_app_collects_every_interval(
    tmp_path: Path, models_dir: Path, embedder_loader: Callable[[ModelSpec], Embedder]
) -> None:
    settings = make_settings(tmp_path / "data", models_dir, media_gc_interval_s=0.05)
    async with running_service(settings, embedder_loader):
        orphan = put_blob(settings.media_dir, b"collect me")
        with anyio.fail_after(30):
            while orphan.exists():
                await anyio.sleep(0.05)
        assert stored_files(settings.media_dir) == []


def test_media_gc_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert main(["workspace", "create", "acme", "--data-dir", str(data)]) == 0
    orphan = put_blob(data / "media", b"collect me")
    assert main(["media", "gc", "--data-dir", str(data)]) == 0
    assert "blobs_removed: 1" in capsys.readouterr().out
    assert not orphan.exists()
