"""What the bytes are: supported content types, magic-byte sniffing, guarded image decoding.

A client's `content_type` is a claim; every upload is checked against it here before
anything is stored. Images are also decoded with Pillow under a pixel limit, because a
small file can declare an enormous canvas (a decompression bomb).
"""

from __future__ import annotations

import codecs
import ctypes
import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO

from PIL import ExifTags, Image, UnidentifiedImageError

from vectorsvc.errors import ServiceError, ValidationFailed

# How many leading bytes the magic-byte checks look at.
HEAD_BYTES = 64
# After decoding an image this large (or a batch of images this large together), freed
# memory is handed back to the system (`release_freed_memory`).
TRIM_AFTER_PIXELS = 4_000_000


class MediaType(StrEnum):
    image = "image"
    audio = "audio"
    video = "video"
    file = "file"


def _ftyp(head: bytes) -> bool:
    # ISO base media (mp4, m4a, mov): a box of type 'ftyp' first.
    return head[4:8] == b"ftyp"


def _riff(kind: bytes) -> Callable[[bytes], bool]:
    return lambda head: head[:4] == b"RIFF" and head[8:12] == kind


def _mpeg_audio(head: bytes) -> bool:
    # An ID3 tag, or an MPEG frame sync (11 set bits).
    return head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


def _quicktime(head: bytes) -> bool:
    return _ftyp(head) or head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip")


def _prefix(*prefixes: bytes) -> Callable[[bytes], bool]:
    return lambda head: head.startswith(prefixes)


_EBML = _prefix(b"\x1a\x45\xdf\xa3")  # Matroska / WebM

# Content type -> magic-byte check on the head of the file. Text types are checked on the
# whole file instead (see `_is_utf8_text`); None means any bytes are acceptable.
_MAGIC: dict[str, Callable[[bytes], bool] | None] = {
    "image/png": _prefix(b"\x89PNG\r\n\x1a\n"),
    "image/jpeg": _prefix(b"\xff\xd8\xff"),
    "image/gif": _prefix(b"GIF87a", b"GIF89a"),
    "image/webp": _riff(b"WEBP"),
    "audio/mpeg": _mpeg_audio,
    "audio/wav": _riff(b"WAVE"),
    "audio/ogg": _prefix(b"OggS"),
    "audio/flac": _prefix(b"fLaC"),
    "audio/mp4": _ftyp,
    "audio/webm": _EBML,
    "video/mp4": _ftyp,
    "video/quicktime": _quicktime,
    "video/webm": _EBML,
    "video/ogg": _prefix(b"OggS"),
    "application/pdf": _prefix(b"%PDF-"),
    "application/zip": _prefix(b"PK\x03\x04", b"PK\x05\x06"),
    "application/octet-stream": None,
}
_TEXT_TYPES = frozenset({"text/plain", "text/csv", "text/markdown", "application/json"})

SUPPORTED_CONTENT_TYPES: tuple[str, ...] = tuple(sorted({*_MAGIC, *_TEXT_TYPES}))

_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "audio/mp3": "audio/mpeg",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/x-flac": "audio/flac",
    "audio/x-m4a": "audio/mp4",
    "audio/m4a": "audio/mp4",
}

# Pillow's format name for each image content type we decode.
_PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}


def normalize_content_type(value: str) -> str:
    """`Image/JPG; charset=x` -> `image/jpeg`: lower case, no parameters, aliases folded."""
    base = value.split(";", 1)[0].strip().lower()
    return _ALIASES.get(base, base)


def allowed_content_types(media_type: MediaType) -> tuple[str, ...]:
    """`file` accepts every supported type; the others only their own family (image/*, ...)."""
    if media_type is MediaType.file:
        return SUPPORTED_CONTENT_TYPES
    return tuple(t for t in SUPPORTED_CONTENT_TYPES if t.startswith(f"{media_type.value}/"))


def is_image_type(content_type: str) -> bool:
    return content_type in _PIL_FORMATS


def sniff(head: bytes) -> str | None:
    """The first content type whose magic bytes match `head` (for error messages)."""
    for content_type, check in _MAGIC.items():
        if check is not None and check(head):
            return content_type
    return None


def _is_utf8_text(path: Path) -> bool:
    # Incremental, so a 20 MB text file is checked in 1 MiB pieces, never held whole.
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                if b"\x00" in chunk:
                    return False
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


@dataclass(frozen=True)
class ContentInfo:
    width: int | None = None
    height: int | None = None


def _mismatch(content_type: str, head: bytes) -> ValidationFailed:
    seen = sniff(head)
    looks_like = f"they look like {seen}" if seen else "their type is not recognised"
    return ValidationFailed(
        f"the uploaded bytes are not {content_type} ({looks_like}); upload a real "
        f"{content_type} file or declare the right content_type at init",
        field="content_type",
        code="content_mismatch",
    )


def check_content(path: Path, content_type: str, *, max_pixels: int) -> ContentInfo:
    """Raise a 4xx `ServiceError` unless the file at `path` really is `content_type`."""
    with path.open("rb") as handle:
        head = handle.read(HEAD_BYTES)
    if content_type in _TEXT_TYPES:
        if not _is_utf8_text(path):
            raise _mismatch(content_type, head)
        return ContentInfo()
    check = _MAGIC[content_type]
    if check is not None and not check(head):
        raise _mismatch(content_type, head)
    if not is_image_type(content_type):
        return ContentInfo()
    with open_image(path, max_pixels=max_pixels, field="content_type") as image:
        if image.format != _PIL_FORMATS[content_type]:
            raise _mismatch(content_type, head)
        try:
            # A full decode: truncated or corrupt data fails here, not later in a run.
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise _invalid_image(content_type, exc) from None
        width, height = image.size
    if width * height >= TRIM_AFTER_PIXELS:
        release_freed_memory()
    return ContentInfo(width=width, height=height)


def _invalid_image(content_type: str, exc: BaseException) -> ValidationFailed:
    return ValidationFailed(
        f"the {content_type} image cannot be decoded ({exc}); it is corrupt or truncated",
        field="content_type",
        code="invalid_image",
    )


def _too_many_pixels(detail: str, max_pixels: int, field: str) -> ServiceError:
    return ValidationFailed(
        f"the image is too large: {detail}; the limit is {max_pixels} pixels "
        "(VECTORSVC_MAX_IMAGE_PIXELS)",
        field=field,
        code="image_too_many_pixels",
    )


def open_image(path: Path | IO[bytes], *, max_pixels: int, field: str = "media_ref") -> Image.Image:
    """Open (header only) an image and refuse it before decoding if it has too many pixels.

    Our own limit is checked on the declared size; Pillow's `DecompressionBombError`
    (raised by `Image.open` beyond twice `Image.MAX_IMAGE_PIXELS`) maps to the same error.
    Pillow's `DecompressionBombWarning` fires only above `Image.MAX_IMAGE_PIXELS` (~89 MP),
    which the check below refuses as well while the limit is at its 50 MP default.
    """
    try:
        image = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(str(exc), max_pixels, field) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _invalid_image("uploaded", exc) from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise _too_many_pixels(f"{width}x{height} = {width * height} pixels", max_pixels, field)
    return image


def load_rgb(
    path: Path | IO[bytes],
    *,
    max_pixels: int,
    min_side: int | None = None,
    max_aspect: int | None = None,
) -> Image.Image:
    """Decode an image as RGB, rotated upright by its EXIF orientation.

    Transparent pixels become white (not the black a plain RGB conversion gives), which is
    what a person sees the image on.

    With `min_side`, the image is made smaller while it is decoded, never below `min_side`
    pixels on its shorter side: a JPEG decodes at 1/2, 1/4 or 1/8 scale (`Image.draft`, DCT
    scaling: the full-size pixels never exist), other formats are averaged down by a whole
    factor (`Image.reduce`) right after decoding. With `max_aspect`, an image longer than
    `max_aspect` times its shorter side keeps only its middle part of that length. An image
    that needs neither comes out exactly as without them.
    """
    with open_image(path, max_pixels=max_pixels) as image:
        if min_side is not None:
            image.draft(None, (min_side, min_side))  # JPEG only; other formats ignore it
        try:
            image.load()
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise _invalid_image(Image.MIME.get(image.format or "", "stored"), exc) from None
        frame: Image.Image = image
        if min_side is not None:
            frame = _reduce(frame, min_side)
        method = _EXIF_TRANSPOSE.get(orientation)
        if method is not None:
            frame = frame.transpose(method)
        if max_aspect is not None:
            frame = _middle(frame, max_aspect)
        return _flat_rgb(frame)


# EXIF orientation -> the transpose that makes the image upright (as `ImageOps.exif_transpose`).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def _flat_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparent pixels on white."""
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _reduce(image: Image.Image, min_side: int) -> Image.Image:
    """`image` averaged down by the largest whole factor that keeps `min_side` pixels."""
    factor = min(image.size) // min_side
    if factor < 2:
        return image
    if image.mode in ("RGBA", "LA"):
        # Averaged with premultiplied alpha, so that the colour of transparent pixels (often
        # black) does not bleed into their neighbours.
        premultiplied = {"RGBA": "RGBa", "LA": "La"}[image.mode]
        return image.convert(premultiplied).reduce(factor).convert(image.mode)
    if image.mode == "1":
        return image.convert("L").reduce(factor)  # grey, not RGB: a third of the memory
    if image.mode not in ("L", "RGB"):
        # Palette, 16-bit, CMYK...: into RGB(A) first, as `_flat_rgb` would.
        return _reduce(image.convert("RGBA" if _has_alpha(image) else "RGB"), min_side)
    return image.reduce(factor)


def _middle(image: Image.Image, max_aspect: int) -> Image.Image:
    """The middle of `image`, at most `max_aspect` times as long as its shorter side."""
    width, height = image.size
    keep = min(width, height) * max_aspect
    if width > keep:
        left = (width - keep) // 2
        return image.crop((left, 0, left + keep, height))
    if height > keep:
        top = (height - keep) // 2
        return image.crop((0, top, width, top + keep))
    return image


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to call
        return None
    return trim


def release_freed_memory() -> None:
    """Hand memory that large decodes freed back to the system (glibc only).

    Pillow holds a decoded image in 16 MB blocks; once freed, glibc keeps them in its heap
    for reuse, so the process stays as large as its largest burst of decodes.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
