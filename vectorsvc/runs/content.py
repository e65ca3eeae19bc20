"""Turning run inputs (texts, media refs) into vectors, in input order.

Checks each input's modality against the model, resolves media refs through the media
service (only the caller's workspace's media), decodes images, and sends texts and images to
the model. `prepare` and `embed_prepared` are separate so callers can dedupe in between
(a content hash needs the media's sha256, not the embedding).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import anyio
import numpy as np

from embedders.base import Embeddings
from vectorsvc.errors import ServiceError, ValidationFailed
from vectorsvc.media.service import MediaObject
from vectorsvc.models.registry import ModelSpec
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


def content_hash(model: ModelSpec, fingerprint: str, metadata: dict[str, Any]) -> str:
    """Unchanged hash = unchanged point: same model release, content and metadata."""
    canonical = json.dumps(
        {"model": model.slug, "release": model.release, "content": fingerprint, "meta": metadata},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_content(state: AppState, model: ModelSpec, content: Content) -> None:
    modality = "text" if isinstance(content, TextContent) else "image"
    if modality not in model.modalities:
        raise ValidationFailed(
            f"{content.field}: model {model.slug!r} does not take {modality} inputs; it takes "
            f"{', '.join(model.modalities)}",
            field=content.field,
            code="modality_not_supported",
            details={"allowed": list(model.modalities)},
        )
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


def decode_images(
    state: AppState, prepared: Prepared, indexes: Sequence[int]
) -> list[Any | ServiceError]:
    """Decode the images at `indexes` (blocking); a failure is returned in its slot."""
    out: list[Any | ServiceError] = []
    for i in indexes:
        content = prepared.contents[i]
        assert isinstance(content, ImageContent)
        try:
            out.append(state.media.load_image(prepared.media[content.media_ref]))
        except ServiceError as exc:
            if exc.status < 500:
                exc.field = f"{content.field}.media_ref"
            out.append(exc)
    return out


async def embed_prepared(
    state: AppState,
    *,
    model: ModelSpec,
    prepared: Prepared,
    indexes: Sequence[int] | None = None,
    purpose: Literal["document", "query"],
) -> tuple[Embeddings, dict[int, ServiceError]]:
    """Vectors for `prepared.contents[indexes]` (all by default), in that order.

    Images that fail to decode are left as zero rows and reported by position in the second
    value; texts never fail here (they were checked in `prepare`).
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
    if text_rows:
        texts = [prepared.contents[chosen[row]].text for row in text_rows]  # type: ignore[union-attr]
        out[text_rows] = await state.embeddings.embed(model, purpose, texts)
    if image_rows:
        decoded = await anyio.to_thread.run_sync(
            partial(decode_images, state, prepared, [chosen[row] for row in image_rows])
        )
        good_rows = []
        images = []
        for row, image in zip(image_rows, decoded, strict=True):
            if isinstance(image, ServiceError):
                failures[row] = image
            else:
                good_rows.append(row)
                images.append(image)
        if images:
            out[good_rows] = await state.embeddings.embed(model, "image", images)
    return out, failures


async def embed_contents(
    state: AppState,
    *,
    model: ModelSpec,
    workspace_id: str,
    contents: Sequence[Content],
    purpose: Literal["document", "query"],
) -> Embeddings:
    """Prepare and embed all `contents`; any failure raises."""
    prepared = await prepare(state, model=model, workspace_id=workspace_id, contents=contents)
    vectors, failures = await embed_prepared(state, model=model, prepared=prepared, purpose=purpose)
    if failures:
        raise failures[min(failures)]
    return vectors
