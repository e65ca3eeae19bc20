"""Which indexed points use a media item: the check behind `DELETE /api/media/{media_ref}`.

Read from the vector store itself (the collection of every model that takes images, the
workspace's points whose payload `media_ref` is the item), not from a count kept beside
it: a count would drift whenever a crash fell between a point's write and the count's
update, and a count too low here deletes media that points still show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vectorsvc.model_registry.registry import ModelRegistry
from vectorsvc.points import namespaces
from vectorsvc.vectorstore.base import Filter, MatchValue, VectorStore

# Bounds on what one refused delete lists: scopes per model, and item ids per scope.
MAX_SCOPES = 100
ITEM_IDS_PER_SCOPE = 10


@dataclass(frozen=True)
class MediaReference:
    """Points of one knowledge base (model, scope) that use a media item."""

    model: str
    scope: str
    points: int
    item_ids: tuple[str, ...]  # the first few, to delete with the knowledge-base API

    def public(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "scope": self.scope,
            "points": self.points,
            "item_ids": list(self.item_ids),
        }


def find_references(
    store: VectorStore, registry: ModelRegistry, *, workspace_id: str, media_ref: str
) -> list[MediaReference]:
    """The workspace's knowledge bases whose points use `media_ref` (blocking)."""
    uses = Filter(
        must=(
            MatchValue(key=namespaces.WORKSPACE_FIELD, value=workspace_id),
            MatchValue(key=namespaces.MEDIA_REF_FIELD, value=media_ref),
        )
    )
    found: list[MediaReference] = []
    for model in registry.models:
        # The live release's collection, as searches read it.
        collection = store.resolve_alias(namespaces.alias_name(model)) or ""
        if "image" not in model.modalities or not collection:
            continue
        per_scope = store.facet(collection, namespaces.SCOPE_FIELD, filter=uses, limit=MAX_SCOPES)
        for scope, points in sorted(per_scope.items()):
            # Stored scopes were checked when their points were written.
            ns = namespaces.resolve(
                workspace_id=workspace_id, model=model, scope=namespaces.Scope(scope)
            )
            page = store.scroll(
                collection,
                filter=ns.tenant_filter.and_(uses.must[1]),
                limit=ITEM_IDS_PER_SCOPE,
            )
            item_ids = tuple(str(p.payload.get(namespaces.ID_FIELD)) for p in page.points)
            found.append(MediaReference(model.slug, scope, points, item_ids))
    return found
