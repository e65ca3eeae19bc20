"""Collections and aliases: created once per model release, on first write."""

from __future__ import annotations

import threading

from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.points import namespaces
from vectorsvc.vectorstore.base import VectorStore


class CollectionManager:
    """Creates a model release's collection and alias once, on first write."""

    def __init__(self, store: VectorStore) -> None:
        self._store = store
        self._ready: set[str] = set()
        self._lock = threading.Lock()

    def ensure(self, model: ModelSpec) -> None:
        name = namespaces.collection_name(model)
        if name in self._ready:
            return
        with self._lock:
            if name in self._ready:
                return
            self._store.ensure_collection(namespaces.collection_spec(model))
            alias = namespaces.alias_name(model)
            if self._store.resolve_alias(alias) != name:
                self._store.set_alias(alias, name)
            self._ready.add(name)

    def exists(self, model: ModelSpec) -> bool:
        name = namespaces.collection_name(model)
        return name in self._ready or self._store.collection_exists(name)
