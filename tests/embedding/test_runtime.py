"""The model runtime: queries before document chunks, order kept, batching without idle waits.

A recording stand-in embedder, which a test can hold at a gate, keeps most of these about
scheduling; the last runs the real MiniLM on two workers (the real models have their own
tests in tests/embedders and run through the API tests).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch

from embedders.base import Embedder, Embeddings, Modality
from vectorsvc.embedding import EmbeddingService, runtime
from vectorsvc.model_registry.registry import ModelRegistry, ModelSpec

pytestmark = pytest.mark.anyio


class RecordingEmbedder(Embedder):
    """Vector = (len(text), 0, ...); each call recorded; calls can be held at a gate."""

    name = "recording"
    dimension = 384
    modalities = frozenset({Modality.TEXT})

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.inside = 0  # calls in progress now
        self.most_inside = 0
        self.math_threads: list[int] = []
        self._lock = threading.Lock()

    def _embed(self, kind: str, texts: Sequence[str]) -> Embeddings:
        with self._lock:
            self.calls.append((kind, list(texts)))
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.math_threads.append(torch.get_num_threads())
        self.entered.set()
        try:
            assert self.gate.wait(10)
        finally:
            with self._lock:
                self.inside -= 1
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        out[:, 0] = [len(t) for t in texts]
        return out

    def embed_texts(self, texts: Sequence[str]) -> Embeddings:
        return self._embed("document", texts)

    def embed_queries(self, texts: Sequence[str]) -> Embeddings:
        return self._embed("query", texts)

    def describe(self) -> dict[str, object]:
        return {"name": self.name}


@pytest.fixture
def spec() -> ModelSpec:
    return ModelRegistry.from_file().get("all-minilm-l6-v2")


def service(
    embedder: Embedder, batch_wait_ms: float = 1.0, workers: int = 1, threads: int | None = None
) -> EmbeddingService:
    return EmbeddingService(
        ModelRegistry.from_file(),
        loader=lambda _spec: embedder,
        batch_wait_ms=batch_wait_ms,
        chunk_items=4,
        workers=workers,
        threads_per_worker=threads,
    )


async def test_document_chunks_keep_input_order(spec: ModelSpec) -> None:
    embedder = RecordingEmbedder()
    embeddings = service(embedder)
    texts = ["x" * n for n in (9, 1, 7, 3, 12, 5, 2, 11, 4, 8)]  # 10 texts: chunks of 4
    vectors = await embeddings.embed(spec, "document", texts)
    assert vectors[:, 0].tolist() == [float(len(t)) for t in texts]
    chunks = [texts for kind, texts in embedder.calls]
    assert [len(c) for c in chunks] == [4, 4, 2]
    # Sorted by length before chunking, so each chunk pads little.
    assert [len(t) for c in chunks for t in c] == sorted(len(t) for t in texts)
    await embeddings.aclose()


async def _twelve_documents_held_at_the_gate(
    spec: ModelSpec, embedder: RecordingEmbedder, embeddings: EmbeddingService
) -> asyncio.Task[np.ndarray]:
    """Index 12 documents (three chunks of 4) with the first chunk held in the model."""
    embedder.gate.clear()
    documents = asyncio.create_task(
        embeddings.embed(spec, "document", [f"doc {i}" for i in range(12)])
    )
    assert await asyncio.to_thread(embedder.entered.wait, 10)
    return documents


async def test_a_query_runs_before_the_rest_of_a_document_batch(spec: ModelSpec) -> None:
    embedder = RecordingEmbedder()
    embeddings = service(embedder)
    documents = await _twelve_documents_held_at_the_gate(spec, embedder, embeddings)
    query = asyncio.create_task(embeddings.embed(spec, "query", ["what about cats?"]))
    await asyncio.sleep(0.05)  # the query is queued behind the running chunk
    embedder.gate.set()
    done = await asyncio.wait_for(asyncio.gather(documents, query), 10)
    kinds = [kind for kind, _ in embedder.calls]
    # The first chunk of four, the query, then (searches are coming in) calls of about one
    # long text: these short ones all fit in one.
    assert kinds == ["document", "query", "document", "document"]
    assert [len(texts) for _, texts in embedder.calls] == [4, 1, 4, 4]
    assert done[0][:, 0].tolist() == [float(len(f"doc {i}")) for i in range(12)]
    await embeddings.aclose()


async def test_while_searching_long_documents_go_one_a_call_and_short_ones_together(
    spec: ModelSpec,
) -> None:
    embedder = RecordingEmbedder()
    embeddings = service(embedder)
    await embeddings.embed(spec, "query", ["a search"])
    texts = ["short one", "short two", "x" * 700, "y" * 700, "z" * 5000, "w" * 900]
    vectors = await embeddings.embed(spec, "document", texts)
    assert vectors[:, 0].tolist() == [float(len(t)) for t in texts]
    # Sorted by length: the two short ones and a 700 fit in ~1,200 characters; then 700,
    # 900 and the long one on their own.
    calls = [[len(t) for t in texts] for kind, texts in embedder.calls if kind == "document"]
    assert calls == [[9, 9, 700], [700], [900], [5000]]
    await embeddings.aclose()


async def test_documents_go_back_to_full_chunks_once_searches_stop(
    spec: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "_QUERIES_ACTIVE_S", 0.2)
    embedder = RecordingEmbedder()
    embeddings = service(embedder)
    texts = [f"doc {i} " + "x" * 1000 for i in range(8)]  # long: one a call while searching
    await embeddings.embed(spec, "query", ["a search"])
    await embeddings.embed(spec, "document", texts)  # right after a search: one at a time
    await asyncio.sleep(0.3)
    await embeddings.embed(spec, "document", texts)  # searches stopped: chunks of four
    sizes = [len(texts) for kind, texts in embedder.calls if kind == "document"]
    assert sizes == [1] * 8 + [4, 4]
    await embeddings.aclose()


async def test_a_cancelled_ingest_runs_no_more_chunks(spec: ModelSpec) -> None:
    embedder = RecordingEmbedder()
    embeddings = service(embedder)
    documents = await _twelve_documents_held_at_the_gate(spec, embedder, embeddings)
    documents.cancel()  # the request went away (a timeout, a closed connection)
    await asyncio.sleep(0.05)
    embedder.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await documents
    await asyncio.sleep(0.1)
    assert [len(texts) for _, texts in embedder.calls] == [4]  # the chunk already running
    await embeddings.aclose()


async def test_a_lone_request_does_not_wait_for_company(spec: ModelSpec) -> None:
    embedder = RecordingEmbedder()
    # A wait far beyond the test's timeout: only a lane that has seen concurrency waits.
    embeddings = service(embedder, batch_wait_ms=60_000)
    for text in ("one", "two", "three"):
        await asyncio.wait_for(embeddings.embed(spec, "query", [text]), 10)
    assert len(embedder.calls) == 3
    await embeddings.aclose()


async def test_concurrent_queries_share_model_calls(spec: ModelSpec) -> None:
    embedder = RecordingEmbedder()
    embeddings = service(embedder)
    embedder.gate.clear()
    first = asyncio.create_task(embeddings.embed(spec, "query", ["first"]))
    assert await asyncio.to_thread(embedder.entered.wait, 10)
    rest = [asyncio.create_task(embeddings.embed(spec, "query", [f"q{i}"])) for i in range(8)]
    await asyncio.sleep(0.05)  # all eight queue while the model is busy
    embedder.gate.set()
    results = await asyncio.wait_for(asyncio.gather(first, *rest), 10)
    assert [r[0, 0] for r in results] == [5.0] + [float(len(f"q{i}")) for i in range(8)]
    assert [len(texts) for _, texts in embedder.calls] == [1, 8]
    await embeddings.aclose()


async def test_two_workers_run_two_model_calls_at_once(spec: ModelSpec) -> None:
    embedder = RecordingEmbedder()
    embeddings = service(embedder, workers=2, threads=1)
    embedder.gate.clear()
    documents = asyncio.create_task(
        embeddings.embed(spec, "document", [f"doc {i}" for i in range(8)])  # two chunks
    )
    for _ in range(200):  # both chunks enter the model while the gate is shut
        if embedder.inside == 2:
            break
        await asyncio.sleep(0.01)
    assert embedder.inside == 2
    embedder.gate.set()
    vectors = await asyncio.wait_for(documents, 10)
    assert vectors[:, 0].tolist() == [5.0] * 8
    # Each worker set its own math threads (torch keeps them per thread).
    assert embedder.math_threads == [1, 1]
    await embeddings.aclose()


async def test_queued_queries_are_shared_between_free_workers(spec: ModelSpec) -> None:
    embedder = RecordingEmbedder()
    embeddings = service(embedder, workers=2)
    embeddings.runtime(spec).load()  # no availability check: all eight queue at once
    embedder.gate.clear()
    # Eight queries arrive together while both workers are free: four each, not 8 and 0.
    tasks = [asyncio.create_task(embeddings.embed(spec, "query", [f"q{i}"])) for i in range(8)]
    for _ in range(200):
        if embedder.inside == 2:
            break
        await asyncio.sleep(0.01)
    embedder.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert [r[0, 0] for r in results] == [2.0] * 8
    assert sorted(len(texts) for _, texts in embedder.calls) == [4, 4]
    assert embedder.most_inside == 2
    await embeddings.aclose()


async def test_a_lone_short_query_runs_on_one_math_thread_and_batches_on_all(
    spec: ModelSpec,
) -> None:
    embedder = RecordingEmbedder()
    embeddings = service(embedder, workers=1, threads=2)
    await embeddings.embed(spec, "query", ["one query"])
    await embeddings.embed(spec, "query", [f"query {i}" for i in range(3)])
    await embeddings.embed(spec, "document", ["a document"])
    assert embedder.math_threads == [1, 2, 2]
    await embeddings.aclose()


async def test_the_real_model_on_two_workers_gives_each_request_its_own_vectors(
    spec: ModelSpec, embedder_loader: Callable[[ModelSpec], Embedder]
) -> None:
    # The scheduling above uses a stand-in it can hold at a gate; here the real MiniLM runs
    # on two workers, with concurrent queries coalescing into shared, packed calls.
    calls: list[int] = []
    embeddings = EmbeddingService(
        ModelRegistry.from_file(),
        loader=embedder_loader,
        workers=2,
        threads_per_worker=1,
        on_batch=lambda _slug, _kind, size, _seconds: calls.append(size),
    )
    embeddings.runtime(spec).load()
    texts = [f"question {i}: " + "why do cells divide " * (i % 5 + 1) for i in range(24)]
    results = await asyncio.gather(*(embeddings.embed(spec, "query", [t]) for t in texts))
    alone = embedder_loader(spec).embed_queries(texts)
    for i, vectors in enumerate(results):
        assert vectors.shape == (1, 384)
        assert float(vectors[0] @ alone[i]) >= 0.99999, texts[i]
    assert sum(calls) == 24 and len(calls) < 24  # requests shared model calls
    await embeddings.aclose()


async def test_a_failing_chunk_fails_its_request_and_the_model_serves_the_next(
    spec: ModelSpec,
) -> None:
    class Failing(RecordingEmbedder):
        def embed_texts(self, texts: Sequence[str]) -> Embeddings:
            if "bad" in texts:
                raise ValueError("this chunk cannot be embedded")
            return super().embed_texts(texts)

    embedder = Failing()
    embeddings = service(embedder)
    texts = [f"doc {i}" for i in range(5)] + ["bad"] + [f"doc {i}" for i in range(5, 10)]
    with pytest.raises(ValueError, match="cannot be embedded"):
        await asyncio.wait_for(embeddings.embed(spec, "document", texts), 10)
    vectors = await asyncio.wait_for(embeddings.embed(spec, "document", ["a", "bb", "ccc"]), 10)
    assert vectors[:, 0].tolist() == [1.0, 2.0, 3.0]
    # "bad" sorts into the first chunk: the failed request's later chunks never ran.
    assert embedder.calls == [("document", ["a", "bb", "ccc"])]
    await embeddings.aclose()
