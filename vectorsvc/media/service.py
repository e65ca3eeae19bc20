"""The media upload flow and the media API other domains (runs) call.

Upload: `init_upload` records a pending upload and returns a single-use PUT token;
`receive_upload` streams the PUT body to a temp file (never more than the byte limit),
checks size and content, and moves it to `incoming/`; `complete_upload` moves it into the
content-addressed store and records the `media_ref`. A rejected PUT stores nothing and
leaves the upload pending, so the client may PUT the right bytes again until it expires.

Use: `MediaService.resolve` (or `resolve_media`) turns a workspace's `media_ref` into a
`MediaObject`; `load_image` and `thumbnail_bytes` read it.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import anyio
from PIL import Image
from sqlalchemy import select, update

from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.db.models import Media, MediaUpload
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
from vectorsvc.media.schemas import (
    MediaPublic,
    UploadCompletePublic,
    UploadInit,
    UploadInitPublic,
    UploadReceivedPublic,
)
from vectorsvc.media.storage import BlobStore, blob_path

UPLOAD_ID_PREFIX = "studio_upload_"
MEDIA_REF_PREFIX = "media_"
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
THUMBNAIL_SIDES = (16, 2048)  # smallest and largest `max_side` a thumbnail may have

# PUT bodies are written in pieces of this size, each in a worker thread.
_WRITE_CHUNK = 1 << 20
# How many expired uploads one sweep deletes the bytes of (sweeps run on init).
_SWEEP_BATCH = 100

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
    return load_rgb(media.path, max_pixels=max_pixels, min_side=min_side, max_aspect=max_aspect)


def thumbnail_bytes(
    media: MediaObject, max_side: int = 256, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> bytes:
    """A JPEG no larger than `max_side` on either side, cached on disk beside the blob.

    The cache is keyed by the blob's digest, so identical uploads share their thumbnails.
    """
    low, high = THUMBNAIL_SIDES
    if not low <= max_side <= high:
        raise ValidationFailed(
            f"max_side must be between {low} and {high}", field="max_side", code="invalid_max_side"
        )
    cached = media.path.with_name(f"{media.path.name}.thumb{max_side}.jpg")
    try:
        return cached.read_bytes()
    except FileNotFoundError:
        pass
    image = load_image(media, max_pixels=max_pixels)
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85, optimize=True)
    data = buffer.getvalue()
    # Write then rename, so that concurrent readers see the whole file or none.
    temp = cached.with_name(f"{cached.name}.{secrets.token_hex(6)}.tmp")
    try:
        temp.write_bytes(data)
        os.replace(temp, cached)
    finally:
        temp.unlink(missing_ok=True)
    return data


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
        image_decode_concurrency: int = 2,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.max_upload_bytes = max_upload_bytes
        self.upload_ttl = timedelta(seconds=upload_ttl_s)
        self.max_image_pixels = max_image_pixels
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
        expires_at = _utcnow() + self.upload_ttl
        with self.db.session() as session:
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
            completed = self._try_complete(workspace_id=workspace_id, upload_id=upload_id)
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
        return thumbnail_bytes(media, max_side, max_pixels=self.max_image_pixels)


def _complete_public(media: Media) -> UploadCompletePublic:
    return UploadCompletePublic(
        media_ref=media.media_ref,
        sha256=media.sha256,
        size_bytes=media.size_bytes,
        content_type=media.content_type,
    )
