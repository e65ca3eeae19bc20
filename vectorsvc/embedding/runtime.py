"""One model's runtime: its weights, loaded on first use, and the worker threads we own.

Model calls never run on the event loop. Queries go first: documents and images reach the
model in chunks of `chunk_items`, and a query that arrives meanwhile runs before the next
chunk, so an ingest never holds a search for longer than one chunk. While searches are
coming in, the chunks shrink to about one long text, so that wait stays short; an ingest
with nobody searching keeps the full chunks and their throughput.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedders.base import Embedder, Embeddings, MissingDependency, WeightsUnavailable
from vectorsvc.embedding.settings import BatchObserver, EmbedderLoader, InputKind
from vectorsvc.embedding.threads import math_threads_for, set_math_threads
from vectorsvc.model_registry.registry import ModelSpec

logger = logging.getLogger(__name__)

# While a query came in this recently, documents and images go to the model one at a time.
_QUERIES_ACTIVE_S = 1.0
# ...in calls of about this many characters of text (MiniLM reads at most 256 word pieces,
# about 1,200 characters; an image counts as a whole chunk).
_BUSY_CHUNK_CHARS = 1200
# Lower runs first; equal priorities run in arrival order. _STOP ends the worker.
_PRIORITY: dict[InputKind, int] = {"query": 0, "image": 1, "document": 1}
# Platform work (re-embedding a model's points into a new release) runs after every
# foreground chunk: set `BACKGROUND` in the task that asks for the vectors.
_BACKGROUND_PRIORITY = 2
# Background chunks while nobody searches: large enough for the model's batch throughput;
# a foreground document job waits for at most one.
_BACKGROUND_CHUNK_ITEMS = 32
_STOP = 1 << 30

BACKGROUND: ContextVar[bool] = ContextVar("vectorsvc_background_embedding", default=False)


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
    background: bool = field(default=False, compare=False)
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

    def split(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Each text's chunk spans by the model's tokenizer and the registry's chunking
        (blocking; loads the model)."""
        embedder = self.load()
        chunking = self.spec.chunking
        return [
            embedder.text_windows(
                text,
                window=chunking.window_tokens,
                overlap=chunking.overlap_tokens,
                max_chars=chunking.max_chunk_chars,
            )
            for text in texts
        ]

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
            0,
            0,
            kind,
            inputs,
            Future(),
            wanted=lambda: not gone and (wanted is None or wanted()),
            background=BACKGROUND.get(),
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
        search waits behind a short call (one SciFact abstract, not four: figures in
        docs/performance.md)."""
        if job.kind == "query":
            return len(job.inputs)
        size = _BACKGROUND_CHUNK_ITEMS if job.background else self._chunk_items
        end = min(len(job.inputs), start + size)
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
            priority = _BACKGROUND_PRIORITY if job.background else _PRIORITY[job.kind]
            job.priority, job.seq = priority, next(self._seq)
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
