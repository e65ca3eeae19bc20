"""Model runtime: lazy, shared embedders and dynamic batching of concurrent requests.

Each model gets worker threads that we own (one by default), so model calls never run on
the event loop. Concurrent requests of the same kind (documents, queries,
images) queue up while the model is busy and go into the next call together. A bounded wait
(`batch_wait_ms`) lets a burst gather first, but only in a lane that has lately seen
concurrent requests: a lone client never waits for company that is not coming.

Queries go first: documents and images reach the model in chunks of `chunk_items`, and a
query that arrives meanwhile runs before the next chunk, so an ingest never holds a search
for longer than one chunk. While searches are coming in, the chunks shrink to about one
long text, so that wait stays short (SciFact: 25 ms, not 80); an ingest with nobody
searching keeps the full chunks and their throughput.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import anyio
import numpy as np

from embedders.base import Embedder, Embeddings, MissingDependency, WeightsUnavailable
from embedders.factory import check_weights, config_keys, create_embedder
from vectorsvc.config import Settings
from vectorsvc.errors import Unavailable
from vectorsvc.model_registry.registry import ModelRegistry, ModelSpec

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
    text_backend: str = "torch"  # for kinds with a `backend` key (sentence-transformers text)
    onednn: bool = True  # torch Linear layers through oneDNN on CPU (kinds with `onednn`)

    @classmethod
    def from_settings(cls, settings: Settings, *, allow_downloads: bool | None = None) -> Self:
        return cls(
            models_dir=str(settings.resolved_models_dir),
            batch_size=settings.embed_batch_size,
            allow_downloads=(
                settings.allow_model_downloads if allow_downloads is None else allow_downloads
            ),
            text_backend=settings.text_backend,
            onednn=settings.onednn,
        )

    def config_for(self, spec: ModelSpec) -> dict[str, Any]:
        config = dict(spec.embedder.config)
        keys = config_keys(spec.embedder.kind)
        config.setdefault("batch_size", self.batch_size)
        config.setdefault("models_dir", self.models_dir)
        if "allow_download" in keys:
            config.setdefault("allow_download", self.allow_downloads)
        if "backend" in keys:
            config.setdefault("backend", self.text_backend)
        if "onednn" in keys:
            config.setdefault("onednn", self.onednn)
        return config

    def load(self, spec: ModelSpec) -> Embedder:
        return create_embedder(spec.embedder.kind, **self.config_for(spec))

    def check(self, spec: ModelSpec) -> None:
        check_weights(spec.embedder.kind, **self.config_for(spec))


def configure_model_threads() -> None:
    """Make the models' OpenMP threads sleep, not spin, between parallel regions.

    With the default (spinning) policy torch's threads burn the cores they wait on, starving
    the event loop and anything else on the machine; on 2 shared cores a 10 ms query took
    400 ms (measured, see README "Performance"). It only takes effect before torch loads;
    an explicit OMP_WAIT_POLICY in the environment wins.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_math_threads(threads: int) -> None:
    """The calling thread's math threads (torch's intra-op threads, which OpenMP keeps per
    thread). Models that are not on torch size their thread pools themselves."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(max(1, threads))


def math_threads_for(kind: InputKind, inputs: Sequence[Any], threads: int) -> int:
    """Math threads for one model call: one for a lone query or two (short texts: their
    small matrices split badly over threads; MiniLM query 7.4 ms on one, 9.1 on two),
    `threads` otherwise."""
    if kind == "query" and len(inputs) <= 2 and all(isinstance(x, str) for x in inputs):
        return 1
    return threads


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def model_parallelism(workers: int, threads: int) -> tuple[int, int]:
    """(workers, math threads per worker) from the settings, where 0 means automatic: one
    worker with a math thread per CPU. Measured on 2 cores (README, "Performance"): two
    single-threaded workers served 16 clients no faster and held 80 to 120 MB more; a lone
    short query, the one case where one thread wins, gets one anyway (`math_threads_for`)."""
    workers = workers or 1
    threads = threads or max(1, cpu_count() // workers)
    return workers, threads


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
    # Requests in the previous model call: above 1, clients are arriving together.
    last_requests: int = 1


# While a query came in this recently, documents and images go to the model one at a time.
_QUERIES_ACTIVE_S = 1.0
# ...in calls of about this many characters of text (MiniLM reads at most 256 word pieces,
# about 1,200 characters; an image counts as a whole chunk).
_BUSY_CHUNK_CHARS = 1200
# Lower runs first; equal priorities run in arrival order. _STOP ends the worker.
_PRIORITY: dict[InputKind, int] = {"query": 0, "image": 1, "document": 1}
_STOP = 1 << 30


@dataclass(order=True)
class _Job:
    """Inputs that workers take a chunk at a time (queries: all in one): the job goes back
    in the queue, in its place, until all are taken."""

    priority: int
    seq: int
    kind: InputKind = field(compare=False)
    inputs: Sequence[Any] = field(compare=False)
    future: Future[Embeddings] = field(compare=False)
    # Whether anyone still waits for the vectors (checked before each chunk).
    wanted: Callable[[], bool] = field(default=lambda: True, compare=False)
    taken: int = field(default=0, compare=False)  # inputs handed to workers so far
    parts: dict[int, Embeddings] = field(default_factory=dict, compare=False)  # by start


def _text_length(item: Any) -> int:
    return len(item) if isinstance(item, str) else 0


class ModelRuntime:
    """One model: its weights (loaded on first use) and its worker threads, which take
    queued model calls by priority (queries first) and then in arrival order.

    With several workers, calls run side by side on one shared copy of the weights, each
    worker with its own `threads` math threads: on CPU, two single-threaded calls on two
    cores do more than one call spread over both (small matrices parallelise poorly)."""

    def __init__(
        self,
        spec: ModelSpec,
        loader: EmbedderLoader,
        on_batch: BatchObserver | None = None,
        *,
        chunk_items: int = 4,
        workers: int = 1,
        threads: int | None = None,
    ) -> None:
        self.spec = spec
        self._loader = loader
        self._on_batch = on_batch
        self._chunk_items = max(1, chunk_items)
        self.workers = max(1, workers)
        self._threads = threads
        self._jobs: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._worker_threads: list[threading.Thread] = []
        self._worker_lock = threading.Lock()
        self._stopped = False
        self._last_query = float("-inf")  # time.monotonic() of the last query submitted
        self._load_lock = threading.Lock()
        self._embedder: Embedder | None = None
        self.unavailable: WeightsUnavailable | None = None

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
                gc.freeze()  # a model loaded on first use joins the start-up objects (app.py)
            return self._embedder

    @property
    def loaded(self) -> bool:
        return self._embedder is not None

    def run(self, kind: InputKind, inputs: Sequence[Any]) -> Embeddings:
        """Blocking model call; runs on this model's worker thread."""
        embedder = self.load()
        started = time.perf_counter()
        if self._threads is not None:
            set_math_threads(math_threads_for(kind, inputs, self._threads))
        if kind == "document":
            vectors = embedder.embed_texts(inputs)
        elif kind == "query":
            vectors = embedder.embed_queries(inputs)
        else:
            vectors = embedder.embed_images(inputs)
        if self._on_batch is not None:
            self._on_batch(self.spec.slug, kind, len(inputs), time.perf_counter() - started)
        return vectors

    async def submit(
        self, kind: InputKind, inputs: Sequence[Any], wanted: Callable[[], bool] | None = None
    ) -> Embeddings:
        """Run `inputs` on the worker threads. Documents and images go in chunks (texts
        sorted by length first, as sentence-transformers does, so chunks pad little);
        chunks stop once `wanted()` is false (the requests went away)."""
        if kind == "query":
            self._last_query = time.monotonic()
            return await self._run_job(kind, inputs, wanted)
        order = sorted(range(len(inputs)), key=lambda i: _text_length(inputs[i]))
        vectors = await self._run_job(kind, [inputs[i] for i in order], wanted)
        out = np.empty_like(vectors)
        out[order] = vectors
        return out

    async def _run_job(
        self, kind: InputKind, inputs: Sequence[Any], wanted: Callable[[], bool] | None
    ) -> Embeddings:
        gone = False  # this coroutine was cancelled: chunks not yet taken are not run
        job = _Job(
            0, 0, kind, inputs, Future(), wanted=lambda: not gone and (wanted is None or wanted())
        )
        self._enqueue(job)
        try:
            return await asyncio.wrap_future(job.future)
        finally:
            gone = True

    def _chunk_end(self, job: _Job, start: int) -> int:
        """Where the chunk starting at `start` ends: all of a query job; else `chunk_items`
        inputs, or, while searches are coming in (a query in the last `_QUERIES_ACTIVE_S`),
        about one long text's worth (`_BUSY_CHUNK_CHARS`; at least one input), so that a
        search waits behind a short call (one SciFact abstract: 25 ms, against 80 ms for
        four)."""
        if job.kind == "query":
            return len(job.inputs)
        end = min(len(job.inputs), start + self._chunk_items)
        if time.monotonic() - self._last_query >= _QUERIES_ACTIVE_S:
            return end
        stop, budget = start, _BUSY_CHUNK_CHARS
        while stop < end:
            cost = min(_text_length(job.inputs[stop]), _BUSY_CHUNK_CHARS) or _BUSY_CHUNK_CHARS
            if stop > start and cost > budget:
                break
            budget -= cost
            stop += 1
        return stop

    def _enqueue(self, job: _Job) -> None:
        with self._worker_lock:
            if self._stopped:
                raise RuntimeError(f"model {self.spec.slug} is shut down")
            if not self._worker_threads:
                for n in range(self.workers):
                    worker = threading.Thread(
                        target=self._work, name=f"embed-{self.spec.slug}-{n}", daemon=True
                    )
                    worker.start()
                    self._worker_threads.append(worker)
            job.priority, job.seq = _PRIORITY[job.kind], next(self._seq)
            self._jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job.priority == _STOP:
                return
            if job.taken == 0 and not job.future.set_running_or_notify_cancel():
                continue
            self._run_chunk(job)

    def _run_chunk(self, job: _Job) -> None:
        """Take the job's next chunk; put the rest back in its place (another free worker
        may take the next chunk meanwhile); embed it; complete the job with its last one."""
        if job.future.done():  # an earlier chunk failed
            return
        if not job.wanted():
            self._fail(job, CancelledError())
            return
        start = job.taken
        end = self._chunk_end(job, start)
        job.taken = end
        if end < len(job.inputs):
            self._jobs.put(job)  # same priority and seq: still ahead of later arrivals
        try:
            vectors = self.run(job.kind, job.inputs[start:end])
        except BaseException as exc:
            self._fail(job, exc)
            return
        with self._worker_lock:  # completion and a failure never race
            job.parts[start] = vectors
            embedded = sum(len(part) for part in job.parts.values())
            if embedded == len(job.inputs) and not job.future.done():
                parts = [job.parts[k] for k in sorted(job.parts)]
                # Let the inputs (decoded images can be large) go before anyone hears of it.
                job.inputs = ()
                job.future.set_result(parts[0] if len(parts) == 1 else np.concatenate(parts))

    def _fail(self, job: _Job, exc: BaseException) -> None:
        with self._worker_lock:
            if not job.future.done():
                job.inputs = ()
                job.future.set_exception(exc)

    def shutdown(self) -> None:
        with self._worker_lock:
            self._stopped = True
            workers = list(self._worker_threads)
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if not job.future.cancel():  # a job whose first chunks ran
                self._fail(job, RuntimeError(f"model {self.spec.slug} is shut down"))
        for _ in workers:
            self._jobs.put(_Job(_STOP, next(self._seq), "document", (), Future()))
        for worker in workers:
            worker.join()


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
