"""Turning run inputs (texts, media refs) into vectors, in input order.

Checks each text against the server's limits, resolves media refs through the media
service (only the caller's workspace's media), decodes images, and sends texts and images to
the model (the modalities were checked at the gate, or item by item by `gate.check_item`).
`prepare` and `embed_prepared` are separate so callers can dedupe in between (a content
hash needs the media's sha256, not the embedding).

Images are what can take memory: each distinct image (by sha256) of a run is decoded once
for all its references, made small for the models while it is decoded, and decoded and
embedded `IMAGE_BATCH` at a time, so that a run holds one batch of small images and at most
one full-resolution decode; a synchronous run's images are capped in pixels up front.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import anyio
import numpy as np
from PIL.Image import Image

from embedders.base import Embeddings
from vectorsvc.errors import ServiceError, ValidationFailed
from vectorsvc.media.content import TRIM_AFTER_PIXELS, release_freed_memory
from vectorsvc.media.objects import MediaObject
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.state import AppState


@dataclass(frozen=True)
class TextContent:
    text: str
    field: str


@dataclass(frozen=True)
class ImageContent:
    media_ref: str
    field: str


Content = TextContent | ImageContent


@dataclass(frozen=True)
class Prepared:
    """Contents checked and their media resolved: ready to hash and to embed."""

    contents: list[Content]
    media: dict[str, MediaObject]

    def fingerprint(self, index: int) -> str:
        """What the vector depends on: text, or the image bytes' sha256 (not the ref)."""
        content = self.contents[index]
        if isinstance(content, TextContent):
            return "text:" + content.text
        return "image:" + self.media[content.media_ref].sha256


def check_content(state: AppState, model: ModelSpec, content: Content) -> None:
    if isinstance(content, TextContent):
        limit = state.settings.max_text_chars
        if not content.text.strip():
            raise ValidationFailed(
                f"{content.field}: text is empty", field=content.field, code="empty_text"
            )
        if len(content.text) > limit:
            raise ValidationFailed(
                f"{content.field}: text has {len(content.text)} characters; the limit is {limit}",
                field=content.field,
                code="text_too_long",
            )


def resolve_media(
    state: AppState, *, workspace_id: str, content: ImageContent, known: dict[str, MediaObject]
) -> None:
    """Resolve one media ref into `known` (blocking); 404 `media_not_found` names the field."""
    if content.media_ref not in known:
        known[content.media_ref] = state.media.resolve(
            workspace_id=workspace_id,
            media_ref=content.media_ref,
            field=f"{content.field}.media_ref",
        )


async def prepare(
    state: AppState, *, model: ModelSpec, workspace_id: str, contents: Sequence[Content]
) -> Prepared:
    """Check every content; the first problem raises (a synchronous run is all or nothing)."""
    for content in contents:
        check_content(state, model, content)

    def _resolve() -> dict[str, MediaObject]:
        known: dict[str, MediaObject] = {}
        for content in contents:
            if isinstance(content, ImageContent):
                resolve_media(state, workspace_id=workspace_id, content=content, known=known)
        return known

    has_media = any(isinstance(content, ImageContent) for content in contents)
    media = await anyio.to_thread.run_sync(_resolve) if has_media else {}
    return Prepared(contents=list(contents), media=media)


async def prepare_each(
    state: AppState, *, model: ModelSpec, workspace_id: str, contents: Sequence[Content]
) -> tuple[Prepared, list[int], dict[int, ServiceError]]:
    """Check each content and resolve its media on its own (a background run: a bad item
    fails alone). The prepared contents are those that passed; the second value gives their
    indexes in `contents`, the third each other's problem."""

    def _check() -> tuple[dict[str, MediaObject], list[int], dict[int, ServiceError]]:
        known: dict[str, MediaObject] = {}
        ok: list[int] = []
        problems: dict[int, ServiceError] = {}
        for i, content in enumerate(contents):
            try:
                check_content(state, model, content)
                if isinstance(content, ImageContent):
                    resolve_media(state, workspace_id=workspace_id, content=content, known=known)
            except ServiceError as exc:
                problems[i] = exc
                continue
            ok.append(i)
        return known, ok, problems

    media, ok, problems = await anyio.to_thread.run_sync(_check)
    return Prepared(contents=[contents[i] for i in ok], media=media), ok, problems


# The image models resize an image's shorter side to 224 (CLIP) or 256 (EfficientNet) pixels
# and look at a centred square of it: decoding at no less than twice that keeps their input
# (nearly) the same, and the middle of a panorama, 4 times as long as high, holds that square.
MODEL_IMAGE_MIN_SIDE = 512
MODEL_IMAGE_MAX_ASPECT = 4
# Distinct images decoded, then embedded, together: a run holds no more decoded images.
IMAGE_BATCH = 8


@dataclass
class ImageDecode:
    """One distinct image of a run (by its bytes' sha256) and the output rows that use it."""

    media: MediaObject
    rows: list[int]
    fields: list[str]  # the media_ref field of each row, for errors

    @property
    def full_pixels(self) -> int:
        """Its pixels at full resolution, as recorded at upload (0 when unknown)."""
        media = self.media
        if not media.is_image or media.width is None or media.height is None:
            return 0
        return media.width * media.height


def distinct_images(
    prepared: Prepared, chosen: Sequence[int], rows: Sequence[int]
) -> list[ImageDecode]:
    """The images at output `rows` (`chosen[row]` in `prepared`), one per distinct content."""
    by_digest: dict[str, ImageDecode] = {}
    for row in rows:
        content = prepared.contents[chosen[row]]
        assert isinstance(content, ImageContent)
        media = prepared.media[content.media_ref]
        decode = by_digest.setdefault(media.sha256, ImageDecode(media, [], []))
        decode.rows.append(row)
        decode.fields.append(f"{content.field}.media_ref")
    return list(by_digest.values())


def check_decoded_pixels(decodes: Sequence[ImageDecode], limit: int) -> None:
    """422 `too_many_decoded_pixels` when the distinct images add up to more than `limit`
    pixels at full resolution; the error names the first image past the limit."""
    total = sum(decode.full_pixels for decode in decodes)
    if total <= limit:
        return
    running = 0
    for decode in decodes:
        running += decode.full_pixels
        if running > limit:
            field = decode.fields[0]
            break
    raise ValidationFailed(
        f"{field}: this run's images add up to {total} pixels at full resolution "
        f"({len(decodes)} distinct images; repeats of one image count once); the limit is "
        f"{limit} decoded pixels per run (VECTORSVC_MAX_DECODED_PIXELS_PER_RUN): split the "
        "images over several runs, or send smaller images",
        field=field,
        code="too_many_decoded_pixels",
        details={"limit": limit, "pixels": total},
    )


def decode_images(state: AppState, decodes: Sequence[ImageDecode]) -> list[Image | ServiceError]:
    """Decode `decodes` one after another, each made small for the models while it is decoded
    (blocking); a failure is returned in its slot."""
    out: list[Image | ServiceError] = []
    for decode in decodes:
        try:
            out.append(
                state.media.load_image(
                    decode.media, min_side=MODEL_IMAGE_MIN_SIDE, max_aspect=MODEL_IMAGE_MAX_ASPECT
                )
            )
        except ServiceError as exc:
            out.append(exc)
    if sum(decode.full_pixels for decode in decodes) >= TRIM_AFTER_PIXELS:
        release_freed_memory()
    return out


def _at(exc: ServiceError, field: str) -> ServiceError:
    """`exc` for one reference to the image (a client error names that reference's field)."""
    if exc.status >= 500:
        return exc
    return ServiceError(
        exc.message, field=field, code=exc.code, status=exc.status, details=exc.details
    )


async def embed_images(
    state: AppState,
    model: ModelSpec,
    decodes: Sequence[ImageDecode],
    out: Embeddings,
    failures: dict[int, ServiceError],
) -> None:
    """Embed `decodes` into their rows of `out`, `IMAGE_BATCH` at a time: decode a batch,
    embed it, let it go. Each image is decoded and embedded once for all its rows."""
    for start in range(0, len(decodes), IMAGE_BATCH):
        await _embed_batch(state, model, decodes[start : start + IMAGE_BATCH], out, failures)


async def _embed_batch(
    state: AppState,
    model: ModelSpec,
    batch: Sequence[ImageDecode],
    out: Embeddings,
    failures: dict[int, ServiceError],
) -> None:
    decoded = await anyio.to_thread.run_sync(
        partial(decode_images, state, batch), limiter=state.media.decode_limiter
    )
    images: list[Image] = []
    rows: list[list[int]] = []
    for decode, result in zip(batch, decoded, strict=True):
        if isinstance(result, ServiceError):
            for row, field in zip(decode.rows, decode.fields, strict=True):
                failures[row] = _at(result, field)
        else:
            images.append(result)
            rows.append(decode.rows)
    # Emptied, not just dropped: the worker thread that decoded them still holds `decoded`
    # (as its last result) until it is given other work.
    decoded.clear()
    del result
    if images:
        vectors = await state.embeddings.embed(model, "image", images)
        for where, vector in zip(rows, vectors, strict=True):
            out[where] = vector
        images.clear()


async def embed_prepared(
    state: AppState,
    *,
    model: ModelSpec,
    prepared: Prepared,
    indexes: Sequence[int] | None = None,
    purpose: Literal["document", "query"],
    max_decoded_pixels: int | None = None,
) -> tuple[Embeddings, dict[int, ServiceError]]:
    """Vectors for `prepared.contents[indexes]` (all by default), in that order.

    Images that fail to decode are left as zero rows and reported by position in the second
    value; texts never fail here (they were checked in `prepare`). With `max_decoded_pixels`,
    images that add up to more (`check_decoded_pixels`) raise before any is decoded.
    """
    chosen = list(range(len(prepared.contents))) if indexes is None else list(indexes)
    out = np.zeros((len(chosen), model.dimension), dtype=np.float32)
    failures: dict[int, ServiceError] = {}
    text_rows = [
        row for row, i in enumerate(chosen) if isinstance(prepared.contents[i], TextContent)
    ]
    image_rows = [
        row for row, i in enumerate(chosen) if isinstance(prepared.contents[i], ImageContent)
    ]
    decodes = distinct_images(prepared, chosen, image_rows)
    if max_decoded_pixels is not None:
        check_decoded_pixels(decodes, max_decoded_pixels)
    if text_rows:
        texts = [prepared.contents[chosen[row]].text for row in text_rows]  # type: ignore[union-attr]
        out[text_rows] = await state.embeddings.embed(model, purpose, texts)
    if decodes:
        await embed_images(state, model, decodes, out, failures)
    return out, failures


async def embed_contents(
    state: AppState,
    *,
    model: ModelSpec,
    workspace_id: str,
    contents: Sequence[Content],
    purpose: Literal["document", "query"],
) -> Embeddings:
    """Prepare and embed all `contents` (a synchronous run: its images may decode to at most
    `max_decoded_pixels_per_run` pixels); any failure raises."""
    prepared = await prepare(state, model=model, workspace_id=workspace_id, contents=contents)
    vectors, failures = await embed_prepared(
        state,
        model=model,
        prepared=prepared,
        purpose=purpose,
        max_decoded_pixels=state.settings.max_decoded_pixels_per_run,
    )
    if failures:
        raise failures[min(failures)]
    return vectors
