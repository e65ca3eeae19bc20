"""Long-document retrieval: SciFact abstracts joined into long documents.

    PYTHONPATH=$PWD .venv/bin/python scripts/eval_longdoc.py ../shared/datasets/scifact
    ... --mode truncation            # the raw-model baseline only (no service)
    ... --mode api --gateway-url http://localhost:8080 --api-key vsk_...   # a running service

The SciFact abstracts (title, a line break, text) are shuffled with a fixed seed and joined,
`--per-doc` at a time, with a blank line between them, into long documents; a document is
relevant to a test query when one of its abstracts is (its grade: the highest). An abstract
has a median of 316 word pieces, so a document of 10 is ~3,000: a model that reads 256 sees
the start of its first abstract only.

- `api`: index the documents through the API (the public client, POST /api/runs) and search
  with every test query; nDCG@10 and recall@10 of the hits. Today's service embeds the
  first 256 word pieces of a text; a service that chunks runs the same code unchanged (one
  hit per document). Where hits carry `highlight: {"text", "start", "end"}`, it also reports
  how often the highlight of a relevant hit lies in a relevant abstract, and whether its
  text is the document's text at its offsets.
- `truncation`: the baseline, no service: the raw model embeds each whole document (it reads
  its first 256 word pieces) and exact cosine search ranks them. `--abstract-maxp` adds a
  reference: each abstract embedded alone and a document scored by its best abstract (what
  chunking at the abstracts' own boundaries would give).
- `both` (default): both, side by side, with the difference.

Without --gateway-url it starts its own service from this tree, with
VECTORSVC_MAX_TEXT_CHARS raised to fit the longest document where the default is lower
(today's 20,000). `--abstracts N` keeps a subset: every abstract relevant to a test query,
then the first others up to N. Writes bench/eval_longdoc.json.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, load_beir_queries, load_qrels, print_table, service, write_results
from eval_scifact import ndcg_at_k

from vectorsvc.client import VectorsvcClient, VectorsvcError

MODEL = "all-minilm-l6-v2"
SCOPE = "longdoc"
SEED = 17


@dataclass
class LongDoc:
    id: str
    text: str
    spans: list[tuple[str, int, int]] = field(default_factory=list)  # abstract id, start, end


def load_abstracts(dataset: Path) -> list[tuple[str, str]]:
    """(id, "title\\ntext") for every SciFact abstract, in corpus order."""
    import gzip
    import json

    out = []
    with gzip.open(dataset / "corpus.jsonl.gz", "rt", encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            out.append((row["_id"], f"{row['title']}\n{row['text']}".strip()))
    return out


def build_documents(
    abstracts: list[tuple[str, str]], per_doc: int, seed: int = SEED
) -> list[LongDoc]:
    order = list(abstracts)
    random.Random(seed).shuffle(order)
    docs = []
    for n in range(0, len(order), per_doc):
        doc = LongDoc(id=f"longdoc-{n // per_doc:05d}", text="")
        parts: list[str] = []
        offset = 0
        for abstract_id, text in order[n : n + per_doc]:
            if parts:
                offset += 2  # the blank line between abstracts
            doc.spans.append((abstract_id, offset, offset + len(text)))
            parts.append(text)
            offset += len(text)
        doc.text = "\n\n".join(parts)
        docs.append(doc)
    return docs


def document_qrels(
    docs: list[LongDoc], qrels: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    """A document's grade for a query: the highest of its abstracts' grades."""
    doc_of = {abstract: doc.id for doc in docs for abstract, _, _ in doc.spans}
    out: dict[str, dict[str, int]] = {}
    for qid, rels in qrels.items():
        for abstract, grade in rels.items():
            if abstract in doc_of and grade > 0:
                graded = out.setdefault(qid, {})
                graded[doc_of[abstract]] = max(graded.get(doc_of[abstract], 0), grade)
    return out


def recall_at_k(
    ranked: dict[str, list[str]], qrels: dict[str, dict[str, int]], k: int = 10
) -> float:
    scores = [
        len(set(ranked.get(qid, [])[:k]) & set(rels)) / len(rels) for qid, rels in qrels.items()
    ]
    return float(np.mean(scores))


def exact_ranking(
    query_vectors: np.ndarray, doc_scores_of: Any, doc_ids: list[str], qids: list[str]
) -> dict[str, list[str]]:
    scores = doc_scores_of(query_vectors)
    top = np.argsort(-scores, axis=1)[:, :10]
    return {qid: [doc_ids[j] for j in top[i]] for i, qid in enumerate(qids)}


def truncation_baseline(
    docs: list[LongDoc], queries: dict[str, str], abstract_maxp: bool
) -> dict[str, dict[str, list[str]]]:
    """Rankings of the raw model with exact search: whole documents (truncated by the
    model), and, if asked, documents scored by their best abstract."""
    from embedders.factory import create_embedder
    from vectorsvc.embedding import configure_model_threads

    configure_model_threads()
    embedder = create_embedder("sentence_transformer_text")
    qids = list(queries)
    query_vectors = embedder.embed_queries([queries[q] for q in qids])
    doc_ids = [d.id for d in docs]
    doc_vectors = embedder.embed_texts([d.text for d in docs])
    rankings = {
        "truncation": exact_ranking(query_vectors, lambda q: q @ doc_vectors.T, doc_ids, qids)
    }
    if abstract_maxp:
        texts = [d.text[s:e] for d in docs for _, s, e in d.spans]
        owner = np.array([n for n, d in enumerate(docs) for _ in d.spans])
        abstract_vectors = embedder.embed_texts(texts)

        def best_abstract(q: np.ndarray) -> np.ndarray:
            per_abstract = q @ abstract_vectors.T
            per_doc = np.full((q.shape[0], len(docs)), -np.inf, dtype=per_abstract.dtype)
            np.maximum.at(per_doc.T, owner, per_abstract.T)
            return per_doc

        rankings["abstract_maxp"] = exact_ranking(query_vectors, best_abstract, doc_ids, qids)
    return rankings


@dataclass
class ApiRun:
    ranked: dict[str, list[str]]
    hits: dict[str, list[dict[str, Any]]]
    index_s: float
    search_s: float
    duplicate_hits: int


def through_api(
    client: VectorsvcClient, model: str, docs: list[LongDoc], queries: dict[str, str], batch: int
) -> ApiRun:
    started = time.perf_counter()
    for i in range(0, len(docs), batch):
        items = [{"id": d.id, "text": d.text} for d in docs[i : i + batch]]
        try:
            client.index(model, SCOPE, items)
        except VectorsvcError as exc:
            if exc.code == "text_too_long":
                raise SystemExit(
                    f"the service refuses a document: {exc.message}; use fewer --per-doc, or "
                    "let the script start its own service (no --gateway-url)"
                ) from None
            raise
    index_s = time.perf_counter() - started
    started = time.perf_counter()
    ranked: dict[str, list[str]] = {}
    hits_of: dict[str, list[dict[str, Any]]] = {}
    duplicates = 0
    for qid, text in queries.items():
        # The raw run, not client.search: it keeps fields the client does not know yet.
        answer = client.run(
            model, "search", scope=SCOPE, input={"text": text}, params={"top_k": 10}
        )
        hits = (answer.get("output") or {}).get("hits") or []
        ids = [h["id"] for h in hits]
        duplicates += len(ids) - len(set(ids))
        ranked[qid] = list(dict.fromkeys(ids))  # one hit per document; count any extra
        hits_of[qid] = hits
    return ApiRun(ranked, hits_of, index_s, time.perf_counter() - started, duplicates)


def highlight_check(
    run: ApiRun, docs: list[LongDoc], abstract_qrels: dict[str, dict[str, int]]
) -> dict[str, Any]:
    """Of the relevant documents in the top 10: how many hits carry a highlight, how many
    of those lie in (overlap) a relevant abstract, and whether the highlight's text is the
    document's text at its offsets."""
    by_id = {d.id: d for d in docs}
    relevant_hits = with_highlight = in_relevant = text_mismatch = 0
    for qid, hits in run.hits.items():
        relevant = abstract_qrels.get(qid, {})
        for hit in hits:
            doc = by_id.get(hit["id"])
            spans = [(s, e) for a, s, e in doc.spans if relevant.get(a, 0) > 0] if doc else []
            if not spans:
                continue
            relevant_hits += 1
            highlight = hit.get("highlight")
            if not isinstance(highlight, dict) or doc is None:
                continue
            with_highlight += 1
            start, end = highlight.get("start"), highlight.get("end")
            if not (isinstance(start, int) and isinstance(end, int)):
                text_mismatch += 1
                continue
            if doc.text[start:end] != highlight.get("text"):
                text_mismatch += 1
            if any(start < e and end > s for s, e in spans):
                in_relevant += 1
    return {
        "relevant_hits": relevant_hits,
        "with_highlight": with_highlight,
        "highlight_in_relevant_abstract": in_relevant,
        "highlight_text_mismatch": text_mismatch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", type=Path, help="the SciFact folder (BEIR layout)")
    parser.add_argument("--mode", choices=("both", "api", "truncation"), default="both")
    parser.add_argument("--per-doc", type=int, default=10, help="abstracts per document")
    parser.add_argument("--abstracts", type=int, help="a subset: at most this many abstracts")
    parser.add_argument("--abstract-maxp", action="store_true", help="add the best-abstract run")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--gateway-url", help="a running service (default: start one here)")
    parser.add_argument("--api-key")
    parser.add_argument("--batch", type=int, default=16, help="documents per index run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "eval_longdoc.json")
    args = parser.parse_args()
    if args.model != MODEL and args.mode != "api":
        parser.error(f"the truncation baseline is {MODEL}'s; use --mode api for other models")

    abstract_qrels = load_qrels(args.dataset, "test")
    abstracts = load_abstracts(args.dataset)
    if args.abstracts is not None:
        relevant = {a for rels in abstract_qrels.values() for a in rels}
        keep = [a for a in abstracts if a[0] in relevant]
        keep += [a for a in abstracts if a[0] not in relevant][: max(0, args.abstracts - len(keep))]
        abstracts = keep
    docs = build_documents(abstracts, args.per_doc)
    qrels = document_qrels(docs, abstract_qrels)
    all_queries = load_beir_queries(args.dataset)
    queries = {qid: all_queries[qid] for qid in qrels}
    lengths = [len(d.text) for d in docs]

    results: dict[str, Any] = {
        "abstracts": len(abstracts),
        "documents": len(docs),
        "abstracts_per_document": args.per_doc,
        "document_chars_median": float(np.median(lengths)),
        "document_chars_max": max(lengths),
        "queries": len(queries),
        "seed": SEED,
        "model": args.model,
    }
    rows: list[tuple[str, str]] = []
    if args.mode in ("both", "truncation"):
        started = time.perf_counter()
        rankings = truncation_baseline(docs, queries, args.abstract_maxp)
        results["raw_seconds"] = time.perf_counter() - started
        for name, ranked in rankings.items():
            results[f"ndcg10_raw_{name}"] = ndcg_at_k(ranked, qrels)
            results[f"recall10_raw_{name}"] = recall_at_k(ranked, qrels)
        rows.append(
            (
                "raw model, whole document (truncated), exact",
                f"nDCG@10 {results['ndcg10_raw_truncation']:.4f}  "
                f"recall@10 {results['recall10_raw_truncation']:.4f}",
            )
        )
        if args.abstract_maxp:
            rows.append(
                (
                    "raw model, best abstract (reference), exact",
                    f"nDCG@10 {results['ndcg10_raw_abstract_maxp']:.4f}  "
                    f"recall@10 {results['recall10_raw_abstract_maxp']:.4f}",
                )
            )
    if args.mode in ("both", "api"):
        if args.gateway_url:
            if not args.api_key:
                parser.error("--gateway-url needs --api-key")
            with VectorsvcClient(args.gateway_url, args.api_key, timeout=600) as client:
                run = through_api(client, args.model, docs, queries, args.batch)
        else:
            env = {"VECTORSVC_RATE_LIMIT_PER_MINUTE": "0"}  # 300 queries in a few seconds
            from vectorsvc.config import Settings

            if Settings.model_fields["max_text_chars"].default < max(lengths):
                env["VECTORSVC_MAX_TEXT_CHARS"] = str(max(lengths))
            with service(env) as svc, VectorsvcClient(svc.url, svc.key, timeout=600) as client:
                run = through_api(client, args.model, docs, queries, args.batch)
        results.update(
            ndcg10_api=ndcg_at_k(run.ranked, qrels),
            recall10_api=recall_at_k(run.ranked, qrels),
            api_index_seconds=run.index_s,
            api_documents_per_second=len(docs) / run.index_s,
            api_search_seconds=run.search_s,
            api_duplicate_hits=run.duplicate_hits,
            **highlight_check(run, docs, abstract_qrels),
        )
        rows.append(
            (
                "through the API",
                f"nDCG@10 {results['ndcg10_api']:.4f}  recall@10 {results['recall10_api']:.4f}",
            )
        )
        rate = len(docs) / run.index_s
        rows.append(
            ("  index / search", f"{run.index_s:.1f} s ({rate:.1f} docs/s) / {run.search_s:.1f} s")
        )
        if results["with_highlight"]:
            rows.append(
                (
                    "  highlights in a relevant abstract",
                    f"{results['highlight_in_relevant_abstract']}/{results['with_highlight']} "
                    f"(text mismatches {results['highlight_text_mismatch']})",
                )
            )
        if run.duplicate_hits:
            rows.append(("  WARNING duplicate ids in hits", str(run.duplicate_hits)))
    if "ndcg10_api" in results and "ndcg10_raw_truncation" in results:
        delta = results["ndcg10_api"] - results["ndcg10_raw_truncation"]
        results["ndcg10_api_minus_truncation"] = delta
        rows.append(("API minus truncation (nDCG@10)", f"{delta:+.4f}"))
    print_table(
        f"SciFact long documents: {len(docs)} documents of {args.per_doc} abstracts "
        f"({len(abstracts)} abstracts, median {np.median(lengths):,.0f} characters), "
        f"{len(queries)} test queries",
        rows,
    )
    write_results(args.out, results)


if __name__ == "__main__":
    main()
