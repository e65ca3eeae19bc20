"""Turning run inputs (texts, media refs) into vectors, in input order.

Checks each input's modality against the model, loads images through the media service
(only the caller's workspace's media), and sends texts and images to the model in batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

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


def check_modality(model: ModelSpec, content: Content) -> None:
    modality = "text" if isinstance(content, TextContent) else "image"
    if modality not in model.modalities:
        raise ValidationFailed(
            f"{content.field}: model {model.slug!r} does not take {modality} inputs; it takes "
            f"{', '.join(model.modalities)}",
            field=content.field,
            code="modality_not_supported",
            details={"allowed": list(model.modalities)},
        )


def check_texts(state: AppState, contents: Sequence[Content]) -> None:
    limit = state.settings.max_text_chars
    for content in contents:
        if isinstance(content, TextContent):
            if not content.text.strip():
                raise ValidationFailed(
                    f"{content.field}: text is empty", field=content.field, code="empty_text"
                )
            if len(content.text) > limit:
                raise ValidationFailed(
                    f"{content.field}: text has {len(content.text)} characters; the limit is "
                    f"{limit}",
                    field=content.field,
                    code="text_too_long",
                )


def resolve_images(
    state: AppState, *, workspace_id: str, contents: Sequence[Content]
) -> dict[str, MediaObject]:
    """Every media ref in `contents`, checked to belong to the workspace (blocking)."""
    found: dict[str, MediaObject] = {}
    for content in contents:
        if isinstance(content, ImageContent) and content.media_ref not in found:
            found[content.media_ref] = state.media.resolve(
                workspace_id=workspace_id,
                media_ref=content.media_ref,
                field=f"{content.field}.media_ref",
            )
    return found


async def embed_contents(
    state: AppState,
    *,
    model: ModelSpec,
    workspace_id: str,
    contents: Sequence[Content],
    purpose: Literal["document", "query"],
) -> Embeddings:
    for content in contents:
        check_modality(model, content)
    check_texts(state, contents)
    media = await anyio.to_thread.run_sync(
        partial(resolve_images, state, workspace_id=workspace_id, contents=contents)
    )
    out = np.zeros((len(contents), model.dimension), dtype=np.float32)
    text_idx = [i for i, c in enumerate(contents) if isinstance(c, TextContent)]
    image_idx = [i for i, c in enumerate(contents) if isinstance(c, ImageContent)]
    if text_idx:
        texts = [contents[i].text for i in text_idx]  # type: ignore[union-attr]
        out[text_idx] = await state.embeddings.embed(model, purpose, texts)
    if image_idx:
        refs = [contents[i].media_ref for i in image_idx]  # type: ignore[union-attr]

        def _decode() -> list[object]:
            images: list[object] = []
            for i, ref in zip(image_idx, refs, strict=True):
                try:
                    images.append(state.media.load_image(media[ref]))
                except ServiceError as exc:
                    if exc.status < 500:
                        exc.field = f"{contents[i].field}.media_ref"
                    raise
            return images

        images = await anyio.to_thread.run_sync(_decode)
        out[image_idx] = await state.embeddings.embed(model, "image", images)
    return out
