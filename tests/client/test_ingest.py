"""`vectorsvc ingest` and `vectorsvc search` end to end: the CLI's `main` against the real
service on a loopback port, real MiniLM and EfficientNet, real SciFact texts and photos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.client.conftest import SCIFACT_DOCS, LiveService, write_jsonl
from tests.helpers import encode
from vectorsvc.cli import main
from vectorsvc.client import VectorsvcClient
from vectorsvc.client.ingest import runner as ingest

TEXT_MODEL = "all-minilm-l6-v2"
IMAGE_MODEL = "image-similarity"


def summary_of(out: str) -> dict[str, str]:
    """The summary's `  label    value` lines as {label: value}."""
    rows = {}
    for line in out.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            label, _, value = line.strip().partition(" ")
            rows[label] = value.strip()
    return rows


def connection(live: LiveService, key: str) -> list[str]:
    return ["--gateway-url", live.base_url, "--api-key", key]


def point_count(live: LiveService, key: str, model: str, scope: str) -> int:
    with VectorsvcClient(live.base_url, key) as client:
        kbs = [kb for kb in client.list_knowledge_bases(model=model) if kb.scope == scope]
    return kbs[0].point_count if kbs else 0


def items_embedded(live: LiveService, key: str) -> int:
    with VectorsvcClient(live.base_url, key) as client:
        items: int = client.usage_summary()["totals"]["items"]
    return items


def search_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    assert main(["search", *args, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_ingest_scifact_jsonl_then_search(
    live: LiveService,
    key: str,
    scifact_jsonl: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code = main(
        ["ingest", str(scifact_jsonl), "--model", TEXT_MODEL, "--scope", "scifact"]
        + connection(live, key)
        + ["--batch-size", "50", "--concurrency", "2", "--no-progress"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    summary = summary_of(out)
    assert summary["indexed"] == f"{SCIFACT_DOCS} (created {SCIFACT_DOCS}, updated 0)"
    assert summary["failed"] == "0"
    assert summary["sent"].startswith(f"{SCIFACT_DOCS} items in 4 batches")
    assert "items/s" in summary["elapsed"]
    assert point_count(live, key, TEXT_MODEL, "scifact") == SCIFACT_DOCS

    # The search command reads the gateway and key from the contract's variables.
    monkeypatch.setenv("AIMP_GATEWAY_URL", f"{live.base_url}/api")
    monkeypatch.setenv("AIMP_API_KEY", key)
    # SciFact test query 268; its relevant document is 970012 (qrels/test.tsv).
    query = "Cold exposure increases BAT recruitment."
    assert main(["search", "--model", TEXT_MODEL, "--scope", "scifact", query, "--top-k", "3"]) == 0
    table = capsys.readouterr().out
    for header in ("#", "id", "score", "text / media", "metadata"):
        assert header in table
    first_row = next(line for line in table.splitlines() if line.strip().startswith("1 "))
    assert "970012" in first_row and '"source":"scifact"' in first_row

    hits = search_json(capsys, "--model", TEXT_MODEL, "--scope", "scifact", query, "--top-k", "3")
    assert hits[0]["id"] == "970012" and len(hits) == 3
    assert hits[0]["metadata"]["source"] == "scifact" and "position" in hits[0]["metadata"]
    # A filter narrows the hits to the documents it admits.
    hits = search_json(
        capsys,
        "--model", TEXT_MODEL, "--scope", "scifact", query,
        "--filter", '{"position": {"lt": 10}}',
    )  # fmt: skip
    assert hits and all(h["metadata"]["position"] < 10 for h in hits)


def test_interrupted_ingest_resumes_without_duplicates(
    live: LiveService,
    key: str,
    scifact_docs: list[dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    total = 100  # half the documents: this test embeds them twice over
    # Cut to one chunk each, so that items embedded (billed per chunk) count documents.
    docs = [{**d, "text": d["text"][:500]} for d in scifact_docs[:total]]
    path = write_jsonl(tmp_path / "scifact.jsonl", docs)
    state_file = tmp_path / "state.json"
    args = (
        ["ingest", str(path), "--model", TEXT_MODEL, "--scope", "resume"]
        + connection(live, key)
        + ["--batch-size", "20", "--concurrency", "1", "--no-progress"]
        + ["--state-file", str(state_file)]
    )
    acknowledged: list[ingest.BatchReport] = []

    def ctrl_c_after_three_batches(report: ingest.BatchReport) -> None:
        acknowledged.append(report)
        if len(acknowledged) == 3:
            raise KeyboardInterrupt  # what Ctrl-C does to the main thread

    monkeypatch.setattr(ingest, "after_batch_hooks", [ctrl_c_after_three_batches])
    assert main(args) == 130
    out = capsys.readouterr().out
    assert "Interrupted" in out and "re-run the same command" in out
    state = json.loads(state_file.read_text())
    assert sorted(state["acked_batches"].values()) == [20, 20, 20]
    assert point_count(live, key, TEXT_MODEL, "resume") == 60
    assert items_embedded(live, key) == 60

    # The re-run sends only the batches the server never acknowledged.
    monkeypatch.setattr(ingest, "after_batch_hooks", [])
    assert main(args) == 0
    summary = summary_of(capsys.readouterr().out)
    assert summary["sent"] == "40 items in 2 batches (3 batches resumed)"
    assert summary["indexed"] == "40 (created 40, updated 0)"
    assert "acknowledged in an earlier run 60" in summary["skipped"]
    assert point_count(live, key, TEXT_MODEL, "resume") == total
    assert items_embedded(live, key) == total  # every document embedded exactly once
    assert len(json.loads(state_file.read_text())["acked_batches"]) == 5

    # Ignoring the state sends everything again; the server skips what it already has.
    assert main([*args, "--no-resume"]) == 0
    summary = summary_of(capsys.readouterr().out)
    assert summary["sent"].startswith(f"{total} items")
    assert summary["indexed"].startswith("0 ")
    assert summary["skipped"].startswith(f"{total} (unchanged on the server {total},")
    assert point_count(live, key, TEXT_MODEL, "resume") == total
    assert items_embedded(live, key) == total


def test_background_ingest(
    live: LiveService,
    key: str,
    scifact_docs: list[dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_jsonl(tmp_path / "few.jsonl", scifact_docs[:12])
    args = (
        ["ingest", str(path), "--model", TEXT_MODEL, "--scope", "bg", "--background"]
        + connection(live, key)
        + ["--batch-size", "5", "--concurrency", "2", "--no-progress", "--no-resume"]
    )
    assert main(args) == 0
    summary = summary_of(capsys.readouterr().out)
    assert summary["indexed"].startswith("12 ") and summary["sent"].startswith("12 items in 3")
    assert point_count(live, key, TEXT_MODEL, "bg") == 12
    assert main(args) == 0  # everything again: the background runs skip it all
    assert summary_of(capsys.readouterr().out)["skipped"].startswith(
        "12 (unchanged on the server 12"
    )


def test_ingest_csv_with_metadata_columns_and_bad_rows(
    live: LiveService, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.csv"
    path.write_text(
        "id,text,lang,year\n"
        "qdrant,Qdrant is a vector database written in Rust,en,2024\n"
        'pasta,"Cook the pasta, then drain it",en,2019\n'
        "kaese,Käse ist ein Milchprodukt,de,2021\n"
        "empty,,en,2020\n"
        "qdrant,a second row with the same id,en,2024\n"
        "hnsw,HNSW graphs make approximate nearest neighbour search fast,,2023\n",
        encoding="utf-8",
    )
    code = main(
        ["ingest", str(path), "--model", TEXT_MODEL, "--scope", "notes", "--no-progress"]
        + connection(live, key)
    )
    out = capsys.readouterr().out
    assert code == 1, out  # some rows failed
    summary = summary_of(out)
    assert summary["indexed"].startswith("4 ") and summary["failed"] == "2"
    assert "row 4 (id 'empty'): missing 'text'" in out
    assert "row 5 (id 'qdrant'): duplicate id (first at row 1)" in out

    common = ["--model", TEXT_MODEL, "--scope", "notes"] + connection(live, key)
    hits = search_json(capsys, *common, "vector database")
    assert hits[0]["id"] == "qdrant"
    assert hits[0]["metadata"] == {"lang": "en", "year": 2024}  # numbers become numbers
    assert "lang" not in next(h for h in hits if h["id"] == "hnsw")["metadata"]  # empty cell
    recent = search_json(capsys, *common, "food", "--filter", '{"year": {"gte": 2021}}')
    assert {h["id"] for h in recent} == {"qdrant", "kaese", "hnsw"}


@pytest.fixture
def photo_folder(tmp_path: Path, photos: dict[str, Image.Image]) -> Path:
    folder = tmp_path / "photos"
    (folder / "lab").mkdir(parents=True)
    (folder / "chelsea.png").write_bytes(encode(photos["chelsea"], "PNG"))
    (folder / "coffee.jpg").write_bytes(encode(photos["coffee"], "JPEG", quality=90))
    (folder / "astronaut.png").write_bytes(encode(photos["astronaut"], "PNG"))
    (folder / "rocket.jpeg").write_bytes(encode(photos["rocket"], "JPEG", quality=90))
    (folder / "lab" / "stain.png").write_bytes(encode(photos["immunohistochemistry"], "PNG"))
    (folder / "notes.txt").write_text("not an image: ignored")
    return folder


def test_ingest_an_image_folder_then_search_by_image(
    live: LiveService,
    key: str,
    photo_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state_file = tmp_path / "photos-state.json"
    args = (
        ["ingest", str(photo_folder), "--model", IMAGE_MODEL, "--scope", "photos"]
        + connection(live, key)
        + ["--batch-size", "2", "--concurrency", "2", "--no-progress"]
        + ["--state-file", str(state_file)]
    )
    assert main(args) == 0
    summary = summary_of(capsys.readouterr().out)
    assert summary["indexed"] == "5 (created 5, updated 0)"
    assert summary["uploads"] == "5 uploaded, 0 reused from the state file"
    assert point_count(live, key, IMAGE_MODEL, "photos") == 5

    common = ["--model", IMAGE_MODEL, "--scope", "photos"] + connection(live, key)
    hits = search_json(capsys, *common, "--image", str(photo_folder / "coffee.jpg"))
    assert hits[0]["id"] == "coffee.jpg" and hits[0]["media_ref"].startswith("media_")
    assert hits[0]["metadata"] == {"filename": "coffee.jpg"}
    stain = next(h for h in hits if h["id"] == "lab/stain.png")
    assert stain["metadata"] == {"filename": "stain.png", "folder": "lab"}
    assert main(["search", *common, "--image", str(photo_folder / "lab" / "stain.png")]) == 0
    first_row = next(
        line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("1 ")
    )
    assert "lab/stain.png" in first_row and "media_" in first_row

    # Again: nothing is uploaded or sent.
    assert main(args) == 0
    summary = summary_of(capsys.readouterr().out)
    assert summary["uploads"] == "0 uploaded, 5 reused from the state file"
    assert summary["sent"] == "0 items in 0 batches (3 batches resumed)"

    # A state file whose media the server does not know (say, its data was reset): the
    # ingester uploads again instead of failing.
    state = json.loads(state_file.read_text())
    state["media"] = dict.fromkeys(state["media"], "media_" + "0" * 32)
    state["acked_batches"] = {}
    state_file.write_text(json.dumps(state))
    assert main(args) == 0
    summary = summary_of(capsys.readouterr().out)
    assert summary["uploads"] == "5 uploaded, 5 reused from the state file"
    assert summary["failed"] == "0"
    assert point_count(live, key, IMAGE_MODEL, "photos") == 5


def test_ingest_explains_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n')
    assert main(["ingest", str(path), "--model", TEXT_MODEL, "--scope", "s"]) == 2
    err = capsys.readouterr().err
    assert "AIMP_GATEWAY_URL" in err and "AIMP_API_KEY" in err

    bad = tmp_path / "a.xlsx"
    bad.write_text("x")
    flags = ["--model", TEXT_MODEL, "--scope", "s", "--gateway-url", "http://x", "--api-key", "k"]
    assert main(["ingest", str(bad), *flags]) == 2
    assert "a .jsonl, a .csv (optionally .gz) or a .parquet file" in capsys.readouterr().err
    assert main(["search", *flags]) == 2
    assert "exactly one of" in capsys.readouterr().err
