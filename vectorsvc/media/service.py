"""The media upload flow and the media API other domains (runs) call.

Upload: `init_upload` records a pending upload and returns a single-use PUT token;
`receive_upload` streams the PUT body to a temp file (never more than the byte limit),
checks size and content, and moves it to `incoming/`; `complete_upload` moves it into the
content-addressed store and records the `media_ref`. A rejected PUT stores nothing and
leaves the upload pending, so the client may PUT the right bytes again until it expires.

Use: `MediaService.resolve` (or `resolve_media`) turns a workspace's `media_ref` into a
`MediaObject`; `load_image` and `thumbnail_bytes` read it.

Storage is bounded and collected:
- Quota: a workspace's stored media plus its open uploads (pending or received, not yet
  expired) stay within `media_quota_bytes` and `media_quota_count`. `init_upload` inserts
  the new upload first and sums after it, in one transaction that holds the workspace (the
  row lock on Postgres, the database write lock on SQLite), so parallel inits cannot
  overshoot.
- Blobs: every blob has a `media_blobs` row. A completing upload locks (or inserts) that row
  before it moves its bytes in; deleting media and the collector lock it too before they
  look for media rows of that digest and delete the file. So a blob is never deleted while
  an upload is coming to refer to it: one of the two waits for the other's commit.
- `delete` removes one media item once no point refers to it (the caller checks, under the
  workspace's write lock) and its blob once no media row of any workspace refers to it.
- `collect` marks expired uploads, purges their rows a day later, and removes orphaned
  received bodies, partial bodies, unreferenced blobs and the shared thumbnails of earlier
  versions.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import anyio
from PIL import Image
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.db.tables import Media, MediaBlob, MediaUpload, Workspace
from vectorsvc.errors import (
    BadRequest,
    Conflict,
    Gone,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    ValidationFailed,
)
from vectorsvc.media.content import (
    MediaType,
    allowed_content_types,
    check_content,
    is_image_type,
    load_rgb,
)
from vectorsvc.media.references import MediaReference
from vectorsvc.media.schemas import (
    MediaPublic,
    MediaUsagePublic,
    UploadCompletePublic,
    UploadInit,
    UploadInitPublic,
    UploadReceivedPublic,
)
from vectorsvc.media.storage import BlobStore, blob_path
from vectorsvc.media.thumbnails import ThumbnailCache, render_thumbnail, thumbnail_side

UPLOAD_ID_PREFIX = "studio_upload_"
MEDIA_REF_PREFIX = "media_"
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000

# PUT bodies are written in pieces of this size, each in a worker thread.
_WRITE_CHUNK = 1 << 20
# How many expired uploads one sweep deletes the bytes of (sweeps run on init).
_SWEEP_BATCH = 100
# An expired upload's row stays this long (complete answers 410 upload_expired, not 404).
EXPIRED_UPLOAD_RETENTION = timedelta(days=1)
# Rows the collector deletes per transaction.
_PURGE_BATCH = 500

PENDING, RECEIVED, COMPLETED, EXPIRED = "pending", "received", "completed", "expired"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every timestamp here is written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class MediaObject:
    """A stored media item, resolved for one workspace. `path` is the blob on local disk."""

    media_ref: str
    workspace_id: str
    media_type: MediaType
    content_type: str
    sha256: str
    size_bytes: int
    filename: str
    width: int | None
    height: int | None
    created_at: datetime
    path: Path

    @property
    def is_image(self) -> bool:
        return is_image_type(self.content_type)

    def public(self) -> MediaPublic:
        return MediaPublic(
            media_ref=self.media_ref,
            media_type=self.media_type,
            content_type=self.content_type,
            filename=self.filename,
            size_bytes=self.size_bytes,
            sha256=self.sha256,
            width=self.width,
            height=self.height,
            created_at=self.created_at,
        )


@dataclass(frozen=True)
class _PendingUpload:
    size_bytes: int
    content_type: str


def _media_not_found(media_ref: str, field: str) -> NotFound:
    return NotFound(
        f"{field}: no media {media_ref!r} in this workspace; upload it with "
        "POST /api/media/upload/init and /complete, then use the returned media_ref",
        field=field,
        code="media_not_found",
    )


def _upload_not_found(upload_id: str, field: str = "upload_id") -> NotFound:
    # The same answer for an unknown id, a wrong token and another workspace's upload,
    # so that no caller can learn that an upload exists.
    return NotFound(
        f"no upload {upload_id!r}; start one with POST /api/media/upload/init",
        field=field,
        code="upload_not_found",
    )


def _upload_expired(upload_id: str, expires_at: datetime) -> Gone:
    return Gone(
        f"upload {upload_id!r} expired at {expires_at.isoformat()}; start a new one with "
        "POST /api/media/upload/init",
        field="upload_id",
        code="upload_expired",
    )


def _too_large(size: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the upload is {size}; the limit is {limit} bytes (VECTORSVC_MAX_UPLOAD_BYTES)",
        field="size_bytes",
        code="upload_too_large",
        details={"max_bytes": limit},
    )


def _size_mismatch(received: str, declared: int) -> BadRequest:
    return BadRequest(
        f"received {received} but size_bytes was {declared} at init; PUT exactly the "
        "declared bytes, or start a new upload with the right size_bytes",
        field="size_bytes",
        code="size_mismatch",
    )


def _to_media_object(row: Media, media_dir: Path) -> MediaObject:
    return MediaObject(
        media_ref=row.media_ref,
        workspace_id=row.workspace_id,
        media_type=MediaType(row.media_type),
        content_type=row.content_type,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        filename=row.filename,
        width=row.width,
        height=row.height,
        created_at=_aware(row.created_at),
        path=blob_path(media_dir, row.sha256),
    )


def resolve_media(
    db: Database,
    *,
    media_dir: Path,
    workspace_id: str,
    media_ref: str,
    field: str = "media_ref",
) -> MediaObject:
    """The media `media_ref` of `workspace_id`, or `404 media_not_found` naming `field`.

    Another workspace's ref is not found either: refs are never shared across workspaces.
    Blocking (one database read); `media_dir` is `settings.media_dir`.
    """
    with db.session() as session:
        row = session.get(Media, (workspace_id, media_ref))
        if row is None:
            raise _media_not_found(media_ref, field)
        return _to_media_object(row, media_dir)


def load_image(
    media: MediaObject,
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    min_side: int | None = None,
    max_aspect: int | None = None,
) -> Image.Image:
    """Decode `media` as an upright (EXIF-transposed) RGB image, refusing too many pixels;
    `min_side` and `max_aspect` make it smaller while decoding (see `load_rgb`)."""
    if not media.is_image:
        raise _not_an_image(media)
    _require_blob(media)
    return load_rgb(media.path, max_pixels=max_pixels, min_side=min_side, max_aspect=max_aspect)


def thumbnail_bytes(
    media: MediaObject, max_side: int = 256, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> bytes:
    """A JPEG thumbnail at `max_side` rounded up to the next of `THUMBNAIL_SIZES` (uncached:
    `MediaService.thumbnail_bytes` caches per workspace)."""
    side = thumbnail_side(max_side)
    if not media.is_image:
        raise _not_an_image(media)
    _require_blob(media)
    return render_thumbnail(media.path, side, max_pixels=max_pixels)


def _require_blob(media: MediaObject) -> None:
    # Deleted after it was resolved (a concurrent DELETE): not found, rather than undecodable.
    if not media.path.is_file():
        raise _media_not_found(media.media_ref, "media_ref")


def _not_an_image(media: MediaObject) -> ValidationFailed:
    return ValidationFailed(
        f"media {media.media_ref!r} is {media.content_type}, not an image",
        field="media_ref",
        code="not_an_image",
    )


class MediaService:
    """The media flow over one database and one blob store, with the configured limits."""

    def __init__(
        self,
        *,
        db: Database,
        blobs: BlobStore,
        max_upload_bytes: int,
        upload_ttl_s: int,
        max_image_pixels: int,
        quota_bytes: int,
        quota_count: int,
        thumbnail_cache_bytes: int,
        image_decode_concurrency: int = 2,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.max_upload_bytes = max_upload_bytes
        self.upload_ttl = timedelta(seconds=upload_ttl_s)
        self.max_image_pixels = max_image_pixels
        self.quota_bytes = quota_bytes
        self.quota_count = quota_count
        self.thumbnails = ThumbnailCache(thumbnail_cache_bytes)
        # Image decodes for the models, process-wide: each may hold a full-resolution image.
        self.decode_limiter = anyio.CapacityLimiter(image_decode_concurrency)

    @classmethod
    def from_settings(cls, settings: Settings, db: Database) -> MediaService:
        return cls(
            db=db,
            blobs=BlobStore(settings.media_dir),
            max_upload_bytes=settings.max_upload_bytes,
            upload_ttl_s=settings.upload_ttl_s,
            max_image_pixels=settings.max_image_pixels,
            quota_bytes=settings.media_quota_bytes,
            quota_count=settings.media_quota_count,
            thumbnail_cache_bytes=settings.thumbnail_cache_mb * 1024 * 1024,
            image_decode_concurrency=settings.image_decode_concurrency,
        )

    # -- upload ---------------------------------------------------------------------------

    def init_upload(
        self,
        *,
        workspace_id: str,
        request: UploadInit,
        upload_url: Callable[[str, str], str],
    ) -> UploadInitPublic:
        """Record a pending upload; `upload_url(upload_id, token)` builds the PUT URL."""
        allowed = allowed_content_types(request.media_type)
        if request.content_type not in allowed:
            family = "" if request.media_type is MediaType.file else f"{request.media_type}/* "
            raise ValidationFailed(
                f"content_type {request.content_type!r} is not a supported {family}type for "
                f"media_type {request.media_type.value!r}; use one of: {', '.join(allowed)}",
                field="content_type",
                code="unsupported_content_type",
                details={"allowed": list(allowed)},
            )
        if request.size_bytes > self.max_upload_bytes:
            raise _too_large(f"{request.size_bytes} bytes", self.max_upload_bytes)
        self.sweep_expired()
        upload_id = f"{UPLOAD_ID_PREFIX}{secrets.token_hex(16)}"
        token = secrets.token_urlsafe(32)
        now = _utcnow()
        expires_at = now + self.upload_ttl
        with self.db.session() as session:
            # One init per workspace at a time on Postgres (no-op on SQLite, where the insert
            # below takes the database's write lock before the sum is read).
            session.execute(
                select(Workspace.id).where(Workspace.id == workspace_id).with_for_update()
            )
            session.add(
                MediaUpload(
                    id=upload_id,
                    workspace_id=workspace_id,
                    token_hash=_token_hash(token),
                    filename=request.filename,
                    content_type=request.content_type,
                    media_type=request.media_type.value,
                    size_bytes=request.size_bytes,
                    status=PENDING,
                    expires_at=expires_at,
                )
            )
            session.flush()
            usage = _usage(session, workspace_id, now)
            if usage.bytes > self.quota_bytes or usage.count > self.quota_count:
                raise self._quota_exceeded(usage, request.size_bytes)  # rolls the insert back
        return UploadInitPublic(
            upload_id=upload_id,
            upload_url=upload_url(upload_id, token),
            expires_at=expires_at,
            max_bytes=self.max_upload_bytes,
        )

    async def receive_upload(
        self,
        *,
        upload_id: str,
        token: str,
        body: AsyncIterator[bytes],
        content_length: int | None,
    ) -> UploadReceivedPublic:
        """Accept the PUT body of a pending upload, or raise before anything is stored."""
        pending = await anyio.to_thread.run_sync(
            partial(self._open_for_put, upload_id=upload_id, token=token)
        )
        limit = self.max_upload_bytes
        # Refuse on the declared length before reading a byte of the body.
        if content_length is not None and content_length > limit:
            raise _too_large(f"{content_length} bytes (Content-Length)", limit)
        if content_length is not None and content_length != pending.size_bytes:
            raise _size_mismatch(f"Content-Length {content_length}", pending.size_bytes)
        temp = self.blobs.new_temp_path()
        try:
            size, sha256 = await self._stream_to_file(body, temp, limit=limit)
            if size != pending.size_bytes:
                raise _size_mismatch(f"{size} bytes", pending.size_bytes)
            info = await anyio.to_thread.run_sync(
                partial(
                    check_content,
                    temp,
                    pending.content_type,
                    max_pixels=self.max_image_pixels,
                )
            )
            await anyio.to_thread.run_sync(
                partial(
                    self._accept_put,
                    upload_id=upload_id,
                    temp=temp,
                    sha256=sha256,
                    width=info.width,
                    height=info.height,
                )
            )
        finally:
            temp.unlink(missing_ok=True)
        return UploadReceivedPublic(upload_id=upload_id, size_bytes=size, sha256=sha256)

    async def _stream_to_file(
        self, body: AsyncIterator[bytes], temp: Path, *, limit: int
    ) -> tuple[int, str]:
        """Write `body` to `temp`; stop with 413 as soon as more than `limit` bytes came."""
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray()
        with temp.open("wb") as handle:

            def write(data: bytes) -> None:
                digest.update(data)
                handle.write(data)

            async for chunk in body:
                size += len(chunk)
                if size > limit:
                    raise _too_large(f"more than {limit} bytes", limit)
                buffer += chunk
                if len(buffer) >= _WRITE_CHUNK:
                    data = bytes(buffer)
                    buffer.clear()
                    await anyio.to_thread.run_sync(write, data)
            if buffer:
                await anyio.to_thread.run_sync(write, bytes(buffer))
        return size, digest.hexdigest()

    def _open_for_put(self, *, upload_id: str, token: str) -> _PendingUpload:
        with self.db.session() as session:
            upload = session.get(MediaUpload, upload_id)
            # Compare digests in constant time: the token is the PUT's only credential.
            if upload is None or not hmac.compare_digest(upload.token_hash, _token_hash(token)):
                raise _upload_not_found(upload_id, field="upload_url")
            if upload.status in (RECEIVED, COMPLETED):
                raise Conflict(
                    f"upload {upload_id!r} has already received its bytes (an upload URL is "
                    "single use); complete it, or start a new upload",
                    field="upload_url",
                    code="upload_already_received",
                )
            expires_at = _aware(upload.expires_at)
            if upload.status == EXPIRED or expires_at <= _utcnow():
                raise _upload_expired(upload_id, expires_at)
            return _PendingUpload(size_bytes=upload.size_bytes, content_type=upload.content_type)

    def _accept_put(
        self,
        *,
        upload_id: str,
        temp: Path,
        sha256: str,
        width: int | None,
        height: int | None,
    ) -> None:
        with self.db.session() as session:
            # A conditional update claims the upload, so of two racing PUTs only one wins.
            claimed = session.execute(
                update(MediaUpload)
                .where(MediaUpload.id == upload_id, MediaUpload.status == PENDING)
                .values(status=RECEIVED, sha256=sha256, width=width, height=height)
                .returning(MediaUpload.id)
            ).first()
            if claimed is None:
                raise Conflict(
                    f"upload {upload_id!r} has already received its bytes",
                    field="upload_url",
                    code="upload_already_received",
                )
            # Inside the transaction: if the move fails, the upload stays pending.
            os.replace(temp, self.blobs.incoming_path(upload_id))

    def complete_upload(self, *, workspace_id: str, upload_id: str) -> UploadCompletePublic:
        """Store the received bytes and return their `media_ref`; idempotent."""
        for _ in range(2):
            try:
                completed = self._try_complete(workspace_id=workspace_id, upload_id=upload_id)
            except IntegrityError:
                continue  # Postgres: a concurrent upload of the same bytes made the blob row
            if completed is not None:
                return completed
        # Lost the race twice to a concurrent complete that then rolled back.
        raise Conflict(
            f"upload {upload_id!r} is being completed concurrently; retry",
            field="upload_id",
            code="upload_busy",
        )

    def _try_complete(self, *, workspace_id: str, upload_id: str) -> UploadCompletePublic | None:
        with self.db.session() as session:
            upload = session.get(MediaUpload, upload_id)
            if upload is None or upload.workspace_id != workspace_id:
                raise _upload_not_found(upload_id)
            if upload.status == COMPLETED and upload.media_ref is not None:
                media = session.get(Media, (workspace_id, upload.media_ref))
                if media is None:  # pragma: no cover - the two rows are written together
                    raise ServiceError(f"upload {upload_id!r} lost its media row")
                return _complete_public(media)
            expires_at = _aware(upload.expires_at)
            if upload.status == EXPIRED or expires_at <= _utcnow():
                raise _upload_expired(upload_id, expires_at)
            if upload.status != RECEIVED or upload.sha256 is None:
                raise Conflict(
                    f"upload {upload_id!r} has not received its bytes; PUT them to the "
                    "upload_url from init first",
                    field="upload_id",
                    code="upload_not_received",
                )
            media_ref = f"{MEDIA_REF_PREFIX}{secrets.token_hex(16)}"
            claimed = session.execute(
                update(MediaUpload)
                .where(MediaUpload.id == upload_id, MediaUpload.status == RECEIVED)
                .values(status=COMPLETED, media_ref=media_ref)
                .returning(MediaUpload.id)
            ).first()
            if claimed is None:
                return None  # a concurrent complete won: read its result
            _hold_blob(session, upload.sha256, upload.size_bytes)
            self.blobs.adopt(self.blobs.incoming_path(upload_id), upload.sha256)
            media = Media(
                workspace_id=workspace_id,
                media_ref=media_ref,
                upload_id=upload_id,
                sha256=upload.sha256,
                size_bytes=upload.size_bytes,
                content_type=upload.content_type,
                media_type=upload.media_type,
                filename=upload.filename,
                width=upload.width,
                height=upload.height,
            )
            session.add(media)
            return _complete_public(media)

    def sweep_expired(self, *, now: datetime | None = None) -> int:
        """Drop the received bytes of uploads that expired before completion."""
        now = now or _utcnow()
        with self.db.session() as session:
            rows = session.scalars(
                select(MediaUpload)
                .where(MediaUpload.status == RECEIVED, MediaUpload.expires_at <= now)
                .limit(_SWEEP_BATCH)
            ).all()
            for row in rows:
                row.status = EXPIRED
                self.blobs.incoming_path(row.id).unlink(missing_ok=True)
            return len(rows)

    # -- use --------------------------------------------------------------------------------

    def resolve(
        self, *, workspace_id: str, media_ref: str, field: str = "media_ref"
    ) -> MediaObject:
        """The workspace's media `media_ref`, or `404 media_not_found` naming `field`."""
        return resolve_media(
            self.db,
            media_dir=self.blobs.root,
            workspace_id=workspace_id,
            media_ref=media_ref,
            field=field,
        )

    def load_image(
        self, media: MediaObject, *, min_side: int | None = None, max_aspect: int | None = None
    ) -> Image.Image:
        return load_image(
            media, max_pixels=self.max_image_pixels, min_side=min_side, max_aspect=max_aspect
        )

    def thumbnail_bytes(self, media: MediaObject, max_side: int = 256) -> bytes:
        """The thumbnail at `max_side` rounded up to a fixed size, cached for its workspace."""
        key = (media.workspace_id, media.media_ref, thumbnail_side(max_side))
        cached = self.thumbnails.get(key)
        if cached is not None:
            return cached
        data = thumbnail_bytes(media, key[2], max_pixels=self.max_image_pixels)
        self.thumbnails.put(key, data)
        return data

    # -- quota, delete, collect -------------------------------------------------------------

    def usage(self, *, workspace_id: str) -> MediaUsagePublic:
        """What the workspace's media and open uploads hold, against its quota."""
        with self.db.session() as session:
            usage = _usage(session, workspace_id, _utcnow())
        return MediaUsagePublic(
            used_bytes=usage.bytes,
            limit_bytes=self.quota_bytes,
            used_count=usage.count,
            limit_count=self.quota_count,
        )

    def _quota_exceeded(self, usage: _Usage, size_bytes: int) -> Conflict:
        used_bytes, used_count = usage.bytes - size_bytes, usage.count - 1
        if usage.bytes > self.quota_bytes:
            what = (
                f"{used_bytes} of its {self.quota_bytes} bytes (VECTORSVC_MEDIA_QUOTA_BYTES) "
                f"are in use and this upload is {size_bytes} bytes"
            )
        else:
            what = (
                f"{used_count} of its {self.quota_count} media items "
                "(VECTORSVC_MEDIA_QUOTA_COUNT) are in use"
            )
        return Conflict(
            f"the workspace's media quota is full: {what} (uploads not yet completed or "
            "expired count too); delete media with DELETE /api/media/{media_ref}",
            field="size_bytes",
            code="media_quota_exceeded",
            details={
                "limit_bytes": self.quota_bytes,
                "used_bytes": used_bytes,
                "requested_bytes": size_bytes,
                "limit_count": self.quota_count,
                "used_count": used_count,
            },
        )

    def delete(
        self,
        *,
        workspace_id: str,
        media_ref: str,
        references: Callable[[MediaObject], Sequence[MediaReference]],
    ) -> None:
        """Delete the workspace's media `media_ref` unless `references(media)` finds points
        that use it (`409 media_in_use` listing them); its blob goes too when no media row
        of any workspace uses it. Blocking. The caller holds the workspace's write lock, so
        that no index run stores a point between the check and the delete."""
        media = self.resolve(workspace_id=workspace_id, media_ref=media_ref)
        found = references(media)
        if found:
            points = sum(ref.points for ref in found)
            where = ", ".join(f"{ref.model}/{ref.scope}" for ref in found)
            raise Conflict(
                f"media {media_ref!r} is used by {points} indexed item(s) in {where}; delete "
                "those items first (details.references lists their ids), then the media",
                field="media_ref",
                code="media_in_use",
                details={"references": [ref.public() for ref in found]},
            )
        with self.db.session() as session:
            row = session.get(Media, (workspace_id, media_ref))
            if row is None:  # a concurrent delete won
                raise _media_not_found(media_ref, "media_ref")
            session.delete(row)
            # The upload goes too: completing it again answers 404, not a lost media row.
            session.execute(delete(MediaUpload).where(MediaUpload.id == row.upload_id))
            session.flush()
            self._drop_blob_if_unused(session, row.sha256, adopt_orphan=False)
        self.thumbnails.discard(workspace_id, media_ref)

    def _drop_blob_if_unused(self, session: Session, sha256: str, *, adopt_orphan: bool) -> int:
        """Delete blob `sha256` if no media row uses it; the bytes freed.

        Locks the blob's row first: a completing upload of the same bytes locks it too, so
        one waits for the other. `adopt_orphan` takes a blob file that has no row (left by a
        crash) by inserting its row, which raises `IntegrityError` on Postgres when an upload
        is inserting it at the same moment.
        """
        held = session.execute(
            update(MediaBlob)
            .where(MediaBlob.sha256 == sha256)
            .values(last_used_at=_utcnow())
            .returning(MediaBlob.sha256)
        ).first()
        if held is None:
            if not adopt_orphan:
                return 0  # no row: the collector deals with the file
            session.add(MediaBlob(sha256=sha256, size_bytes=self.blobs.blob_size(sha256)))
            session.flush()
        used = session.scalar(select(Media.media_ref).where(Media.sha256 == sha256).limit(1))
        if used is not None:
            return 0
        freed = self.blobs.remove_blob(sha256)  # before the commit, while the row is held
        session.execute(delete(MediaBlob).where(MediaBlob.sha256 == sha256))
        return freed

    def collect(self, *, now: datetime | None = None) -> CollectReport:
        """Purge expired uploads and remove every file the store holds for nothing. Blocking;
        safe beside uploads, completions and deletes, in this and other processes."""
        now = now or _utcnow()
        report = CollectReport()
        while swept := self.sweep_expired(now=now):
            report.uploads_expired += swept
        report.uploads_purged = self._purge_uploads(before=now - EXPIRED_UPLOAD_RETENTION)
        report.incoming_removed = self._remove_orphaned_incoming(
            before=now - self.upload_ttl - timedelta(hours=1)
        )
        report.partial_removed = self.blobs.sweep_temp()
        for legacy in self.blobs.legacy_files():
            legacy.unlink(missing_ok=True)
            report.legacy_thumbnails_removed += 1
        for sha256 in self._unused_blob_candidates():
            try:
                with self.db.session() as session:
                    freed = self._drop_blob_if_unused(session, sha256, adopt_orphan=True)
            except IntegrityError:
                continue  # an upload is completing with these bytes: keep them
            if freed:
                report.blobs_removed += 1
                report.bytes_freed += freed
        return report

    def _purge_uploads(self, *, before: datetime) -> int:
        """Delete the rows (and any received bytes) of uploads that expired before `before`."""
        purged = 0
        while True:
            with self.db.session() as session:
                ids = session.scalars(
                    select(MediaUpload.id)
                    .where(
                        MediaUpload.status.in_((PENDING, RECEIVED, EXPIRED)),
                        MediaUpload.expires_at <= before,
                    )
                    .limit(_PURGE_BATCH)
                ).all()
                if not ids:
                    return purged
                session.execute(delete(MediaUpload).where(MediaUpload.id.in_(ids)))
                for upload_id in ids:
                    self.blobs.incoming_path(upload_id).unlink(missing_ok=True)
                purged += len(ids)

    def _remove_orphaned_incoming(self, *, before: datetime) -> int:
        """Delete received bodies no received upload owns (a crash between the move and the
        commit). Only old ones: a PUT moves its body in before its transaction commits."""
        cutoff = before.timestamp()
        old = [upload_id for upload_id, mtime in self.blobs.incoming_files() if mtime < cutoff]
        removed = 0
        for start in range(0, len(old), _PURGE_BATCH):
            batch = old[start : start + _PURGE_BATCH]
            with self.db.session() as session:
                owned = set(
                    session.scalars(
                        select(MediaUpload.id).where(
                            MediaUpload.id.in_(batch), MediaUpload.status == RECEIVED
                        )
                    )
                )
            for upload_id in batch:
                if upload_id not in owned:
                    self.blobs.incoming_path(upload_id).unlink(missing_ok=True)
                    removed += 1
        return removed

    def _unused_blob_candidates(self) -> list[str]:
        """Digests that may be unused: rows no media row refers to, and files without a row.
        Each is checked again, under its row's lock, before anything is deleted."""
        with self.db.session() as session:
            unused = session.scalars(
                select(MediaBlob.sha256).where(
                    ~select(Media.media_ref).where(Media.sha256 == MediaBlob.sha256).exists()
                )
            ).all()
            known = set(session.scalars(select(MediaBlob.sha256)))
        orphans = [sha256 for sha256 in self.blobs.blob_digests() if sha256 not in known]
        return [*unused, *orphans]


def _complete_public(media: Media) -> UploadCompletePublic:
    return UploadCompletePublic(
        media_ref=media.media_ref,
        sha256=media.sha256,
        size_bytes=media.size_bytes,
        content_type=media.content_type,
    )


@dataclass(frozen=True)
class _Usage:
    bytes: int
    count: int


def _usage(session: Session, workspace_id: str, now: datetime) -> _Usage:
    """Stored media plus uploads still open (pending or received, not expired)."""
    stored_bytes, stored_count = session.execute(
        select(func.coalesce(func.sum(Media.size_bytes), 0), func.count()).where(
            Media.workspace_id == workspace_id
        )
    ).one()
    open_bytes, open_count = session.execute(
        select(func.coalesce(func.sum(MediaUpload.size_bytes), 0), func.count()).where(
            MediaUpload.workspace_id == workspace_id,
            MediaUpload.status.in_((PENDING, RECEIVED)),
            MediaUpload.expires_at > now,
        )
    ).one()
    return _Usage(
        bytes=int(stored_bytes) + int(open_bytes), count=int(stored_count) + int(open_count)
    )


def _hold_blob(session: Session, sha256: str, size_bytes: int) -> None:
    """Lock blob `sha256`'s row, inserting it if absent, until the session commits: the
    collector and deletes lock it before they delete the file (see `_drop_blob_if_unused`)."""
    held = session.execute(
        update(MediaBlob)
        .where(MediaBlob.sha256 == sha256)
        .values(last_used_at=_utcnow())
        .returning(MediaBlob.sha256)
    ).first()
    if held is None:
        session.add(MediaBlob(sha256=sha256, size_bytes=size_bytes))
        session.flush()  # IntegrityError on Postgres if another upload inserts it now


@dataclass
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
