"""Model runtime: lazy, shared embedders and dynamic batching of concurrent requests.

Each model gets one worker thread (an executor we own), so model calls never run on the
event loop and never contend with each other. Concurrent requests of the same kind
(documents, queries, images) queue up while the model is busy and go into the next call
together; an optional bounded wait (`batch_wait_ms`) lets a burst gather first.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import numpy as np

from embedders.base import Embedder, Embeddings, MissingDependency, WeightsUnavailable
from embedders.factory import check_weights, config_keys, create_embedder
from vectorsvc.errors import Unavailable
from vectorsvc.models.registry import ModelRegistry, ModelSpec

logger = logging.getLogger(__name__)

InputKind = Literal["document", "query", "image"]
EmbedderLoader = Callable[[ModelSpec], Embedder]
# Called after each model call with (model slug, input kind, batch size, seconds).
BatchObserver = Callable[[str, str, int, float], None]


WeightsCheck = Callable[[ModelSpec], None]


@dataclass(frozen=True)
class EmbedderSettings:
    """What the platform adds to a registry entry's embedder config."""

    models_dir: str
    batch_size: int = 64
    allow_downloads: bool = False

    def config_for(self, spec: ModelSpec) -> dict[str, Any]:
        config = dict(spec.embedder.config)
        keys = config_keys(spec.embedder.kind)
        config.setdefault("batch_size", self.batch_size)
        config.setdefault("models_dir", self.models_dir)
        if "allow_download" in keys:
            config.setdefault("allow_download", self.allow_downloads)
        return config

    def load(self, spec: ModelSpec) -> Embedder:
        return create_embedder(spec.embedder.kind, **self.config_for(spec))

    def check(self, spec: ModelSpec) -> None:
        check_weights(spec.embedder.kind, **self.config_for(spec))


def default_loader(models_dir: str, batch_size: int) -> EmbedderLoader:
    """Build an embedder from the registry entry: `embedder.kind` with its config."""
    return EmbedderSettings(models_dir=models_dir, batch_size=batch_size).load


@dataclass
class _Request:
    inputs: Sequence[Any]
    future: asyncio.Future[Embeddings]


@dataclass
class _Lane:
    queue: asyncio.Queue[_Request] = field(default_factory=asyncio.Queue)
    worker: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class BatchStats:
    calls: int
    items: int


class ModelRuntime:
    """One model: its weights (loaded on first use) and its worker thread."""

    def __init__(
        self, spec: ModelSpec, loader: EmbedderLoader, on_batch: BatchObserver | None = None
    ) -> None:
        self.spec = spec
        self._loader = loader
        self._on_batch = on_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{spec.slug}")
        self._load_lock = threading.Lock()
        self._embedder: Embedder | None = None
        self.unavailable: WeightsUnavailable | None = None
        self.calls = 0
        self.items = 0

    def load(self) -> Embedder:
        with self._load_lock:
            if self._embedder is None:
                started = time.perf_counter()
                try:
                    self._embedder = self._loader(self.spec)
                except WeightsUnavailable as exc:
                    self.unavailable = exc
                    raise
                except MissingDependency as exc:
                    self.unavailable = WeightsUnavailable(self.spec.slug, str(exc), exc.pip_install)
                    raise self.unavailable from exc
                logger.info(
                    "loaded model %s in %.1fs: %s",
                    self.spec.slug,
                    time.perf_counter() - started,
                    self._embedder.describe(),
                )
            return self._embedder

    @property
    def loaded(self) -> bool:
        return self._embedder is not None

    def run(self, kind: InputKind, inputs: Sequence[Any]) -> Embeddings:
        """Blocking model call; runs on this model's worker thread."""
        embedder = self.load()
        self.calls += 1
        self.items += len(inputs)
        started = time.perf_counter()
        if kind == "document":
            vectors = embedder.embed_texts(inputs)
        elif kind == "query":
            vectors = embedder.embed_queries(inputs)
        else:
            vectors = embedder.embed_images(inputs)
        if self._on_batch is not None:
            self._on_batch(self.spec.slug, kind, len(inputs), time.perf_counter() - started)
        return vectors

    async def submit(self, kind: InputKind, inputs: Sequence[Any]) -> Embeddings:
        return await asyncio.wrap_future(self._executor.submit(self.run, kind, inputs))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class EmbeddingService:
    def __init__(
        self,
        registry: ModelRegistry,
        *,
        loader: EmbedderLoader,
        batch_wait_ms: float = 1.0,
        max_batch_items: int = 256,
        on_batch: BatchObserver | None = None,
        weights_check: WeightsCheck | None = None,
    ) -> None:
        self._on_batch = on_batch
        self._weights_check = weights_check
        self._registry = registry
        self._runtimes: dict[str, ModelRuntime] = {}
        self._lanes: dict[tuple[str, InputKind], _Lane] = {}
        self._loader = loader
        self._batch_wait_s = batch_wait_ms / 1000.0
        self._max_batch_items = max_batch_items
        self._lock = threading.Lock()

    def runtime(self, spec: ModelSpec) -> ModelRuntime:
        with self._lock:
            runtime = self._runtimes.get(spec.slug)
            if runtime is None:
                runtime = ModelRuntime(spec, self._loader, self._on_batch)
                self._runtimes[spec.slug] = runtime
            return runtime

    def preload(self, slugs: Sequence[str]) -> None:
        """Load models at start-up (blocking). A model whose weights are absent is logged."""
        for slug in slugs:
            spec = self._registry.get(slug)
            try:
                self.runtime(spec).load()
            except WeightsUnavailable as exc:
                logger.warning("model %s is not available: %s", slug, exc)

    async def embed(self, spec: ModelSpec, kind: InputKind, inputs: Sequence[Any]) -> Embeddings:
        if not inputs:
            return np.zeros((0, spec.dimension), dtype=np.float32)
        runtime = self.runtime(spec)
        if not runtime.loaded:
            # Cheap file checks first: a missing model answers 503 at once instead of
            # trying (and timing out on) a download.
            missing = await anyio.to_thread.run_sync(self.availability, spec)
            if missing is not None:
                raise _unavailable(spec, missing)
        # Large requests are a batch on their own; small ones coalesce in a lane.
        try:
            if len(inputs) >= self._max_batch_items:
                return await runtime.submit(kind, inputs)
            lane = self._lane(spec.slug, kind)
            future: asyncio.Future[Embeddings] = asyncio.get_running_loop().create_future()
            await lane.queue.put(_Request(inputs=inputs, future=future))
            return await future
        except WeightsUnavailable as exc:
            raise _unavailable(spec, exc) from exc

    def _lane(self, slug: str, kind: InputKind) -> _Lane:
        key = (slug, kind)
        lane = self._lanes.get(key)
        if lane is None or lane.worker is None or lane.worker.done():
            lane = lane or _Lane()
            lane.worker = asyncio.get_running_loop().create_task(self._drain(slug, kind, lane))
            self._lanes[key] = lane
        return lane

    async def _drain(self, slug: str, kind: InputKind, lane: _Lane) -> None:
        runtime = self._runtimes[slug]
        while True:
            batch = [await lane.queue.get()]
            size = len(batch[0].inputs)
            deadline = time.monotonic() + self._batch_wait_s
            while size < self._max_batch_items:
                try:
                    request = lane.queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        request = await asyncio.wait_for(lane.queue.get(), remaining)
                    except TimeoutError:
                        break
                batch.append(request)
                size += len(request.inputs)
            live = [r for r in batch if not r.future.done()]
            if not live:
                continue
            flat: list[Any] = [item for r in live for item in r.inputs]
            try:
                vectors = await runtime.submit(kind, flat)
            except BaseException as exc:  # hand every waiter the failure, keep the lane alive
                for r in live:
                    if not r.future.done():
                        r.future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            start = 0
            for r in live:
                end = start + len(r.inputs)
                if not r.future.done():
                    r.future.set_result(vectors[start:end])
                start = end

    def stats(self) -> dict[str, BatchStats]:
        return {s: BatchStats(calls=r.calls, items=r.items) for s, r in self._runtimes.items()}

    def availability(self, spec: ModelSpec) -> WeightsUnavailable | None:
        """Why `spec` cannot run here, or None; never loads weights (file checks only)."""
        runtime = self._runtimes.get(spec.slug)
        if runtime is not None and runtime.unavailable is not None:
            return runtime.unavailable
        if (runtime is not None and runtime.loaded) or self._weights_check is None:
            return None
        try:
            self._weights_check(spec)
        except WeightsUnavailable as exc:
            return exc
        except MissingDependency as exc:
            return WeightsUnavailable(spec.slug, str(exc), exc.pip_install)
        return None

    async def aclose(self) -> None:
        for lane in self._lanes.values():
            if lane.worker is not None:
                lane.worker.cancel()
        for runtime in self._runtimes.values():
            runtime.shutdown()


def _unavailable(spec: ModelSpec, exc: WeightsUnavailable) -> Unavailable:
    return Unavailable(
        f"model {spec.slug!r} is not available on this server: {exc.reason}. {exc.how_to_install}",
        field="model",
        code="model_unavailable",
    )
