"""Namespace resolution: the ONLY place collection names, aliases and tenant keys are built.

(workspace, model release, scope) -> collection, alias, tenant key:
- one collection per model release: never two models' (or releases') vectors in one;
- one alias per model, pointed by the platform at its live release;
- a tenant key `<workspace id>/<scope>` in every point's payload, indexed as a keyword with
  `is_tenant=True`; every read, write and delete is filtered by it. The same scope name in
  two workspaces is two tenant keys.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import NewType

from vectorsvc.errors import ValidationFailed
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.points.sparse import has_keywords
from vectorsvc.vectorstore.base import CollectionSpec, Filter, MatchValue

SCOPE_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SCOPE_RULE_TEXT = (
    "a scope starts with a letter or digit, contains only letters, digits, '.', '_' and '-', "
    "and is at most 64 characters"
)

# Payload fields the platform owns. Client metadata lives under `metadata`.
TENANT_FIELD = "_tenant"
WORKSPACE_FIELD = "_ws"
SCOPE_FIELD = "_scope"
ID_FIELD = "id"
TEXT_FIELD = "text"
METADATA_FIELD = "metadata"
INDEXED_AT_FIELD = "indexed_at"
MEDIA_REF_FIELD = "media_ref"
CONTENT_HASH_FIELD = "_hash"  # sha256 of model release, content and metadata (dedupe)
RUN_FIELD = "_run"  # the run that wrote the point (exact resume of background runs)
# A long text's chunks (`points.chunks`); a point without them is its item's one chunk.
CHUNK_FIELD = "_chunk"  # the chunk's number, 0 first
CHUNK_COUNT_FIELD = "_chunks"  # on chunk 0: how many chunks the item has
SPAN_START_FIELD = "_start"  # the chunk's character span in the item's text
SPAN_END_FIELD = "_end"
CHUNK_HASH_FIELD = "_chash"  # sha256 of model release and the chunk's text (vector reuse)

# Fixed namespace for uuid5 point ids: stable across releases of this service.
_POINT_ID_NAMESPACE = uuid.UUID("6f1c8e52-3a0b-4f4e-9d7e-8d7c2b1a9e01")
_COLLECTION_PREFIX = "vs"


# A scope that passed `validate_scope`: the only way a client's scope reaches `resolve`.
# A scope read back from what the service stored (a run, a point) was checked when it was
# stored, and is wrapped as it is read.
Scope = NewType("Scope", str)


def validate_scope(scope: object, *, field: str = "scope") -> Scope:
    """The scope rule, checked here only: each entry point (a run request, a Knowledge
    Bases path) calls it once."""
    if not isinstance(scope, str) or not SCOPE_RULE.match(scope):
        raise ValidationFailed(
            f"invalid scope {scope!r}: {SCOPE_RULE_TEXT}", field=field, code="invalid_scope"
        )
    return Scope(scope)


@dataclass(frozen=True)
class Namespace:
    workspace_id: str
    model_slug: str
    release: str
    scope: str
    collection: str  # the live release's: reads, and the writes the catalog counts
    alias: str
    tenant_key: str
    # Collections that take the same writes and deletes (`points.releases`): a release being
    # filled by a migration, the rollback target after one.
    mirrors: tuple[str, ...] = ()
    # A migration's re-embedding target: its writes land only where the live collection
    # still holds the same item, and the catalog does not count them.
    reembed_from: str | None = None

    @property
    def tenant_filter(self) -> Filter:
        return Filter(must=(MatchValue(key=TENANT_FIELD, value=self.tenant_key),))

    def point_id(self, client_id: str) -> str:
        """Deterministic point id: indexing the same client id again replaces the point."""
        return str(uuid.uuid5(_POINT_ID_NAMESPACE, f"{self.tenant_key}\x1f{client_id}"))

    def chunk_point_id(self, client_id: str, chunk: int) -> str:
        """Chunk `chunk` of an item: chunk 0 is the item's `point_id`."""
        if chunk == 0:
            return self.point_id(client_id)
        name = f"{self.tenant_key}\x1f{client_id}\x1f{chunk}"
        return str(uuid.uuid5(_POINT_ID_NAMESPACE, name))


def collection_name(model: ModelSpec) -> str:
    return release_collection(model.slug, model.release)


def release_collection(slug: str, release: str) -> str:
    """The collection of one release of a model."""
    return f"{_COLLECTION_PREFIX}__{slug}__r{release}"


def release_of(slug: str, collection: str) -> str | None:
    """The release whose collection `collection` is (None: not one of `slug`'s)."""
    prefix = f"{_COLLECTION_PREFIX}__{slug}__r"
    return collection[len(prefix) :] if collection.startswith(prefix) else None


def alias_name(model: ModelSpec) -> str:
    return model_alias(model.slug)


def model_alias(slug: str) -> str:
    return f"{_COLLECTION_PREFIX}__{slug}"


def tenant_key(workspace_id: str, scope: str) -> str:
    return f"{workspace_id}/{scope}"


def resolve(
    *,
    workspace_id: str,
    model: ModelSpec,
    scope: Scope,
    release: str | None = None,
    mirror_releases: tuple[str, ...] = (),
    reembed_from: str | None = None,
) -> Namespace:
    """`release`: the live release (default: the registry's); `mirror_releases` take the
    same writes and deletes; `reembed_from`: the release a migration re-embeds from."""
    return resolve_release(
        workspace_id=workspace_id,
        slug=model.slug,
        release=model.release if release is None else release,
        scope=scope,
        mirror_releases=mirror_releases,
        reembed_from=reembed_from,
    )


def resolve_release(
    *,
    workspace_id: str,
    slug: str,
    release: str,
    scope: Scope,
    mirror_releases: tuple[str, ...] = (),
    reembed_from: str | None = None,
) -> Namespace:
    """A namespace of one release of model `slug` (also of a model that left the registry)."""
    return Namespace(
        workspace_id=workspace_id,
        model_slug=slug,
        release=release,
        scope=scope,
        collection=release_collection(slug, release),
        alias=model_alias(slug),
        tenant_key=tenant_key(workspace_id, scope),
        mirrors=tuple(release_collection(slug, r) for r in mirror_releases),
        reembed_from=None if reembed_from is None else release_collection(slug, reembed_from),
    )


def collection_spec(model: ModelSpec, name: str | None = None) -> CollectionSpec:
    """The collection of `model`'s registry release (or another of its releases, `name`)."""
    return CollectionSpec(
        name=name or collection_name(model),
        dimension=model.dimension,
        tenant_key=TENANT_FIELD,
        keyword_fields=(WORKSPACE_FIELD, SCOPE_FIELD, ID_FIELD),
        float_fields=(CHUNK_FIELD,),  # items are chunk 0 of each (`points.chunks.heads`)
        sparse=has_keywords(model),
    )
