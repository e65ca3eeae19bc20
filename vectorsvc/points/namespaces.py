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
    collection: str
    alias: str
    tenant_key: str

    @property
    def tenant_filter(self) -> Filter:
        return Filter(must=(MatchValue(key=TENANT_FIELD, value=self.tenant_key),))

    def point_id(self, client_id: str) -> str:
        """Deterministic point id: indexing the same client id again replaces the point."""
        return str(uuid.uuid5(_POINT_ID_NAMESPACE, f"{self.tenant_key}\x1f{client_id}"))


def collection_name(model: ModelSpec) -> str:
    return f"{_COLLECTION_PREFIX}__{model.slug}__r{model.release}"


def alias_name(model: ModelSpec) -> str:
    return f"{_COLLECTION_PREFIX}__{model.slug}"


def tenant_key(workspace_id: str, scope: str) -> str:
    return f"{workspace_id}/{scope}"


def resolve(*, workspace_id: str, model: ModelSpec, scope: Scope) -> Namespace:
    return Namespace(
        workspace_id=workspace_id,
        model_slug=model.slug,
        release=model.release,
        scope=scope,
        collection=collection_name(model),
        alias=alias_name(model),
        tenant_key=tenant_key(workspace_id, scope),
    )


def collection_spec(model: ModelSpec) -> CollectionSpec:
    return CollectionSpec(
        name=collection_name(model),
        dimension=model.dimension,
        tenant_key=TENANT_FIELD,
        keyword_fields=(WORKSPACE_FIELD, SCOPE_FIELD, ID_FIELD),
        sparse=has_keywords(model),
    )
