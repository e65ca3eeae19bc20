"""Retrieval quality through the API against the raw model with exact search.

    .venv/bin/python scripts/eval_scifact.py ../shared/datasets/scifact [--idf-scopes 1000]

Indexes the corpus (title + " " + text) through POST /api/runs, runs the test queries
through search with each `params.retrieval` (dense, keyword, hybrid) and with none (the
published default), and prints nDCG@10 of each beside the raw model with exact
(brute-force cosine) search over the same texts. Then, in the embedded store directly with
the same vectors: the fusion choices (RRF k, DBSF) and, with --idf-scopes, SciFact as one
scope among that many synthetic scopes in one collection (IDF is per collection). Writes
bench/eval_scifact.json.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    ROOT,
    load_beir_corpus,
    load_beir_queries,
    load_qrels,
    print_table,
    service,
    write_results,
)

MODEL = "all-minilm-l6-v2"
RETRIEVALS = ("dense", "keyword", "hybrid")


def ndcg_at_k(ranked: dict[str, list[str]], qrels: dict[str, dict[str, int]], k: int = 10) -> float:
    scores = []
    for qid, rels in qrels.items():
        ranking = ranked.get(qid, [])[:k]
        dcg = sum(rels.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranking))
        ideal = sorted(rels.values(), reverse=True)[:k]
        idcg = sum(rel / math.log2(i + 2) for i, rel in enumerate(ideal))
        scores.append(dcg / idcg if idcg else 0.0)
    return float(np.mean(scores))


def through_api(
    corpus: list[dict[str, str]], queries: dict[str, str], batch: int
) -> tuple[dict[str, dict[str, list[str]]], dict[str, str]]:
    """Ranked ids per retrieval ("default": no params.retrieval), and the retrieval each
    response said ran."""
    ranked: dict[str, dict[str, list[str]]] = {}
    ran: dict[str, str] = {}
    # The rate limit (1,200 runs a minute) would cut off the queries of a fast service.
    with service({"VECTORSVC_RATE_LIMIT_PER_MINUTE": "0"}) as svc, svc.client() as client:
        for i in range(0, len(corpus), batch):
            items = [{"id": d["id"], "text": d["text"]} for d in corpus[i : i + batch]]
            body = {"model": MODEL, "mode": "index", "scope": "scifact", "input": {"items": items}}
            client.post("/api/runs", json=body).raise_for_status()
        for retrieval in (*RETRIEVALS, "hybrid-dbsf", "default"):
            params: dict[str, Any] = {"top_k": 10}
            if retrieval == "hybrid-dbsf":
                params.update(retrieval="hybrid", fusion="dbsf")
            elif retrieval != "default":
                params["retrieval"] = retrieval
            ranked[retrieval] = {}
            for qid, text in queries.items():
                r = client.post(
                    "/api/runs",
                    json={
                        "model": MODEL,
                        "mode": "search",
                        "scope": "scifact",
                        "input": {"text": text},
                        "params": params,
                    },
                )
                r.raise_for_status()
                output = r.json()["output"]
                ranked[retrieval][qid] = [h["id"] for h in output["hits"]]
                ran[retrieval] = output["retrieval"]
    return ranked, ran


def store_fusion(
    corpus: list[dict[str, str]],
    doc_vectors: np.ndarray,
    queries: dict[str, str],
    query_vectors: np.ndarray,
    qrels: dict[str, dict[str, int]],
    synthetic: tuple[int, int, str] | None = None,
) -> dict[str, float]:
    """nDCG@10 of keyword and fused retrievals in an Edge collection (scope "scifact"),
    with `synthetic` = (scopes, docs per scope, vocabulary) other scopes beside it."""
    import qdrant_edge as qe

    from vectorsvc.points.sparse import document_vector, query_vector
    from vectorsvc.vectorstore import CollectionSpec, Filter, MatchValue, PointRecord
    from vectorsvc.vectorstore.edge import EdgeVectorStore
    from vectorsvc.vectorstore.edge.queries import edge_sparse

    rng = np.random.default_rng(7)
    scope = Filter((MatchValue("_tenant", "scifact"),))
    qids = list(queries)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, EdgeVectorStore(Path(tmp)) as store:
        store.ensure_collection(
            CollectionSpec(
                name="c", dimension=doc_vectors.shape[1], tenant_key="_tenant", sparse=True
            )
        )
        points = [
            PointRecord(
                id=str(uuid.UUID(int=i + 1)),
                payload={"_tenant": "scifact", "id": d["id"]},
                vector=doc_vectors[i],
                sparse=document_vector(d["text"]),
            )
            for i, d in enumerate(corpus)
        ]
        store.upsert("c", points)
        if synthetic is not None:
            scopes, per_scope, vocabulary = synthetic
            words = _vocabulary(corpus, vocabulary, rng)
            next_id = len(corpus) + 1
            for s in range(scopes):
                drawn = rng.choice(words[0], size=(per_scope, 60), p=words[1])  # one draw
                texts = [" ".join(row) for row in drawn]
                vectors = rng.standard_normal((per_scope, doc_vectors.shape[1]), dtype=np.float32)
                store.upsert(
                    "c",
                    [
                        PointRecord(
                            id=str(uuid.UUID(int=next_id + j)),
                            payload={"_tenant": f"syn-{s}", "id": f"syn-{s}-{j}"},
                            vector=vectors[j],
                            sparse=document_vector(t),
                        )
                        for j, t in enumerate(texts)
                    ],
                )
                next_id += per_scope
        sparse = {q: query_vector(queries[q]) for q in qids}

        def ranked(run: Any) -> float:
            return ndcg_at_k(
                {q: [h.payload["id"] for h in run(i, q)] for i, q in enumerate(qids)}, qrels
            )

        out["keyword"] = ranked(
            lambda i, q: store.search_keyword("c", sparse[q], filter=scope, limit=10)
        )
        # IDF over the scope's own points, as the service asks for (runs/retrieval.py)
        out["keyword_scope_idf"] = ranked(
            lambda i, q: store.search_keyword(
                "c", sparse[q], filter=scope, limit=10, idf_scope=scope
            )
        )
        out["rrf_k60_scope_idf"] = ranked(
            lambda i, q: store.search_hybrid(
                "c",
                query_vectors[i],
                sparse[q],
                filter=scope,
                limit=10,
                candidates=100,
                rrf_k=60,
                idf_scope=scope,
            )
        )
        for k in (2, 10, 60):
            out[f"rrf_k{k}"] = ranked(
                lambda i, q, k=k: store.search_hybrid(
                    "c",
                    query_vectors[i],
                    sparse[q],
                    filter=scope,
                    limit=10,
                    candidates=100,
                    rrf_k=k,
                )
            )
        shard = store._shard("c")  # DBSF is not offered by the store: ask Edge directly
        edge_filter = qe.Filter(must=[qe.FieldCondition("_tenant", match=qe.MatchValue("scifact"))])

        def fused(fusion: Any) -> Any:
            def run(i: int, q: str) -> list[Any]:
                dense = qe.Query.Nearest(query_vectors[i].tolist(), using="dense")
                keyword = qe.Query.Nearest(edge_sparse(sparse[q]), using="bm25")
                request = qe.QueryRequest(
                    limit=10,
                    prefetches=[
                        qe.Prefetch(100, dense, filter=edge_filter),
                        qe.Prefetch(100, keyword, filter=edge_filter),
                    ],
                    query=fusion,
                    filter=edge_filter,
                    with_payload=True,
                )
                return list(shard.query(request))

            return run

        for dense_weight in (0.5, 2.0, 3.0):
            out[f"rrf_k60_dense_weight{dense_weight}"] = ranked(
                fused(qe.Fusion.Rrf(k=60, weights=[dense_weight, 1.0]))
            )
        out["dbsf"] = ranked(fused(qe.Fusion.Dbsf()))
    return out


def _vocabulary(
    corpus: list[dict[str, str]], kind: str, rng: np.random.Generator
) -> tuple[list[str], np.ndarray]:
    """Words and their probabilities: SciFact's own ("shared": its unigram frequencies) or
    made-up words no SciFact text holds ("disjoint", Zipf-distributed)."""
    if kind == "shared":
        counts: dict[str, int] = {}
        for d in corpus:
            for w in d["text"].lower().split():
                counts[w] = counts.get(w, 0) + 1
        words = list(counts)
        freq = np.array([counts[w] for w in words], dtype=np.float64)
        return words, freq / freq.sum()
    words = ["".join(rng.choice(list("bcdfghjklmnpqrstvwxz"), size=7)) + "q" for _ in range(50_000)]
    freq = 1.0 / np.arange(1, len(words) + 1)
    return words, freq / freq.sum()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--idf-scopes", type=int, default=0, help="synthetic scopes beside SciFact")
    parser.add_argument("--idf-docs", type=int, default=200, help="documents per synthetic scope")
    parser.add_argument("--skip-api", action="store_true", help="the store measurements only")
    parser.add_argument(
        "--vectors-cache", type=Path, help="an .npz of the raw vectors: read if there, else written"
    )
    parser.add_argument(
        "--subset",
        type=int,
        metavar="N",
        help="a quicker run: only the test queries' relevant documents and N others (random, "
        "seed 7); the figures are then not comparable with the full corpus's (nor a vectors "
        "cache of the full corpus)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "eval_scifact.json")
    args = parser.parse_args()

    corpus = load_beir_corpus(args.dataset)
    queries = load_beir_queries(args.dataset)
    qrels = load_qrels(args.dataset, "test")
    test_queries = {qid: queries[qid] for qid in qrels}
    if args.subset is not None:
        relevant = {doc for rels in qrels.values() for doc in rels}
        others = [d for d in corpus if d["id"] not in relevant]
        corpus = [d for d in corpus if d["id"] in relevant] + random.Random(7).sample(
            others, min(args.subset, len(others))
        )

    from embedders.factory import create_embedder
    from vectorsvc.embedding import configure_model_threads

    configure_model_threads()  # as the service does: idle OpenMP threads sleep, not spin
    started = time.perf_counter()
    qids = list(test_queries)
    if args.vectors_cache and args.vectors_cache.exists():
        cached = np.load(args.vectors_cache)
        doc_vectors, query_vectors = cached["docs"], cached["queries"]
    else:
        embedder = create_embedder("sentence_transformer_text")
        doc_vectors = embedder.embed_texts([d["text"] for d in corpus])
        query_vectors = embedder.embed_queries([test_queries[q] for q in qids])
        del embedder
        if args.vectors_cache:
            np.savez(args.vectors_cache, docs=doc_vectors, queries=query_vectors)
    scores = query_vectors @ doc_vectors.T
    top = np.argsort(-scores, axis=1)[:, :10]
    raw_ranked = {qid: [corpus[j]["id"] for j in top[i]] for i, qid in enumerate(qids)}
    raw_ndcg = ndcg_at_k(raw_ranked, qrels)
    raw_s = time.perf_counter() - started

    results: dict[str, Any] = {
        "corpus": len(corpus),
        "queries": len(qids),
        "ndcg10_raw_exact": raw_ndcg,
        "published_mteb_ndcg10": 0.645,
        "raw_seconds": raw_s,
    }
    rows: list[tuple[str, str]] = [("dense, raw model, exact search", f"{raw_ndcg:.4f}")]
    api: dict[str, float] = {}
    if not args.skip_api:
        started = time.perf_counter()
        ranked, ran = through_api(corpus, test_queries, args.batch)
        results["api_seconds"] = time.perf_counter() - started
        for retrieval, by_query in ranked.items():
            api[retrieval] = ndcg_at_k(by_query, qrels)
            results[f"ndcg10_api_{retrieval}"] = api[retrieval]
            rows.append(
                (f"{retrieval} through the API (ran {ran[retrieval]})", f"{api[retrieval]:.4f}")
            )
        same = sum(ranked["dense"][q] == raw_ranked[q] for q in qids) / len(qids)
        results["dense_identical_top10_fraction"] = same
        rows.append(("dense: queries with identical top 10 to raw", f"{same:.1%}"))
    fusion = store_fusion(corpus, doc_vectors, test_queries, query_vectors, qrels)
    results["store_alone"] = fusion
    rows += [(f"store, SciFact alone: {name}", f"{value:.4f}") for name, value in fusion.items()]
    if args.idf_scopes:
        for vocabulary in ("disjoint", "shared"):
            mixed = store_fusion(
                corpus,
                doc_vectors,
                test_queries,
                query_vectors,
                qrels,
                synthetic=(args.idf_scopes, args.idf_docs, vocabulary),
            )
            results[f"store_among_{args.idf_scopes}_scopes_{vocabulary}"] = mixed
            rows += [
                (
                    f"store, among {args.idf_scopes} {vocabulary}-vocabulary scopes: {name}",
                    f"{value:.4f}",
                )
                for name, value in mixed.items()
            ]
    print_table(f"SciFact nDCG@10: {len(corpus)} docs, {len(qids)} test queries", rows)
    write_results(args.out, results)
    # Chunked dense search reads whole documents, the raw model only their first 256 word
    # pieces: through the API it must not be worse.
    if api and api["dense"] < raw_ndcg - 0.005:
        raise SystemExit("FAIL: API dense nDCG@10 is worse than the raw model's")


if __name__ == "__main__":
    main()
