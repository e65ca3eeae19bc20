"""Thumbnails: a small fixed set of sizes, rendered from a reduced decode, cached in memory
per workspace.

- Sizes: a requested `max_side` (16..2048) is rounded up to the next of `THUMBNAIL_SIZES`
  (512 at most), so a blob has at most four thumbnails however many sizes clients ask for.
- Decoding: JPEG decodes straight at 1/2, 1/4 or 1/8 scale (`Image.draft`), other formats
  shrink by whole factors (`reducing_gap`) before the final resampling; at most
  `_RENDERS_AT_ONCE` renders run at a time, so a burst of requests for large images cannot
  hold many full decodes in memory together.
- Caching: keyed by (workspace, media_ref, size) and bounded in bytes. Never shared between
  workspaces: how fast a thumbnail answers must not tell one workspace that another holds
  the same image.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path
from typing import IO

from PIL import Image, ImageOps

from vectorsvc.errors import ValidationFailed
from vectorsvc.media.content import open_image

THUMBNAIL_SIZES = (64, 128, 256, 512)
MAX_SIDE_RANGE = (16, 2048)  # the `max_side` values accepted, each rounded to a size

_RENDERS_AT_ONCE = 2
_JPEG_QUALITY = 85

CacheKey = tuple[str, str, int]  # workspace id, media_ref, size


def thumbnail_side(max_side: int) -> int:
    """The size served for a requested `max_side`: the next of `THUMBNAIL_SIZES` up."""
    low, high = MAX_SIDE_RANGE
    if not low <= max_side <= high:
        raise ValidationFailed(
            f"max_side must be between {low} and {high}; it is rounded up to one of "
            f"{', '.join(map(str, THUMBNAIL_SIZES))}",
            field="max_side",
            code="invalid_max_side",
            details={"sizes": list(THUMBNAIL_SIZES)},
        )
    return next((size for size in THUMBNAIL_SIZES if size >= max_side), THUMBNAIL_SIZES[-1])


_renders = threading.BoundedSemaphore(_RENDERS_AT_ONCE)


def render_thumbnail(path: Path | IO[bytes], side: int, *, max_pixels: int) -> bytes:
    """A JPEG of the image at `path` (a file name or an open file), upright, no larger than
    `side` on either side."""
    with _renders, open_image(path, max_pixels=max_pixels) as image:
        image.draft(None, (side, side))  # JPEG only: decode at a reduced scale
        upright = ImageOps.exif_transpose(image)
        # Transparent pixels on white, as the image is shown (see `content.load_rgb`).
        transparent = upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info
        working = upright.convert("RGBA" if transparent else "RGB")
        working.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
        if transparent:
            background = Image.new("RGBA", working.size, (255, 255, 255, 255))
            working = Image.alpha_composite(background, working).convert("RGB")
    buffer = io.BytesIO()
    working.save(buffer, format="JPEG", quality=_JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


class ThumbnailCache:
    """Rendered thumbnails by (workspace, media_ref, size), least recently used out first,
    holding at most `max_bytes` of JPEG. Thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[CacheKey, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[CacheKey]:
        with self._lock:
            return list(self._entries)

    def get(self, key: CacheKey) -> bytes | None:
        with self._lock:
            data = self._entries.get(key)
            if data is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: CacheKey, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._entries[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted)

    def discard(self, workspace_id: str, media_ref: str) -> None:
        """Forget every size of one media item (it was deleted)."""
        with self._lock:
            for size in THUMBNAIL_SIZES:
                data = self._entries.pop((workspace_id, media_ref, size), None)
                if data is not None:
                    self._bytes -= len(data)
