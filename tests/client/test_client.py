"""`VectorsvcClient` against the real service on a loopback port."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from tests.client.conftest import LiveService
from tests.helpers import encode
from vectorsvc.client import VectorsvcClient, VectorsvcError

TEXT_MODEL = "all-minilm-l6-v2"


def test_importing_the_client_pulls_no_server_code() -> None:
    code = (
        "import sys, vectorsvc.client; "
        "print(sorted(m for m in ('fastapi', 'starlette', 'torch', 'sqlalchemy', "
        "'vectorsvc.app', 'vectorsvc.runs') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_index_search_run_and_account_calls(live: LiveService, key: str) -> None:
    # The base URL is accepted with the trailing /api the contract's examples use.
    with VectorsvcClient(f"{live.base_url}/api", key) as client:
        result = client.index_texts(
            TEXT_MODEL,
            "docs",
            [
                {"id": "qdrant", "text": "Qdrant is a vector database", "metadata": {"y": 2024}},
                {"id": "pasta", "text": "How to cook pasta al dente", "metadata": {"y": 2019}},
            ],
        )
        assert result.run_id and result.run_id.startswith("run_")
        assert result.ids == ["qdrant", "pasta"]
        assert result.counts.received == 2 and result.counts.created == 2
        assert result.scope == "docs" and result.collection

        hits = client.search(TEXT_MODEL, "docs", text="vector search engine", top_k=2)
        assert [h.id for h in hits][0] == "qdrant"
        assert hits[0].text == "Qdrant is a vector database" and hits[0].metadata == {"y": 2024}
        assert hits[0].score > hits[1].score
        assert hits[0].highlight is not None and hits[0].highlight.text == hits[0].text

        filtered = client.search(TEXT_MODEL, "docs", text="vector", filter={"y": {"lt": 2020}})
        assert [h.id for h in filtered] == ["pasta"]
        # BM25 alone: only texts that hold a query word
        keyword = client.search(TEXT_MODEL, "docs", text="cook pasta", retrieval="keyword")
        assert [h.id for h in keyword] == ["pasta"] and keyword[0].score > 0
        # Hybrid fused by DBSF: each list's scores normalized (a list of one hit: 0.5)
        fused = client.search(TEXT_MODEL, "docs", text="cook pasta", fusion="dbsf")
        assert fused[0].id == "pasta" and 1.0 < fused[0].score < 2.0

        raw = client.run(TEXT_MODEL, input={"texts": ["hello"]})  # mode defaults to execute
        assert raw["status"] == "succeeded" and raw["mode"] == "execute"

        [kb] = client.list_knowledge_bases(model=TEXT_MODEL)
        assert (kb.scope, kb.point_count, kb.modality) == ("docs", 2, "text")

        wallet = client.wallet()
        assert wallet.balance_micro_credits > 0 and wallet.currency == "credits"


def test_errors_carry_the_envelope(live: LiveService, key: str) -> None:
    with VectorsvcClient(live.base_url, key, retries=0) as client:
        with pytest.raises(VectorsvcError) as caught:
            client.run(TEXT_MODEL, "search", input={"text": "no scope"})
        error = caught.value
        assert (error.status, error.code, error.field) == (422, "scope_required", "scope")
        assert "scope" in error.message and error.request_id

        with pytest.raises(VectorsvcError) as caught:
            client.search("no-such-model", "docs", text="x")
        assert (caught.value.status, caught.value.code) == (404, "model_not_found")

    with (
        VectorsvcClient(live.base_url, "vsk_wrong") as client,
        pytest.raises(VectorsvcError) as caught,
    ):
        client.wallet()
    assert caught.value.status == 401


def test_upload_and_search_an_image(
    live: LiveService, key: str, photos: dict[str, Image.Image]
) -> None:
    png = encode(photos["chelsea"], "PNG")
    with VectorsvcClient(live.base_url, key) as client:
        uploaded = client.upload(png, filename="chelsea.png")
        assert uploaded.media_ref.startswith("media_") and uploaded.content_type == "image/png"
        assert uploaded.size_bytes == len(png)
        # The same bytes again: a new media_ref over the same stored blob.
        again = client.upload(png)
        assert again.sha256 == uploaded.sha256 and again.media_ref != uploaded.media_ref
        coffee = client.upload_media(encode(photos["coffee"], "JPEG", quality=90))
        client.index_images(
            "image-similarity",
            "pics",
            [
                {"id": "cat", "image": {"media_ref": uploaded.media_ref}},
                {"id": "coffee", "image": {"media_ref": coffee}},
            ],
        )
        hits = client.search("image-similarity", "pics", media_ref=uploaded.media_ref, top_k=2)
        assert [h.id for h in hits] == ["cat", "coffee"]
        assert hits[0].media_ref == uploaded.media_ref and hits[0].thumbnail_url


def test_background_index_run(live: LiveService, key: str) -> None:
    items = [{"id": f"d{n}", "text": f"document number {n} about topic {n % 3}"} for n in range(5)]
    with VectorsvcClient(live.base_url, key) as client:
        started = client.start_background_index(TEXT_MODEL, "bg", items)
        assert started.id.startswith("run_") and started.status in ("queued", "running")
        assert started.progress.total == 5
        done = client.wait_run(started.id, poll_interval=0.2, timeout=120)
        assert done.status == "succeeded" and done.progress.done == 5 and not done.errors
        assert client.get_run(started.id).status == "succeeded"
        # Unchanged items again: skipped, not embedded.
        again = client.wait_run(
            client.start_background_index(TEXT_MODEL, "bg", items).id, poll_interval=0.2
        )
        assert again.progress.skipped == 5
