"""A search run's retrieval: dense, keyword (BM25) or hybrid (both, fused in one query).

`params.retrieval` picks it; absent, the model's search contract publishes the default
(`models.yaml`). `params.fusion` picks how hybrid fuses its two lists: Distribution-Based
Score Fusion ("dbsf", the default the contract publishes) or Reciprocal Rank Fusion
("rrf"). Keyword and hybrid need keyword vectors: text-only models store them
(`points.sparse`), and a collection created before them answers with dense retrieval, so a
scope keeps serving through a release migration; `Ranked.retrieval` says which ran.

Every retrieval returns the same plain candidate list (`ScoredPoint`, best first, within
the run's filter), so whatever follows (score threshold, grouping, the output) does not
depend on it. What a score means in each: docs/architecture.md, "Search".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import anyio

from vectorsvc.errors import ValidationFailed
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.points.grouping import search_items
from vectorsvc.points.namespaces import Namespace
from vectorsvc.points.sparse import has_keywords, query_vector
from vectorsvc.runs.content import Content, TextContent, embed_contents
from vectorsvc.state import AppState
from vectorsvc.vectorstore.base import FUSIONS, Filter, Fusion, ScoredPoint

Retrieval = Literal["dense", "keyword", "hybrid"]
RETRIEVALS: tuple[Retrieval, ...] = ("dense", "keyword", "hybrid")
# Reciprocal Rank Fusion: score = sum of 1 / (RRF_K + rank), rank from 0. 60 is the usual
# constant (Cormack et al.); k = 2 measured no better through the API (docs/performance.md).
RRF_K = 60
# Each list fused holds this many candidates (or top_k, if more).
FUSION_CANDIDATES = 100


@dataclass(frozen=True)
class Ranked:
    hits: list[ScoredPoint]
    retrieval: Retrieval  # the retrieval that ran


def requested(model: ModelSpec, value: str | None) -> Retrieval:
    """The retrieval a search asks for: `value`, else the default its contract publishes.
    Keyword and hybrid for a model without keyword vectors are a 422 (the packaged
    contracts already refuse them; an operator's registry might not)."""
    if value is None:
        value = _default(model, "retrieval", "dense")
    if value not in RETRIEVALS:
        raise ValidationFailed(
            f"params.retrieval: must be one of: {', '.join(RETRIEVALS)} (got {value!r})",
            field="params.retrieval",
            code="invalid_retrieval",
        )
    if value != "dense" and not has_keywords(model):
        raise ValidationFailed(
            f"params.retrieval: model {model.slug!r} searches by dense vectors only "
            f"('dense'); {value} retrieval is offered by text-only models",
            field="params.retrieval",
            code="retrieval_not_supported",
        )
    return value


def _default(model: ModelSpec, param: str, fallback: str) -> str:
    """The default the model's search contract publishes for `params.<param>`."""
    schema = model.contracts["search"].params.get("properties", {}).get(param, {})
    value = schema.get("default", fallback) if isinstance(schema, dict) else fallback
    return value if isinstance(value, str) else fallback


def requested_fusion(model: ModelSpec, value: str | None, wanted: Retrieval) -> Fusion:
    """How a hybrid search fuses its lists: `value`, else the contract's default. A fusion
    named for a retrieval other than hybrid is a 422: nothing would be fused."""
    if value is None:
        default = _default(model, "fusion", "rrf")
        return default if default in FUSIONS else "rrf"
    if value not in FUSIONS:
        raise ValidationFailed(
            f"params.fusion: must be one of: {', '.join(FUSIONS)} (got {value!r})",
            field="params.fusion",
            code="invalid_fusion",
        )
    if wanted != "hybrid":
        raise ValidationFailed(
            f"params.fusion: only hybrid retrieval fuses results ({', '.join(FUSIONS)}); "
            f"leave fusion out of a {wanted} search",
            field="params.fusion",
            code="fusion_needs_hybrid",
        )
    return value


def _effective(state: AppState, model: ModelSpec, ns: Namespace, wanted: Retrieval) -> Retrieval:
    """What can run: dense where the collection holds no keyword vectors (blocking)."""
    if wanted == "dense" or not state.collections.exists(ns):
        return wanted
    return wanted if state.store.has_sparse(ns.collection) else "dense"


async def search(
    state: AppState,
    *,
    model: ModelSpec,
    ns: Namespace,
    query: Content,
    flt: Filter,
    limit: int,
    wanted: Retrieval,
    fusion: Fusion = "rrf",
) -> Ranked:
    """The run's candidates, best first, by the retrieval `wanted` (or dense, see above)."""
    # The embedded engine's calls are short and hold the GIL anyway: on the event loop they
    # cost less than the hop to a worker thread and back.
    inline = state.store.search_inline(ns.collection)
    ran = (
        _effective(state, model, ns, wanted)
        if inline
        else await anyio.to_thread.run_sync(_effective, state, model, ns, wanted)
    )
    vector = None
    if ran != "keyword":  # keyword needs no embedding
        vector = (
            await embed_contents(
                state, model=model, workspace_id=ns.workspace_id, contents=[query], purpose="query"
            )
        )[0]
    text = query.text if isinstance(query, TextContent) else ""
    sparse = query_vector(text) if ran != "dense" else None

    def fetch(n: int) -> list[ScoredPoint]:
        """The `n` best candidates (chunks) of the retrieval that runs."""
        store, name = state.store, ns.collection
        # IDF over the scope's own points: a knowledge base's term statistics are its own,
        # whoever else shares the collection (docs/performance.md, "Hybrid search").
        idf_scope = ns.tenant_filter
        if ran == "keyword":
            assert sparse is not None
            return store.search_keyword(name, sparse, filter=flt, limit=n, idf_scope=idf_scope)
        assert vector is not None
        if ran == "hybrid":
            assert sparse is not None
            return store.search_hybrid(
                name,
                vector,
                sparse,
                filter=flt,
                limit=n,
                candidates=max(FUSION_CANDIDATES, n),
                rrf_k=RRF_K,
                idf_scope=idf_scope,
                fusion=fusion,
            )
        return store.search(name, vector, filter=flt, limit=n)

    def run() -> list[ScoredPoint]:
        if not state.collections.exists(ns):
            return []
        # One hit per item, scored by its best chunk: candidates grouped by item.
        return search_items(fetch, limit)

    hits = run() if inline else await anyio.to_thread.run_sync(run)
    return Ranked(hits=hits, retrieval=ran)
