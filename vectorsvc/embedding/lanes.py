"""Request lanes: concurrent requests of one model and input kind, batched into model calls.

Each model gets a lane per kind (documents, queries, images). Concurrent requests queue up
while the model is busy and go into the next call together. A bounded wait
(`batch_wait_ms`) lets a burst gather first, but only in a lane that has lately seen
concurrent requests: a lone client never waits for company that is not coming.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

from embedders.base import Embeddings, MissingDependency, WeightsUnavailable
from vectorsvc.embedding.runtime import BACKGROUND, ModelRuntime
from vectorsvc.embedding.settings import BatchObserver, EmbedderLoader, InputKind, WeightsCheck
from vectorsvc.embedding.threads import configure_model_threads
from vectorsvc.errors import Unavailable
from vectorsvc.model_registry.registry import ModelRegistry, ModelSpec

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    inputs: Sequence[Any]
    future: asyncio.Future[Embeddings]


@dataclass
class _Lane:
    queue: asyncio.Queue[_Request] = field(default_factory=asyncio.Queue)
    worker: asyncio.Task[None] | None = None
    # Requests in the previous model call: above 1, clients are arriving together.
    last_requests: int = 1


class EmbeddingService:
    def __init__(
        self,
        registry: ModelRegistry,
        *,
        loader: EmbedderLoader,
        batch_wait_ms: float = 1.0,
        max_batch_items: int = 256,
        chunk_items: int = 4,
        on_batch: BatchObserver | None = None,
        weights_check: WeightsCheck | None = None,
        workers: int = 1,
        threads_per_worker: int | None = None,
    ) -> None:
        configure_model_threads()
        self._workers = max(1, workers)
        self._threads_per_worker = threads_per_worker
        self._chunk_items = chunk_items
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
                runtime = ModelRuntime(
                    spec,
                    self._loader,
                    self._on_batch,
                    chunk_items=self._chunk_items,
                    workers=self._workers,
                    threads=self._threads_per_worker,
                )
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
            if len(inputs) >= self._max_batch_items or BACKGROUND.get():
                # Background work goes straight to the runtime, at its own priority.
                return await runtime.submit(kind, inputs)
            lane = self._lane(spec.slug, kind)
            future: asyncio.Future[Embeddings] = asyncio.get_running_loop().create_future()
            await lane.queue.put(_Request(inputs=inputs, future=future))
            return await future
        except WeightsUnavailable as exc:
            raise _unavailable(spec, exc) from exc

    async def split(self, spec: ModelSpec, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Each text's chunk spans (`ModelRuntime.split`), on a worker thread."""
        if not texts:
            return []
        runtime = self.runtime(spec)
        if not runtime.loaded:
            missing = await anyio.to_thread.run_sync(self.availability, spec)
            if missing is not None:
                raise _unavailable(spec, missing)
        try:
            return await anyio.to_thread.run_sync(runtime.split, texts)
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
        """Gather the lane's queued requests into model calls, one call per free worker:
        while every worker is busy, requests queue up and go into the next call together."""
        runtime = self._runtimes[slug]
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                running = {task for task in running if not task.done()}
                if len(running) >= runtime.workers:
                    _, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                batch = await self._gather(lane, free_workers=runtime.workers - len(running))
                running.add(
                    asyncio.get_running_loop().create_task(self._call(runtime, kind, batch))
                )
        finally:
            for task in running:
                task.cancel()

    async def _gather(self, lane: _Lane, *, free_workers: int) -> list[_Request]:
        batch = [await lane.queue.get()]
        size = len(batch[0].inputs)
        # Where other workers are free too, leave them their share of what is queued.
        limit = -(-(lane.queue.qsize() + 1) // free_workers) if free_workers > 1 else 1 << 30
        # Wait for company only where requests have lately come together.
        wait = self._batch_wait_s if lane.last_requests > 1 else 0.0
        deadline = time.monotonic() + wait
        while size < self._max_batch_items and len(batch) < limit:
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
        lane.last_requests = len(batch)
        return batch

    @staticmethod
    async def _call(runtime: ModelRuntime, kind: InputKind, batch: list[_Request]) -> None:
        try:
            await EmbeddingService._answer(runtime, kind, batch)
        finally:
            # `_drain` holds the lane's last batch while it waits for the next: without its
            # inputs (decoded images can be large).
            for r in batch:
                r.inputs = ()

    @staticmethod
    async def _answer(runtime: ModelRuntime, kind: InputKind, batch: list[_Request]) -> None:
        live = [r for r in batch if not r.future.done()]
        if not live:
            return
        flat: list[Any] = [item for r in live for item in r.inputs]
        try:
            vectors = await runtime.submit(
                kind, flat, wanted=lambda: any(not r.future.done() for r in live)
            )
        except BaseException as exc:  # hand every waiter the failure, keep the lane alive
            for r in live:
                if not r.future.done():
                    r.future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        start = 0
        for r in live:
            end = start + len(r.inputs)
            if not r.future.done():
                r.future.set_result(vectors[start:end])
            start = end

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
