"""One suite, every backend: Edge on a tmp dir, qdrant-client local mode, and (when
VECTORSVC_TEST_QDRANT_URL is set) a real Qdrant server. Plus a congruence check that the
backends rank identically, and Edge durability across close/reopen."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from vectorsvc.vectorstore import (
    CollectionNotFound,
    CollectionSpec,
    DimensionMismatch,
    Filter,
    HasIds,
    MatchAny,
    MatchValue,
    PointRecord,
    Range,
    VectorStore,
    VectorStoreError,
    open_vector_store,
)
from vectorsvc.vectorstore.edge import EdgeVectorStore
from vectorsvc.vectorstore.remote import RemoteVectorStore

# Local mode warns that payload indexes are no-ops; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")

SERVER_URL_ENV = "VECTORSVC_TEST_QDRANT_URL"
DIM = 16
N = 40
TENANT = "_tenant"
LANGS = ("en", "de", "fr")


# --- data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    ids: list[str]
    vectors: np.ndarray[Any, np.dtype[np.float32]]
    payloads: list[dict[str, Any]]

    def records(self) -> list[PointRecord]:
        return [
            PointRecord(id=i, payload=p, vector=v)
            for i, p, v in zip(self.ids, self.payloads, self.vectors, strict=True)
        ]

    def where(self, pred: Callable[[str, dict[str, Any]], bool]) -> set[str]:
        return {i for i, p in zip(self.ids, self.payloads, strict=True) if pred(i, p)}


def make_dataset(seed: int = 1234) -> Dataset:
    rng = np.random.default_rng(seed)
    ids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(N)]
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    payloads = [
        {
            TENANT: "ws1/a" if i % 3 else "ws2/a",  # 26 vs 14 points
            "lang": LANGS[i % len(LANGS)],
            "n": i,
            "price": i * 0.5,
            "flag": i % 4 == 0,
            "metadata": {"kind": "even" if i % 2 == 0 else "odd"},
            # On a quarter of the points only: conditions on a field some points lack.
            **({"part": i % 8} if i % 4 == 1 else {}),
        }
        for i in range(N)
    ]
    return Dataset(ids=ids, vectors=vectors, payloads=payloads)


DATA = make_dataset()


def spec(name: str, dim: int = DIM) -> CollectionSpec:
    return CollectionSpec(
        name=name,
        dimension=dim,
        tenant_key=TENANT,
        keyword_fields=("lang", "metadata.kind"),
        float_fields=("price",),
    )


# --- backends ------------------------------------------------------------------------------


@dataclass
class Harness:
    store: VectorStore
    prefix: str  # unique per test so a shared server stays clean

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    def loaded(self, base: str = "docs") -> str:
        name = self.name(base)
        self.store.ensure_collection(spec(name))
        self.store.upsert(name, DATA.records())
        return name


def _drop_remote(client: QdrantClient, prefix: str) -> None:
    for alias in client.get_aliases().aliases:
        if alias.alias_name.startswith(prefix):
            client.update_collection_aliases(
                change_aliases_operations=[
                    qm.DeleteAliasOperation(
                        delete_alias=qm.DeleteAlias(alias_name=alias.alias_name)
                    )
                ]
            )
    for coll in client.get_collections().collections:
        if coll.name.startswith(prefix) or f"__{prefix}" in coll.name:  # release collections
            client.delete_collection(coll.name)


def _open(kind: str, tmp_path: Path) -> tuple[VectorStore, Callable[[], None]]:
    """A fresh store of `kind` and its teardown."""
    if kind == "edge":
        edge = EdgeVectorStore(tmp_path / "edge")
        return edge, edge.close
    if kind == "memory":
        local = RemoteVectorStore(QdrantClient(":memory:"))
        return local, local.close
    url = os.environ.get(SERVER_URL_ENV)
    if not url:
        pytest.skip(f"set {SERVER_URL_ENV} to run against a real Qdrant server")
    remote = RemoteVectorStore(QdrantClient(url=url))
    return remote, remote.close


BACKENDS = ["edge", "memory", "server"]


@pytest.fixture(params=BACKENDS)
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    store, teardown = _open(request.param, tmp_path)
    harness = Harness(store=store, prefix=f"t{uuid.uuid4().hex[:8]}_")
    try:
        yield harness
    finally:
        if isinstance(store, RemoteVectorStore) and request.param == "server":
            _drop_remote(store.client, harness.prefix)
        teardown()


def all_ids_by_scroll(store: VectorStore, name: str, flt: Filter, page: int = 7) -> list[str]:
    seen: list[str] = []
    offset: str | None = None
    while True:
        result = store.scroll(name, filter=flt, limit=page, offset=offset)
        assert len(result.points) <= page
        seen.extend(p.id for p in result.points)
        if result.next_offset is None:
            return seen
        assert result.points, "a page with a next offset must not be empty"
        offset = result.next_offset


# --- filter cases: (name, filter, python predicate) --------------------------------------

FILTER_CASES: list[tuple[str, Filter, Callable[[str, dict[str, Any]], bool]]] = [
    ("everything", Filter(), lambda i, p: True),
    ("match_str", Filter((MatchValue("lang", "de"),)), lambda i, p: p["lang"] == "de"),
    ("match_int", Filter((MatchValue("n", 7),)), lambda i, p: p["n"] == 7),
    ("match_bool", Filter((MatchValue("flag", True),)), lambda i, p: p["flag"] is True),
    (
        "match_nested_key",
        Filter((MatchValue("metadata.kind", "odd"),)),
        lambda i, p: p["metadata"]["kind"] == "odd",
    ),
    ("any_str", Filter((MatchAny("lang", ("en", "fr")),)), lambda i, p: p["lang"] in {"en", "fr"}),
    ("any_int", Filter((MatchAny("n", (1, 2, 30)),)), lambda i, p: p["n"] in {1, 2, 30}),
    ("any_empty", Filter((MatchAny("lang", ()),)), lambda i, p: False),
    (
        "any_mixed",
        Filter((MatchAny("lang", ("de", 3)),)),
        lambda i, p: p["lang"] == "de",
    ),
    (
        "range_closed",
        Filter((Range("price", gte=5.0, lt=10.0),)),
        lambda i, p: 5.0 <= p["price"] < 10.0,
    ),
    ("range_open", Filter((Range("price", gt=15.0),)), lambda i, p: p["price"] > 15.0),
    ("range_lte", Filter((Range("n", lte=3),)), lambda i, p: p["n"] <= 3),
    (
        "has_ids",
        Filter((HasIds(tuple(DATA.ids[5:12])),)),
        lambda i, p: i in set(DATA.ids[5:12]),
    ),
    ("tenant", Filter((MatchValue(TENANT, "ws2/a"),)), lambda i, p: p[TENANT] == "ws2/a"),
    (
        "tenant_and_lang_and_range",
        Filter((MatchValue(TENANT, "ws1/a"), MatchAny("lang", ("en",)), Range("n", gte=10))),
        lambda i, p: p[TENANT] == "ws1/a" and p["lang"] == "en" and p["n"] >= 10,
    ),
    (
        "tenant_and_foreign_ids",
        # ids of the other tenant: the tenant condition still wins.
        Filter((MatchValue(TENANT, "ws1/a"), HasIds((DATA.ids[0], DATA.ids[3], DATA.ids[1])))),
        lambda i, p: p[TENANT] == "ws1/a" and i in {DATA.ids[0], DATA.ids[3], DATA.ids[1]},
    ),
]
FILTER_CASES += [
    (
        "not_range_on_a_field_some_lack",  # points without the field are kept
        Filter(must_not=(Range("part", gte=2),)),
        lambda i, p: not ("part" in p and p["part"] >= 2),
    ),
    (
        "tenant_and_not_lang",
        Filter((MatchValue(TENANT, "ws1/a"),), must_not=(MatchValue("lang", "de"),)),
        lambda i, p: p[TENANT] == "ws1/a" and p["lang"] != "de",
    ),
    (
        "and_not_keeps_both",
        Filter((MatchValue(TENANT, "ws1/a"),))
        .and_not(MatchAny("n", (1, 2, 4)))
        .and_(Range("n", lt=10)),
        lambda i, p: p[TENANT] == "ws1/a" and p["n"] not in {1, 2, 4} and p["n"] < 10,
    ),
]
CASE_IDS = [c[0] for c in FILTER_CASES]


# --- tests ---------------------------------------------------------------------------------


def test_implements_protocol(h: Harness) -> None:
    assert isinstance(h.store, VectorStore)
    assert h.store.backend_name in {"edge", "remote"}


def test_ensure_collection_idempotent_and_dimension_mismatch(h: Harness) -> None:
    name = h.name("c")
    assert not h.store.collection_exists(name)
    h.store.ensure_collection(spec(name))
    h.store.ensure_collection(spec(name))  # idempotent
    h.store.upsert(name, DATA.records()[:3])
    h.store.ensure_collection(spec(name))  # still idempotent with data, and keeps it
    assert h.store.count(name, filter=Filter()) == 3
    assert h.store.collection_exists(name)
    assert [c for c in h.store.list_collections() if c.startswith(h.prefix)] == [name]

    with pytest.raises(DimensionMismatch) as err:
        h.store.ensure_collection(spec(name, dim=DIM + 1))
    assert (err.value.name, err.value.expected, err.value.actual) == (name, DIM + 1, DIM)


def test_missing_collection_raises(h: Harness) -> None:
    missing = h.name("missing")
    with pytest.raises(CollectionNotFound):
        h.store.count(missing, filter=Filter())
    with pytest.raises(CollectionNotFound):
        h.store.search(missing, DATA.vectors[0], filter=Filter(), limit=3)
    with pytest.raises(CollectionNotFound):
        h.store.upsert(missing, DATA.records()[:1])


def test_wrong_vector_dimension_raises(h: Harness) -> None:
    name = h.loaded()
    short = np.ones(DIM - 2, dtype=np.float32)
    with pytest.raises(DimensionMismatch) as err:
        h.store.search(name, short, filter=Filter(), limit=3)
    assert (err.value.expected, err.value.actual) == (DIM - 2, DIM)
    with pytest.raises(DimensionMismatch):
        h.store.upsert(name, [PointRecord(id=str(uuid.uuid4()), payload={}, vector=short)])
    assert h.store.count(name, filter=Filter()) == N


def test_search_ranks_exact_vector_first(h: Harness) -> None:
    name = h.loaded()
    for idx in (0, 7, 23, 39):
        hits = h.store.search(name, DATA.vectors[idx], filter=Filter(), limit=5)
        assert len(hits) == 5
        assert hits[0].id == DATA.ids[idx]
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert hits[0].payload == DATA.payloads[idx]
        scores = [hit.score for hit in hits]
        assert scores == sorted(scores, reverse=True)
    # offset skips the best hits and keeps the order
    full = h.store.search(name, DATA.vectors[3], filter=Filter(), limit=6)
    paged = h.store.search(name, DATA.vectors[3], filter=Filter(), limit=3, offset=3)
    assert [p.id for p in paged] == [p.id for p in full[3:]]


def test_upsert_same_id_twice_keeps_one_point(h: Harness) -> None:
    name = h.loaded()
    pid = DATA.ids[4]
    new_vector = -DATA.vectors[4]
    h.store.upsert(
        name, [PointRecord(id=pid, payload={TENANT: "ws1/a", "v": 2}, vector=new_vector)]
    )
    h.store.upsert(
        name, [PointRecord(id=pid, payload={TENANT: "ws1/a", "v": 3}, vector=new_vector)]
    )
    assert h.store.count(name, filter=Filter()) == N
    assert h.store.count(name, filter=Filter((HasIds((pid,)),))) == 1
    [record] = h.store.retrieve(name, [pid])
    assert record.payload == {TENANT: "ws1/a", "v": 3}
    assert h.store.search(name, new_vector, filter=Filter(), limit=1)[0].id == pid
    # uppercase spelling of the same UUID is the same point
    h.store.upsert(name, [PointRecord(id=pid.upper(), payload={"v": 4}, vector=new_vector)])
    assert h.store.count(name, filter=Filter()) == N
    assert h.store.retrieve(name, [pid])[0].payload == {"v": 4}


@pytest.mark.parametrize("case", FILTER_CASES, ids=CASE_IDS)
def test_filters_on_search_count_scroll(
    h: Harness, case: tuple[str, Filter, Callable[[str, dict[str, Any]], bool]]
) -> None:
    _, flt, pred = case
    name = h.loaded()
    expected = DATA.where(pred)

    assert h.store.count(name, filter=flt) == len(expected)

    scrolled = all_ids_by_scroll(h.store, name, flt)
    assert len(scrolled) == len(set(scrolled))
    assert set(scrolled) == expected

    hits = h.store.search(name, DATA.vectors[0], filter=flt, limit=N)
    assert {hit.id for hit in hits} == expected
    for hit in hits:
        assert pred(hit.id, hit.payload)


@pytest.mark.parametrize("case", FILTER_CASES, ids=CASE_IDS)
def test_filters_on_delete(
    h: Harness, case: tuple[str, Filter, Callable[[str, dict[str, Any]], bool]]
) -> None:
    _, flt, pred = case
    name = h.loaded()
    doomed = DATA.where(pred)
    assert h.store.delete(name, filter=flt) == len(doomed)
    assert set(all_ids_by_scroll(h.store, name, Filter())) == set(DATA.ids) - doomed
    assert h.store.delete(name, filter=flt) == 0  # nothing left to match


def test_tenant_restriction_never_leaks(h: Harness) -> None:
    name = h.loaded()
    mine = Filter((MatchValue(TENANT, "ws1/a"),))
    foreign = [i for i, p in zip(DATA.ids, DATA.payloads, strict=True) if p[TENANT] == "ws2/a"]
    foreign_idx = DATA.ids.index(foreign[0])
    # Query with another tenant's exact vector: its point must still not come back.
    hits = h.store.search(name, DATA.vectors[foreign_idx], filter=mine, limit=N)
    assert hits and not ({hit.id for hit in hits} & set(foreign))
    assert all(hit.payload[TENANT] == "ws1/a" for hit in hits)
    assert h.store.facet(name, TENANT, filter=mine, limit=10) == {"ws1/a": N - len(foreign)}
    # Deleting as one tenant leaves the other untouched.
    assert h.store.delete(name, filter=mine) == N - len(foreign)
    assert h.store.count(name, filter=Filter()) == len(foreign)


def test_delete_returns_exact_counts(h: Harness) -> None:
    name = h.loaded()
    by_ids = Filter((HasIds((DATA.ids[1], DATA.ids[2], str(uuid.uuid4()))),))
    assert h.store.delete(name, filter=by_ids) == 2
    assert h.store.retrieve(name, DATA.ids[1:3]) == []
    assert h.store.count(name, filter=Filter()) == N - 2
    assert h.store.delete(name, filter=Filter((MatchValue("lang", "nope"),))) == 0
    assert h.store.delete(name, filter=Filter()) == N - 2
    assert h.store.count(name, filter=Filter()) == 0
    assert h.store.scroll(name, filter=Filter(), limit=5).points == []


def test_scroll_pages_cover_every_point_once_in_id_order(h: Harness) -> None:
    name = h.loaded()
    for page in (1, 7, N, N + 5):
        ids = all_ids_by_scroll(h.store, name, Filter(), page=page)
        assert ids == sorted(DATA.ids, key=lambda s: uuid.UUID(s).int)
    first = h.store.scroll(name, filter=Filter(), limit=N)
    assert first.next_offset is None
    assert {p.id: p.payload for p in first.points} == dict(
        zip(DATA.ids, DATA.payloads, strict=True)
    )
    assert all(p.vector is None for p in first.points)


def test_facet_counts(h: Harness) -> None:
    name = h.loaded()
    everything = Counter(p["lang"] for p in DATA.payloads)
    assert h.store.facet(name, "lang", filter=Filter(), limit=10) == dict(everything)
    ws2 = Filter((MatchValue(TENANT, "ws2/a"),))
    expected = Counter(p["lang"] for p in DATA.payloads if p[TENANT] == "ws2/a")
    assert h.store.facet(name, "lang", filter=ws2, limit=10) == dict(expected)
    top = h.store.facet(name, "lang", filter=Filter(), limit=1)
    assert list(top.values()) == [max(everything.values())]
    assert h.store.facet(name, "metadata.kind", filter=Filter(), limit=10) == {
        "even": N // 2,
        "odd": N // 2,
    }


def test_alias_set_switch_resolve(h: Harness) -> None:
    blue, green, alias = h.name("blue"), h.name("green"), h.name("live")
    h.store.ensure_collection(spec(blue))
    h.store.ensure_collection(spec(green))
    h.store.upsert(blue, DATA.records()[:5])
    h.store.upsert(green, DATA.records()[:9])
    assert h.store.resolve_alias(alias) is None

    h.store.set_alias(alias, blue)
    assert h.store.resolve_alias(alias) == blue
    assert h.store.count(alias, filter=Filter()) == 5  # aliases work as collection names
    assert h.store.collection_exists(alias)

    h.store.set_alias(alias, green)  # atomic switch
    assert h.store.resolve_alias(alias) == green
    assert h.store.count(alias, filter=Filter()) == 9
    assert alias not in h.store.list_collections()

    with pytest.raises(CollectionNotFound):
        h.store.set_alias(h.name("other"), h.name("nope"))
    assert h.store.resolve_alias(h.name("other")) is None


def test_retrieve(h: Harness) -> None:
    name = h.loaded()
    missing = str(uuid.uuid4())
    wanted = [DATA.ids[9], missing, DATA.ids[2], DATA.ids[9].upper()]
    records = h.store.retrieve(name, wanted)
    assert [r.id for r in records] == [DATA.ids[9], DATA.ids[2]]
    assert [r.payload for r in records] == [DATA.payloads[9], DATA.payloads[2]]
    assert all(r.vector is None for r in records)
    assert h.store.retrieve(name, []) == []


def test_delete_collection(h: Harness) -> None:
    name, kept, alias = h.loaded(), h.name("kept"), h.name("live")
    h.store.ensure_collection(spec(kept))
    h.store.set_alias(alias, kept)
    with pytest.raises(VectorStoreError):
        h.store.delete_collection(kept)  # an alias names it
    h.store.delete_collection(name)
    assert not h.store.collection_exists(name) and name not in h.store.list_collections()
    h.store.delete_collection(name)  # absent: nothing to do
    h.store.ensure_collection(spec(name))  # the name can be used again, empty
    assert h.store.count(name, filter=Filter()) == 0


def test_release_migration_keeps_both_releases_in_step(h: Harness, tmp_path: Path) -> None:
    """A release migration's store operations (`points.releases`, `points.store`,
    `points.items`), alike on every backend: the re-embedded copy never undoes a delete or a
    rewrite made while it was read, writes and deletes reach both releases, the alias moves
    in one call and the old release can be dropped once it is not named."""
    from vectorsvc.db.database import Database
    from vectorsvc.model_registry.registry import ModelRegistry
    from vectorsvc.points import namespaces
    from vectorsvc.points.collections import CollectionManager
    from vectorsvc.points.items import stored_items
    from vectorsvc.points.payload import point_payload
    from vectorsvc.points.releases import Route
    from vectorsvc.points.store import delete_and_recount, upsert_and_recount
    from vectorsvc.workspaces.service import create_workspace

    base = ModelRegistry.from_file().get("all-minilm-l6-v2")
    model = base.model_copy(update={"slug": f"{h.prefix[:-1]}m"})
    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    db.migrate()
    with db.session() as session:
        workspace_id = create_workspace(session, name="acme").id
    collections = CollectionManager(h.store)
    scope = namespaces.Scope("docs")
    rng = np.random.default_rng(7)

    def points(ns: namespaces.Namespace, ids: range, tag: str = "") -> list[PointRecord]:
        return [
            PointRecord(
                id=ns.point_id(f"d{i}"),
                vector=rng.standard_normal(model.dimension).astype(np.float32),
                payload=point_payload(
                    ns,
                    item_id=f"d{i}",
                    text=f"text {i}{tag}",
                    media_ref=None,
                    metadata={"n": i},
                    content_hash=None,
                    run_id=None,
                    indexed_at="2026-01-01T00:00:00+00:00",
                ),
            )
            for i in ids
        ]

    def write(ns: namespaces.Namespace, recs: list[PointRecord]) -> None:
        upsert_and_recount(
            h.store, db, collections, model=model, ns=ns, modality="text", points=recs
        )

    r1 = namespaces.release_collection(model.slug, "1")
    r2 = namespaces.release_collection(model.slug, "2")
    alias = namespaces.alias_name(model)
    old = namespaces.resolve(workspace_id=workspace_id, model=model, scope=scope, release="1")
    write(old, points(old, range(20)))
    assert h.store.resolve_alias(alias) == r1

    collections.releases.set_route(model.slug, Route(live="1", mirrors=("2",), target="2"))
    live = collections.resolve(workspace_id=workspace_id, model=model, scope=scope)
    assert (live.collection, live.mirrors) == (r1, (r2,))
    target = namespaces.resolve(
        workspace_id=workspace_id, model=model, scope=scope, release="2", reembed_from="1"
    )
    page = stored_items(h.store, r1, live, limit=8, offset=None)
    assert page.read == 8 and page.next_offset is not None
    read_ids = [item.item_id for item in page.items]
    # While the page is being re-embedded: one of its items is deleted, another rewritten.
    gone, rewritten = read_ids[0], read_ids[1]
    delete_and_recount(
        h.store,
        db,
        ns=live,
        flt=live.tenant_filter.and_(HasIds((live.point_id(gone),))),
        collections=collections,
    )
    fresh = [p for p in points(live, range(20), " v2") if p.payload["id"] == rewritten]
    write(live, fresh)
    write(live, points(live, range(100, 102)))  # new items, written to both releases
    copied = [
        p for p in points(target, range(20)) if p.payload["id"] in set(read_ids)
    ]  # the page's items as read
    write(target, copied)
    offset = page.next_offset
    while offset is not None:
        page = stored_items(h.store, r1, live, limit=8, offset=offset)
        wanted = {item.item_id for item in page.items}
        write(target, [p for p in points(target, range(200)) if p.payload["id"] in wanted])
        offset = page.next_offset

    def by_id(name: str) -> dict[str, str]:
        found = h.store.scroll(name, filter=live.tenant_filter, limit=1000).points
        return {str(p.payload["id"]): str(p.payload["text"]) for p in found}

    assert gone not in by_id(r2)  # not resurrected
    assert by_id(r2)[rewritten] == by_id(r1)[rewritten] == f"text {rewritten[1:]} v2"
    assert set(by_id(r2)) == set(by_id(r1)) and len(by_id(r2)) == 21
    h.store.set_alias(alias, r2)  # the swap: one call
    assert h.store.resolve_alias(alias) == r2
    assert h.store.count(alias, filter=live.tenant_filter) == 21
    with pytest.raises(VectorStoreError):
        h.store.delete_collection(r2)
    h.store.delete_collection(r1)  # prune
    assert h.store.list_collections().count(r1) == 0
    db.close()


def test_retrieve_with_vectors(h: Harness) -> None:
    name = h.loaded()
    records = h.store.retrieve(name, [DATA.ids[3], DATA.ids[7]], with_vectors=True)
    assert [r.id for r in records] == [DATA.ids[3], DATA.ids[7]]
    for record, row in zip(records, (3, 7), strict=True):
        assert record.vector is not None and record.vector.dtype == np.float32
        expected = DATA.vectors[row] / np.linalg.norm(DATA.vectors[row])  # cosine: normalised
        np.testing.assert_allclose(record.vector, expected, atol=1e-5)


# --- congruence: same data, same answers -------------------------------------------------


def test_backends_are_congruent(tmp_path: Path) -> None:
    kinds = ["edge", "memory"] + (["server"] if os.environ.get(SERVER_URL_ENV) else [])
    opened = [_open(kind, tmp_path) for kind in kinds]
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    name = f"{prefix}docs"
    try:
        for store, _ in opened:
            store.ensure_collection(spec(name))
            store.upsert(name, DATA.records())
        rng = np.random.default_rng(99)
        queries = [rng.standard_normal(DIM).astype(np.float32) for _ in range(5)]
        filters = [case[1] for case in FILTER_CASES]
        reference, *others = (s for s, _ in opened)
        for query in queries:
            for flt in filters:
                want = reference.search(name, query, filter=flt, limit=10)
                for other in others:
                    got = other.search(name, query, filter=flt, limit=10)
                    assert [p.id for p in got] == [p.id for p in want]
                    assert [p.score for p in got] == pytest.approx(
                        [p.score for p in want], abs=1e-5
                    )
                    assert [p.payload for p in got] == [p.payload for p in want]
        for flt in filters:
            want_count = reference.count(name, filter=flt)
            want_facet = reference.facet(name, "lang", filter=flt, limit=10)
            for other in others:
                assert other.count(name, filter=flt) == want_count
                assert other.facet(name, "lang", filter=flt, limit=10) == want_facet
    finally:
        for store, teardown in opened:
            if isinstance(store, RemoteVectorStore) and store.client.init_options.get("url"):
                _drop_remote(store.client, prefix)
            teardown()


# --- Edge only ---------------------------------------------------------------------------


def test_edge_survives_close_and_reopen(tmp_path: Path) -> None:
    root = tmp_path / "edge"
    store = EdgeVectorStore(root)
    store.ensure_collection(spec("docs"))
    store.upsert("docs", DATA.records())
    store.set_alias("live", "docs")
    assert store.delete("docs", filter=Filter((MatchValue("lang", "fr"),))) == 13
    with pytest.raises(VectorStoreError):
        EdgeVectorStore(root)  # one process (and one store) per root
    store.close()
    store.close()  # idempotent
    with pytest.raises(VectorStoreError):
        store.count("docs", filter=Filter())

    with EdgeVectorStore(root) as reopened:
        assert reopened.list_collections() == ["docs"]
        assert reopened.resolve_alias("live") == "docs"
        assert reopened.count("live", filter=Filter()) == N - 13
        hits = reopened.search("docs", DATA.vectors[4], filter=Filter(), limit=1)
        assert hits[0].id == DATA.ids[4] and hits[0].payload == DATA.payloads[4]
        assert reopened.facet("docs", "lang", filter=Filter(), limit=10) == {"en": 14, "de": 13}
        with pytest.raises(DimensionMismatch):
            reopened.ensure_collection(spec("docs", dim=DIM * 2))
        reopened.ensure_collection(spec("docs"))  # spec persisted: same dimension is fine


_CRASHING_WRITER = """
import os, sys
from pathlib import Path
import numpy as np
from vectorsvc.vectorstore import CollectionSpec, PointRecord
from vectorsvc.vectorstore.edge import EdgeVectorStore

store = EdgeVectorStore(Path(sys.argv[1]))
store.ensure_collection(CollectionSpec(name="docs", dimension=4, tenant_key="_tenant"))
vector = np.array([1, 2, 3, 4], dtype=np.float32)
store.upsert("docs", [PointRecord(id=sys.argv[2], payload={"_tenant": "x"}, vector=vector)])
os._exit(0)  # no close(), no flush: only the WAL can bring the point back
"""


def test_edge_upsert_is_durable_without_close(tmp_path: Path) -> None:
    root, pid = tmp_path / "edge", str(uuid.uuid4())
    repo = Path(__file__).resolve().parents[2]  # so the child imports this checkout
    subprocess.run(
        [sys.executable, "-c", _CRASHING_WRITER, str(root), pid], check=True, timeout=60, cwd=repo
    )
    with EdgeVectorStore(root) as store:
        assert store.count("docs", filter=Filter()) == 1
        assert store.retrieve("docs", [pid])[0].payload == {"_tenant": "x"}
        hits = store.search(
            "docs", np.array([1, 2, 3, 4], dtype=np.float32), filter=Filter(), limit=1
        )
        assert hits[0].id == pid


def test_edge_concurrent_writers_and_exact_delete(tmp_path: Path) -> None:
    with EdgeVectorStore(tmp_path / "edge") as store:
        store.ensure_collection(spec("docs"))
        records = DATA.records()
        errors: list[BaseException] = []

        def write(chunk: list[PointRecord]) -> None:
            try:
                for record in chunk:
                    store.upsert("docs", [record])
                    store.search("docs", DATA.vectors[0], filter=Filter(), limit=3)
            except BaseException as exc:  # surfaced by the assert below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(records[k::4],)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert store.count("docs", filter=Filter()) == N
        tenant2 = Filter((MatchValue(TENANT, "ws2/a"),))
        assert store.delete("docs", filter=tenant2) == len(
            DATA.where(lambda i, p: p[TENANT] == "ws2/a")
        )


def test_factory_picks_edge_without_url(tmp_path: Path) -> None:
    store = open_vector_store(data_dir=tmp_path, qdrant_url=None, qdrant_api_key=None)
    try:
        assert isinstance(store, EdgeVectorStore)
        store.ensure_collection(spec("docs"))
        assert store.list_collections() == ["docs"]
        assert (tmp_path / "collections" / "docs" / "spec.json").is_file()
    finally:
        store.close()


def test_factory_picks_remote_with_url(tmp_path: Path) -> None:
    url = os.environ.get(SERVER_URL_ENV)
    if not url:
        pytest.skip(f"set {SERVER_URL_ENV} to run against a real Qdrant server")
    store = open_vector_store(data_dir=tmp_path, qdrant_url=url, qdrant_api_key=None)
    try:
        assert isinstance(store, RemoteVectorStore)
        assert isinstance(store.list_collections(), list)
    finally:
        store.close()
