"""The lifetime of stored bytes: the blob row lock, and the collector.

Every blob has a `media_blobs` row. A completing upload locks (or inserts) that row before
it moves its bytes in (`hold_blob`); deleting media and the collector lock it too before
they look for media rows of that digest and delete the file (`drop_blob_if_unused`). So a
blob is never deleted while an upload is coming to refer to it: one of the two waits for
the other's commit.

`collect` marks expired uploads, purges their rows a day later, and removes orphaned
received bodies, partial bodies, unreferenced blobs and the shared thumbnails of earlier
versions.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vectorsvc.db.database import Database
from vectorsvc.db.tables import Media, MediaBlob, MediaUpload
from vectorsvc.media.objects import EXPIRED, PENDING, RECEIVED, utcnow
from vectorsvc.media.storage import MediaStore

# How many expired uploads one sweep deletes the bytes of (sweeps run on init).
SWEEP_BATCH = 100
# An expired upload's row stays this long (complete answers 410 upload_expired, not 404).
EXPIRED_UPLOAD_RETENTION = timedelta(days=1)
# Rows the collector deletes per transaction.
PURGE_BATCH = 500


def _lock_blob_row(session: Session, sha256: str) -> bool:
    """Lock blob `sha256`'s row until the session commits (touching `last_used_at`);
    whether the row exists."""
    return (
        session.execute(
            update(MediaBlob)
            .where(MediaBlob.sha256 == sha256)
            .values(last_used_at=utcnow())
            .returning(MediaBlob.sha256)
        ).first()
        is not None
    )


def hold_blob(session: Session, sha256: str, size_bytes: int) -> None:
    """Lock blob `sha256`'s row, inserting it if absent, until the session commits: the
    collector and deletes lock it before they delete the file (see `drop_blob_if_unused`)."""
    held = _lock_blob_row(session, sha256)
    if not held:
        session.add(MediaBlob(sha256=sha256, size_bytes=size_bytes))
        session.flush()  # IntegrityError on Postgres if another upload inserts it now


def drop_blob_if_unused(
    session: Session, blobs: MediaStore, sha256: str, *, adopt_orphan: bool
) -> int:
    """Delete blob `sha256` if no media row uses it; the bytes freed.

    Locks the blob's row first: a completing upload of the same bytes locks it too, so
    one waits for the other. `adopt_orphan` takes a blob file that has no row (left by a
    crash) by inserting its row, which raises `IntegrityError` on Postgres when an upload
    is inserting it at the same moment.
    """
    held = _lock_blob_row(session, sha256)
    if not held:
        if not adopt_orphan:
            return 0  # no row: the collector deals with the file
        session.add(MediaBlob(sha256=sha256, size_bytes=blobs.blob_size(sha256)))
        session.flush()
    used = session.scalar(select(Media.media_ref).where(Media.sha256 == sha256).limit(1))
    if used is not None:
        return 0
    freed = blobs.remove_blob(sha256)  # before the commit, while the row is held
    session.execute(delete(MediaBlob).where(MediaBlob.sha256 == sha256))
    return freed


def sweep_expired(db: Database, blobs: MediaStore, *, now: datetime | None = None) -> int:
    """Drop the received bytes of uploads that expired before completion."""
    now = now or utcnow()
    with db.session() as session:
        rows = session.scalars(
            select(MediaUpload)
            .where(MediaUpload.status == RECEIVED, MediaUpload.expires_at <= now)
            .limit(SWEEP_BATCH)
        ).all()
        for row in rows:
            row.status = EXPIRED
            blobs.remove_incoming(row.id)
        return len(rows)


def collect(
    db: Database, blobs: MediaStore, *, upload_ttl: timedelta, now: datetime | None = None
) -> CollectReport:
    """Purge expired uploads and remove every file the store holds for nothing. Blocking;
    safe beside uploads, completions and deletes, in this and other processes."""
    now = now or utcnow()
    report = CollectReport()
    while swept := sweep_expired(db, blobs, now=now):
        report.uploads_expired += swept
    report.uploads_purged = _purge_uploads(db, blobs, before=now - EXPIRED_UPLOAD_RETENTION)
    report.incoming_removed = _remove_orphaned_incoming(
        db, blobs, before=now - upload_ttl - timedelta(hours=1)
    )
    report.partial_removed = blobs.sweep_temp()
    report.legacy_thumbnails_removed = blobs.remove_legacy_files()
    for sha256 in _unused_blob_candidates(db, blobs):
        try:
            with db.session() as session:
                freed = drop_blob_if_unused(session, blobs, sha256, adopt_orphan=True)
        except IntegrityError:
            continue  # an upload is completing with these bytes: keep them
        if freed:
            report.blobs_removed += 1
            report.bytes_freed += freed
    return report


def _purge_uploads(db: Database, blobs: MediaStore, *, before: datetime) -> int:
    """Delete the rows (and any received bytes) of uploads that expired before `before`."""
    purged = 0
    while True:
        with db.session() as session:
            ids = session.scalars(
                select(MediaUpload.id)
                .where(
                    MediaUpload.status.in_((PENDING, RECEIVED, EXPIRED)),
                    MediaUpload.expires_at <= before,
                )
                .limit(PURGE_BATCH)
            ).all()
            if not ids:
                return purged
            session.execute(delete(MediaUpload).where(MediaUpload.id.in_(ids)))
            for upload_id in ids:
                blobs.remove_incoming(upload_id)
            purged += len(ids)


def _remove_orphaned_incoming(db: Database, blobs: MediaStore, *, before: datetime) -> int:
    """Delete received bodies no received upload owns (a crash between the move and the
    commit). Only old ones: a PUT moves its body in before its transaction commits."""
    cutoff = before.timestamp()
    old = [upload_id for upload_id, mtime in blobs.incoming_files() if mtime < cutoff]
    removed = 0
    for start in range(0, len(old), PURGE_BATCH):
        batch = old[start : start + PURGE_BATCH]
        with db.session() as session:
            owned = set(
                session.scalars(
                    select(MediaUpload.id).where(
                        MediaUpload.id.in_(batch), MediaUpload.status == RECEIVED
                    )
                )
            )
        for upload_id in batch:
            if upload_id not in owned:
                blobs.remove_incoming(upload_id)
                removed += 1
    return removed


def _unused_blob_candidates(db: Database, blobs: MediaStore) -> list[str]:
    """Digests that may be unused: rows no media row refers to, and files without a row.
    Each is checked again, under its row's lock, before anything is deleted."""
    with db.session() as session:
        unused = session.scalars(
            select(MediaBlob.sha256).where(
                ~select(Media.media_ref).where(Media.sha256 == MediaBlob.sha256).exists()
            )
        ).all()
        known = set(session.scalars(select(MediaBlob.sha256)))
    orphans = [sha256 for sha256 in blobs.blob_digests() if sha256 not in known]
    return [*unused, *orphans]


class CollectReport:
    """What one `MediaService.collect` removed."""

    uploads_expired: int = 0
    uploads_purged: int = 0
    incoming_removed: int = 0
    partial_removed: int = 0
    legacy_thumbnails_removed: int = 0
    blobs_removed: int = 0
    bytes_freed: int = 0

    def removed_anything(self) -> bool:
        return any(vars(self).values())
