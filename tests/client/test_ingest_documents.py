"""`vectorsvc ingest` of a folder of documents and of rows mapped by flags, end to end: the
CLI's `main` against the real service, real MiniLM, real PDF, DOCX, HTML and Markdown files
made by their own libraries, a real BEIR corpus (SciFact) and a real Parquet file."""

from __future__ import annotations

import gzip
import itertools
import json
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import docx
import pytest
from fpdf import FPDF

from embedders.base import Embedder
from tests.client.conftest import LiveService
from tests.client.test_ingest import TEXT_MODEL, connection, point_count, search_json, summary_of
from tests.harness import SCIFACT_DIR, make_settings
from tests.helpers import uvicorn_in_thread
from vectorsvc.cli import main
from vectorsvc.model_registry.registry import ModelSpec

# The server's text limit, pinned here so that the over-long document stays over it
# whatever the default becomes.
TEXT_LIMIT = 20_000


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory,
    models_dir: Path,
    embedder_loader: Callable[[ModelSpec], Embedder],
) -> Iterator[LiveService]:
    settings = make_settings(
        tmp_path_factory.mktemp("documents-data"), models_dir, max_text_chars=TEXT_LIMIT
    )
    with uvicorn_in_thread(settings, embedder_loader) as base_url:
        from vectorsvc.db.database import Database

        db = Database(settings.resolved_database_url)
        try:
            yield LiveService(base_url=base_url, settings=settings, db=db)
        finally:
            db.close()


def write_pdf(path: Path) -> None:
    pdf = FPDF()
    pdf.set_title("Annual report of the penguin colony")
    pdf.set_font("helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 8, "The colony counted its members in spring.\n\nThe budget was approved.")
    pdf.add_page()  # the answer is on the second page
    pdf.multi_cell(0, 8, "Emperor penguins huddle together to survive the Antarctic winter storms.")
    pdf.output(str(path))


def write_docx(path: Path) -> None:
    document = docx.Document()
    document.add_heading("Espresso at home", level=1)
    document.add_paragraph("Grind the coffee beans finely and tamp the grounds firmly.")
    table = document.add_table(rows=2, cols=2)
    for r, (name, value) in enumerate([("Dose", "18 grams"), ("Brew time", "28 seconds")]):
        table.cell(r, 0).text, table.cell(r, 1).text = name, value
    document.save(str(path))


HTML = """<!doctype html><html><head><meta charset="utf-8"><title>Tide pools</title>
<style>p { color: teal }</style><script>const trackingPixel = "zzz-secret-token";</script>
</head><body><nav>Home | About</nav><h1>Life in tide pools</h1>
<p>Sea stars <b>cling</b> to wet rocks at low tide,<br>and anemones close until the sea returns.</p>
</body></html>"""

MARKDOWN = """---\nlayout: post\n---\n
# Planting tomatoes

Tomato seedlings need full sun and deep watering twice a week.
"""


@pytest.fixture
def document_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "kb"
    (folder / "reports").mkdir(parents=True)
    (folder / "kitchen").mkdir()
    write_pdf(folder / "reports" / "colony.pdf")
    write_docx(folder / "kitchen" / "espresso.docx")
    (folder / "tidepools.html").write_text(HTML, encoding="utf-8")
    (folder / "garden.md").write_text(MARKDOWN, encoding="utf-8")
    (folder / "notes.txt").write_text("Rust's borrow checker prevents data races.\n")
    # What cannot be read fails alone, with its path and why.
    (folder / "reports" / "broken.pdf").write_bytes(b"%PDF-1.7\nnot really a PDF")
    (folder / "latin1.txt").write_bytes("Crème brûlée au café".encode("latin-1"))
    (folder / "long.txt").write_text("A very long line of text. " * (TEXT_LIMIT // 20))
    # Neither a document nor anything the text model takes; hidden files are never read.
    (folder / "budget.xlsx").write_bytes(b"PK\x03\x04 a spreadsheet")
    (folder / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n not read for a text model")
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    (folder / "reports" / "._colony.pdf").write_bytes(b"\x00\x05\x16\x07 resource fork")
    return folder


def test_ingest_a_folder_of_documents(
    live: LiveService,
    key: str,
    document_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = (
        ["ingest", str(document_folder), "--model", TEXT_MODEL, "--scope", "kb"]
        + connection(live, key)
        + ["--batch-size", "3", "--no-progress", "--state-file", str(tmp_path / "state.json")]
    )
    code = main(args)
    out = capsys.readouterr().out
    assert code == 1, out  # some files failed; the others are indexed
    summary = summary_of(out)
    assert summary["indexed"] == "5 (created 5, updated 0)", out
    assert summary["failed"] == "3"
    assert summary["ignored"].startswith("2 files that all-minilm-l6-v2 does not take")
    assert "1 .png" in summary["ignored"] and "1 .xlsx" in summary["ignored"]
    assert "reports/broken.pdf: cannot read as PDF" in out
    assert "latin1.txt: not UTF-8 text" in out
    # Over the server's limit: refused by the server (or, where the contract publishes the
    # limit, before sending), named by its path, with the limit.
    long_line = next(line for line in out.splitlines() if line.strip().startswith("long.txt:"))
    assert "characters" in long_line and ("20,000" in long_line or "20000" in long_line)
    assert point_count(live, key, TEXT_MODEL, "kb") == 5

    common = ["--model", TEXT_MODEL, "--scope", "kb"] + connection(live, key)
    hits = search_json(capsys, *common, "how do penguins survive the cold winter", "--top-k", "2")
    assert hits[0]["id"] == "reports/colony.pdf"
    assert hits[0]["metadata"] == {
        "path": "reports/colony.pdf",
        "title": "Annual report of the penguin colony",
        "type": "pdf",
    }
    assert "Emperor penguins huddle together" in hits[0]["text"]  # from page 2
    assert "The budget was approved." in hits[0]["text"]  # and page 1

    hits = search_json(capsys, *common, "how long to brew espresso", "--top-k", "1")
    assert hits[0]["id"] == "kitchen/espresso.docx"
    assert hits[0]["metadata"]["title"] == "Espresso at home"
    assert hits[0]["metadata"]["type"] == "docx"
    assert "Brew time | 28 seconds" in hits[0]["text"]  # the table's rows

    hits = search_json(capsys, *common, "sea stars on rocks", "--top-k", "1")
    assert hits[0]["id"] == "tidepools.html"
    assert hits[0]["metadata"]["title"] == "Tide pools"
    text = hits[0]["text"]
    assert "Sea stars cling to wet rocks at low tide,\nand anemones close" in text
    assert "zzz-secret-token" not in text and "color: teal" not in text  # script, style

    hits = search_json(capsys, *common, "watering tomato plants", "--top-k", "1")
    assert hits[0]["id"] == "garden.md"
    assert hits[0]["metadata"] == {"path": "garden.md", "title": "Planting tomatoes", "type": "md"}
    assert hits[0]["text"] == MARKDOWN  # Markdown is indexed as written

    hits = search_json(capsys, *common, "memory safety in Rust", "--top-k", "1")
    assert hits[0]["metadata"] == {"path": "notes.txt", "title": "notes", "type": "txt"}

    # Again: every batch was acknowledged, nothing is sent.
    assert main(args) == 1
    summary = summary_of(capsys.readouterr().out)
    assert summary["sent"] == "0 items in 0 batches (2 batches resumed)"


def test_a_folder_is_read_for_what_the_model_takes(
    live: LiveService, key: str, document_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An image model reads the folder's images only: the documents are not its input.
    (document_folder / "photo.png").unlink()
    code = main(
        ["ingest", str(document_folder), "--model", "image-similarity", "--scope", "kb"]
        + connection(live, key)
        + ["--no-progress", "--no-resume"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    summary = summary_of(out)
    assert summary["input"].endswith("(0 items)")
    assert summary["ignored"].startswith("9 files that image-similarity does not take")


def scifact_beir_rows(n: int) -> list[str]:
    corpus = SCIFACT_DIR / "corpus.jsonl.gz"
    if not corpus.exists():
        pytest.skip(f"SciFact not found at {corpus} (it lives in ../shared)")
    with gzip.open(corpus, "rt", encoding="utf-8") as lines:
        return list(itertools.islice(lines, n))


def test_ingest_a_beir_corpus_with_field_flags(
    live: LiveService, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = scifact_beir_rows(20)  # as BEIR ships it: {"_id", "title", "text", "metadata"}
    corpus = tmp_path / "corpus.jsonl.gz"
    with gzip.open(corpus, "wt", encoding="utf-8") as out:
        out.writelines(rows)
    common = ["--model", TEXT_MODEL, "--scope", "beir"] + connection(live, key)

    # As a new user tries it first: every row fails, and says which flag to use.
    assert main(["ingest", str(corpus), *common, "--no-progress", "--no-resume"]) == 1
    out = capsys.readouterr().out
    assert summary_of(out)["failed"] == "20"
    assert "line 1: missing 'id' (the row has '_id', 'title', 'text'" in out
    assert "--id-field" in out and "--text-field" in out

    flags = ["--id-field", "_id", "--text-field", "title", "--text-field", "text"]
    assert main(["ingest", str(corpus), *common, *flags, "--no-progress"]) == 0
    summary = summary_of(capsys.readouterr().out)
    assert summary["indexed"] == "20 (created 20, updated 0)"
    first = json.loads(rows[0])
    hits = search_json(capsys, *common, first["title"], "--top-k", "1")
    assert hits[0]["id"] == first["_id"]
    # The hit's text is its best chunk, a slice of the fields joined with a blank line.
    joined = f"{first['title']}\n\n{first['text']}"
    assert hits[0]["text"] in joined and hits[0]["text"].startswith(f"{first['title']}\n\n")
    assert hits[0]["metadata"] == {}  # id and text fields are not metadata; BEIR's {} is empty


def test_csv_field_mapping_and_a_misnamed_field(
    live: LiveService, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "faq.csv"
    path.write_text(
        "doc_id,question,answer,lang,internal_note\n"
        "q1,How do I reset my password?,Use the link on the sign-in page.,en,ticket 12\n"
        "q2,Wie kündige ich?,Schreiben Sie uns eine E-Mail.,de,\n"
        "q3,,Only an answer here: bread needs yeast to rise.,en,x\n",
        encoding="utf-8",
    )
    common = ["--model", TEXT_MODEL, "--scope", "faq"] + connection(live, key)
    flags = ["--id-field", "doc_id", "--text-field", "question", "--text-field", "answer"]
    assert main(["ingest", str(path), *common, *flags, "--metadata-field", "lang"]) == 0
    assert summary_of(capsys.readouterr().out)["indexed"].startswith("3 ")
    hits = search_json(capsys, *common, "forgot my password", "--top-k", "1")
    assert hits[0]["id"] == "q1"
    assert hits[0]["text"] == "How do I reset my password?\n\nUse the link on the sign-in page."
    assert hits[0]["metadata"] == {"lang": "en"}  # only the field named
    hits = search_json(capsys, *common, "baking bread", "--top-k", "1")
    assert hits[0]["text"] == "Only an answer here: bread needs yeast to rise."  # empty left out

    # A misnamed field stops before anything is sent, naming it and the columns there are.
    assert main(["ingest", str(path), *common, "--id-field", "doc_id", "--text-field", "body"]) == 2
    err = capsys.readouterr().err
    assert "no column 'body'" in err and "'question', 'answer'" in err


def test_ingest_parquet(
    live: LiveService, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pa = pytest.importorskip(
        "pyarrow", reason="the parquet extra: pip install 'vectorsvc[parquet]'"
    )
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in scifact_beir_rows(8)]
    table = pa.table(
        {
            "_id": [r["_id"] for r in rows],
            "title": [r["title"] for r in rows],
            "text": [r["text"] for r in rows],
            "year": [2000 + n for n in range(len(rows))],
            "published": [date(2000 + n, 1, 31) for n in range(len(rows))],
        }
    )
    path = tmp_path / "scifact.parquet"
    pq.write_table(table, path)
    common = ["--model", TEXT_MODEL, "--scope", "pq"] + connection(live, key)
    flags = ["--id-field", "_id", "--text-field", "title", "--text-field", "text"]
    flags += ["--metadata-field", "year", "--metadata-field", "published"]
    assert main(["ingest", str(path), *common, *flags, "--no-progress"]) == 0
    assert summary_of(capsys.readouterr().out)["indexed"] == "8 (created 8, updated 0)"
    hits = search_json(capsys, *common, rows[3]["title"], "--filter", '{"year": {"gte": 2003}}')
    assert hits[0]["id"] == rows[3]["_id"]
    assert hits[0]["metadata"] == {"year": 2003, "published": "2003-01-31"}
    assert all(h["metadata"]["year"] >= 2003 for h in hits)


def test_the_text_limit_is_read_from_the_model_page(live: LiveService, key: str) -> None:
    from vectorsvc.client import ModelDetail, VectorsvcClient

    with VectorsvcClient(live.base_url, key) as client:
        page = client.get_model(TEXT_MODEL)
    assert page.modalities == ["text"] and "index" in page.contracts
    published = page.contracts["index"]["input_schema"]["properties"]["items"]["items"]
    assert page.max_text_chars() == published["properties"]["text"].get("maxLength")
    # Where a contract publishes maxLength, that is the limit the CLI checks before sending.
    contract = {"properties": {"items": {"items": {"properties": {"text": {"maxLength": 99}}}}}}
    page = ModelDetail(slug="m", contracts={"index": {"input_schema": contract}})
    assert page.max_text_chars() == 99 and page.max_text_chars("execute") is None
