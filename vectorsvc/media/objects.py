"""A stored media item, resolved for one workspace, and the functions that read it.

`resolve_media` turns a workspace's `media_ref` into a `MediaObject` (refs are never shared
across workspaces); `load_image` decodes it within a pixel budget and `thumbnail_bytes`
renders a thumbnail. `MediaService` wraps them with the configured limits and a cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO

from PIL import Image

from vectorsvc.db.database import Database
from vectorsvc.db.tables import Media
from vectorsvc.errors import (
    NotFound,
    ValidationFailed,
)
from vectorsvc.media.content import (
    MediaType,
    is_image_type,
    load_rgb,
)
from vectorsvc.media.schemas import (
    MediaPublic,
)
from vectorsvc.media.storage import MediaStore
from vectorsvc.media.thumbnails import render_thumbnail, thumbnail_side

DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
# The states of an upload (`media_uploads.status`).
PENDING, RECEIVED, COMPLETED, EXPIRED = "pending", "received", "completed", "expired"


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every timestamp here is written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class MediaObject:
    """A stored media item, resolved for one workspace; `open()` reads its blob from `store`."""

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
    store: MediaStore = field(repr=False, compare=False)

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        """The blob's bytes (seekable); `404 media_not_found` if it was deleted after it was
        resolved (a concurrent DELETE), rather than undecodable."""
        try:
            handle = self.store.open_blob(self.sha256)
        except FileNotFoundError:
            raise media_not_found(self.media_ref, "media_ref") from None
        with handle as stream:
            yield stream

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


def media_not_found(media_ref: str, field: str) -> NotFound:
    return NotFound(
        f"{field}: no media {media_ref!r} in this workspace; upload it with "
        "POST /api/media/upload/init and /complete, then use the returned media_ref",
        field=field,
        code="media_not_found",
    )


def to_media_object(row: Media, store: MediaStore) -> MediaObject:
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
        created_at=aware(row.created_at),
        store=store,
    )


def resolve_media(
    db: Database,
    *,
    store: MediaStore,
    workspace_id: str,
    media_ref: str,
    field: str = "media_ref",
) -> MediaObject:
    """The media `media_ref` of `workspace_id`, or `404 media_not_found` naming `field`.

    Another workspace's ref is not found either: refs are never shared across workspaces.
    Blocking (one database read); `store` is where its blob is read from.
    """
    with db.session() as session:
        row = session.get(Media, (workspace_id, media_ref))
        if row is None:
            raise media_not_found(media_ref, field)
        return to_media_object(row, store)


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
    with media.open() as stream:
        return load_rgb(stream, max_pixels=max_pixels, min_side=min_side, max_aspect=max_aspect)


def thumbnail_bytes(
    media: MediaObject, max_side: int = 256, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> bytes:
    """A JPEG thumbnail at `max_side` rounded up to the next of `THUMBNAIL_SIZES` (uncached:
    `MediaService.thumbnail_bytes` caches per workspace)."""
    side = thumbnail_side(max_side)
    if not media.is_image:
        raise _not_an_image(media)
    with media.open() as stream:
        return render_thumbnail(stream, side, max_pixels=max_pixels)


def _not_an_image(media: MediaObject) -> ValidationFailed:
    return ValidationFailed(
        f"media {media.media_ref!r} is {media.content_type}, not an image",
        field="media_ref",
        code="not_an_image",
    )
