"""The media upload flow and the media API other domains (runs) call.

Upload: `init_upload` records a pending upload and returns a single-use PUT token;
`receive_upload` streams the PUT body to a temp file (never more than the byte limit),
checks size and content, and hands it to the store's `incoming/`; `complete_upload` makes
it a content-addressed blob and records the `media_ref`. The store is local disk or S3
(`storage.MediaStore`, picked by `stores.open_media_store`). A rejected PUT stores nothing and
leaves the upload pending, so the client may PUT the right bytes again until it expires.

Use: `MediaService.resolve` (or `objects.resolve_media`) turns a workspace's `media_ref`
into a `MediaObject`; `load_image` and `thumbnail_bytes` read it.

Storage is bounded and collected:
- Quota: a workspace's stored media plus its open uploads (pending or received, not yet
  expired) stay within `media_quota_bytes` and `media_quota_count`. `init_upload` inserts
  the new upload first and sums after it, in one transaction that holds the workspace (the
  row lock on Postgres, the database write lock on SQLite), so parallel inits cannot
  overshoot.
- Blobs: every blob has a `media_blobs` row that uploads, deletes and the collector lock
  before they touch its file (`collector`), so a blob is never deleted while an upload is
  coming to refer to it.
- `delete` removes one media item once no point refers to it (the caller checks, under the
  workspace's write lock) and its blob once no media row of any workspace refers to it.
- `collect` (`collector.collect`) removes expired uploads and every file held for nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

import anyio
from PIL import Image
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.db.tables import Media, MediaUpload, Workspace
from vectorsvc.errors import (
    BadRequest,
    Conflict,
    Gone,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    ValidationFailed,
)
from vectorsvc.media import collector
from vectorsvc.media.collector import CollectReport
from vectorsvc.media.content import (
    MediaType,
    allowed_content_types,
    check_content,
)
from vectorsvc.media.objects import (
    COMPLETED,
    EXPIRED,
    PENDING,
    RECEIVED,
    MediaObject,
    aware,
    load_image,
    media_not_found,
    resolve_media,
    thumbnail_bytes,
    utcnow,
)
from vectorsvc.media.references import MediaReference
from vectorsvc.media.schemas import (
    MediaUsagePublic,
    UploadCompletePublic,
    UploadInit,
    UploadInitPublic,
    UploadReceivedPublic,
)
from vectorsvc.media.storage import MediaStore
from vectorsvc.media.stores import open_media_store
from vectorsvc.media.thumbnails import ThumbnailCache, thumbnail_side

UPLOAD_ID_PREFIX = "studio_upload_"
MEDIA_REF_PREFIX = "media_"

# PUT bodies are written in pieces of this size, each in a worker thread.
_WRITE_CHUNK = 1 << 20


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class _PendingUpload:
    size_bytes: int
    content_type: str


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


class MediaService:
    """The media flow over one database and one media store, with the configured limits."""

    def __init__(
        self,
        *,
        db: Database,
        blobs: MediaStore,
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
            blobs=open_media_store(settings),
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
        now = utcnow()
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
            expires_at = aware(upload.expires_at)
            if upload.status == EXPIRED or expires_at <= utcnow():
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
            # Inside the transaction: if storing fails, the upload stays pending.
            self.blobs.put_incoming(upload_id, temp, sha256=sha256)

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
            expires_at = aware(upload.expires_at)
            if upload.status == EXPIRED or expires_at <= utcnow():
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
            collector.hold_blob(session, upload.sha256, upload.size_bytes)
            self.blobs.adopt(upload_id, upload.sha256, upload.size_bytes)
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
        return collector.sweep_expired(self.db, self.blobs, now=now)

    # -- use --------------------------------------------------------------------------------

    def resolve(
        self, *, workspace_id: str, media_ref: str, field: str = "media_ref"
    ) -> MediaObject:
        """The workspace's media `media_ref`, or `404 media_not_found` naming `field`."""
        return resolve_media(
            self.db,
            store=self.blobs,
            workspace_id=workspace_id,
            media_ref=media_ref,
            field=field,
        )

    def require_present(self, *, workspace_id: str, media_refs: Sequence[str]) -> None:
        """`404 media_not_found` if any of `media_refs` is no longer the workspace's (deleted
        after a run resolved it). Index writes call it under the workspace's write lock,
        which `DELETE /api/media/{ref}` holds too, so a write never stores a dangling ref."""
        wanted = set(media_refs)
        if not wanted:
            return
        with self.db.session() as session:
            present = set(
                session.scalars(
                    select(Media.media_ref).where(
                        Media.workspace_id == workspace_id, Media.media_ref.in_(wanted)
                    )
                )
            )
        missing = sorted(wanted - present)
        if missing:
            raise media_not_found(missing[0], "media_ref")

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
            usage = _usage(session, workspace_id, utcnow())
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
                raise media_not_found(media_ref, "media_ref")
            session.delete(row)
            # The upload goes too: completing it again answers 404, not a lost media row.
            session.execute(delete(MediaUpload).where(MediaUpload.id == row.upload_id))
            session.flush()
            collector.drop_blob_if_unused(session, self.blobs, row.sha256, adopt_orphan=False)
        self.thumbnails.discard(workspace_id, media_ref)

    def collect(self, *, now: datetime | None = None) -> CollectReport:
        """Purge expired uploads and remove every file the store holds for nothing. Blocking;
        safe beside uploads, completions and deletes, in this and other processes."""
        return collector.collect(self.db, self.blobs, upload_ttl=self.upload_ttl, now=now)


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
