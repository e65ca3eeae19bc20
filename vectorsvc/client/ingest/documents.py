"""Text and a title out of a document file: `.txt`, `.md`, `.html`, `.pdf`, `.docx`.

Each format is read by a well-kept library (pypdf, python-docx, Beautiful Soup, markdown-it);
this module only picks what to keep. A file that cannot be read raises `UnreadableDocument`
with the reason, so that it fails alone. Plain text and Markdown are kept as they are (the
search highlights point into the text as the user wrote it); HTML, PDF and DOCX become
paragraphs separated by a blank line, the boundaries a chunker prefers.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Suffix -> the `type` in the item's metadata.
DOCUMENT_TYPES = {
    ".txt": "txt",
    ".text": "txt",
    ".md": "md",
    ".markdown": "md",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
}
# A title is for display and filters, not a second copy of the text.
MAX_TITLE_CHARS = 300
# HTML elements whose content is not text a reader sees.
_HTML_SKIP = ("script", "style", "noscript", "template", "svg", "head", "iframe", "object")
# HTML elements that end a paragraph (or a line of one) in the extracted text.
_HTML_BLOCKS = (
    "p", "div", "section", "article", "main", "aside", "header", "footer", "nav", "blockquote",
    "pre", "ul", "ol", "li", "dl", "dt", "dd", "table", "tr", "h1", "h2", "h3", "h4", "h5", "h6",
    "figure", "figcaption", "hr", "address", "details", "summary", "form", "fieldset",
)  # fmt: skip
_BLANK_LINES = re.compile(r"\n\s*\n\s*")
_SPACES = re.compile(r"[^\S\n]+")


class UnreadableDocument(Exception):
    """The file cannot be read as its type says; the message is the reason."""


@dataclass(frozen=True)
class Document:
    text: str
    title: str
    type: str


def document_type(path: Path) -> str | None:
    return DOCUMENT_TYPES.get(path.suffix.lower())


def read_document(path: Path) -> Document:
    """The text and title of `path` (a suffix of `DOCUMENT_TYPES`)."""
    kind = document_type(path)
    if kind is None:
        raise UnreadableDocument(f"not a document type ({', '.join(DOCUMENT_TYPES)})")
    reader = _READERS[kind]
    try:
        text, title = reader(path)
    except UnreadableDocument:
        raise
    except OSError as exc:
        raise UnreadableDocument(f"cannot read: {exc.strerror or exc}") from exc
    except Exception as exc:  # a parser fails on a broken file in its own ways: report it
        raise UnreadableDocument(f"cannot read as {kind.upper()}: {exc}") from exc
    if not text.strip():
        hint = " (a scanned PDF holds only images: run OCR on it first)" if kind == "pdf" else ""
        raise UnreadableDocument(f"no text in it{hint}")
    return Document(text=text, title=_title(title) or path.stem, type=kind)


def _title(value: str | None) -> str:
    flat = " ".join((value or "").split())
    return flat if len(flat) <= MAX_TITLE_CHARS else flat[: MAX_TITLE_CHARS - 1] + "…"


def _paragraphs(parts: list[str]) -> str:
    """Paragraphs, each with its spaces collapsed, separated by one blank line."""
    lines = (_SPACES.sub(" ", part).strip() for part in parts)
    return "\n\n".join(line for line in lines if line)


def _decode(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableDocument(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _read_txt(path: Path) -> tuple[str, str | None]:
    return _decode(path), None


def _read_md(path: Path) -> tuple[str, str | None]:
    from markdown_it import MarkdownIt

    text = _decode(path)
    tokens = MarkdownIt("commonmark").parse(text)
    title = next(
        (
            tokens[n + 1].content
            for n, token in enumerate(tokens[:-1])
            if token.type == "heading_open" and token.tag == "h1"
        ),
        None,
    )
    return text, title


def _read_html(path: Path) -> tuple[str, str | None]:
    from bs4 import BeautifulSoup

    # Bytes, so that Beautiful Soup honours the page's <meta charset>.
    soup = BeautifulSoup(path.read_bytes(), "html.parser")
    title = soup.title.get_text() if soup.title else None
    if not (title and title.strip()):
        h1 = soup.find("h1")
        title = h1.get_text(" ") if h1 else None
    for tag in soup.find_all(_HTML_SKIP):
        tag.decompose()
    for tag in soup.find_all("br"):
        tag.replace_with("\n")
    for tag in soup.find_all(_HTML_BLOCKS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    body = soup.body or soup
    return _paragraphs(_BLANK_LINES.split(body.get_text())), title


def _read_pdf(path: Path) -> tuple[str, str | None]:
    from pypdf import PdfReader

    # pypdf logs every quirk of a damaged file it can still read: not the user's concern.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    reader = PdfReader(path)
    if reader.is_encrypted and not reader.decrypt(""):
        raise UnreadableDocument("encrypted PDF (it needs a password)")
    pages = [page.extract_text() or "" for page in reader.pages]
    title = reader.metadata.title if reader.metadata else None
    return _paragraphs([p for page in pages for p in _BLANK_LINES.split(page)]), title


def _read_docx(path: Path) -> tuple[str, str | None]:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    document = docx.Document(str(path))
    parts: list[str] = []
    heading: str | None = None
    for block in document.iter_inner_content():
        if isinstance(block, Paragraph):
            parts.append(block.text)
            style = block.style.name if block.style is not None else ""
            if heading is None and style in ("Title", "Heading 1") and block.text.strip():
                heading = block.text
        elif isinstance(block, Table):
            for row in block.rows:
                cells = _unique(cell.text.strip() for cell in row.cells)
                parts.append(" | ".join(c for c in cells if c))
    return _paragraphs(parts), document.core_properties.title or heading


def _unique(values: Any) -> list[str]:
    # A merged cell is returned once per grid column it spans.
    seen: list[str] = []
    for value in values:
        if not seen or seen[-1] != value:
            seen.append(value)
    return seen


_READERS = {
    "txt": _read_txt,
    "md": _read_md,
    "html": _read_html,
    "pdf": _read_pdf,
    "docx": _read_docx,
}
