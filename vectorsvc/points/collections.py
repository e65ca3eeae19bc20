"""Collections and aliases: created once per model release, on first write; the release
routing (`points.releases`) says which release a namespace reads and which mirror it."""

from __future__ import annotations

import threading

from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.points import namespaces
from vectorsvc.points.namespaces import Namespace, Scope
from vectorsvc.points.releases import ReleaseRouter
from vectorsvc.vectorstore.base import VectorStore


class CollectionManager:
    """Creates a namespace's collections once, on first write; points a model's alias at its
    live release when the alias does not exist yet (a release change moves it only through
    a migration, `runs.migration`)."""

    def __init__(self, store: VectorStore, releases: ReleaseRouter | None = None) -> None:
        self._store = store
        self.releases = releases or ReleaseRouter()
        self._ready: set[str] = set()
        self._lock = threading.Lock()

    def resolve(self, *, workspace_id: str, model: ModelSpec, scope: Scope) -> Namespace:
        """The namespace a request reads and writes (the live release, its mirrors)."""
        return self.releases.resolve(workspace_id=workspace_id, model=model, scope=scope)

    def ensure(self, model: ModelSpec, ns: Namespace | None = None) -> None:
        """Create `ns`'s collections (default: the registry release's) if absent."""
        live = namespaces.collection_name(model) if ns is None else ns.collection
        names = (live,) if ns is None else (live, *ns.mirrors)
        for name in names:
            if name in self._ready:
                continue
            with self._lock:
                if name in self._ready:
                    continue
                self._store.ensure_collection(namespaces.collection_spec(model, name))
                alias = namespaces.alias_name(model)
                if name == live and (ns is None or ns.reembed_from is None):
                    if self._store.resolve_alias(alias) is None:
                        self._store.set_alias(alias, name)
                self._ready.add(name)

    def exists(self, ns: Namespace) -> bool:
        return ns.collection in self._ready or self._store.collection_exists(ns.collection)
