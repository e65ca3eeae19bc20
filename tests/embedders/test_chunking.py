"""Splitting texts into windows by the model's own tokenizer (the real MiniLM)."""

from __future__ import annotations

import pytest

from embedders.chunking import split_windows
from embedders.sentence_transformer import SentenceTransformerTextEmbedder


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerTextEmbedder:
    return SentenceTransformerTextEmbedder()


def rebuilt(text: str, spans: list[tuple[int, int]]) -> str:
    """The text from its windows, as `points.chunks.assemble_text` does."""
    out = ""
    for start, end in spans:
        assert start <= len(out) < end or (start, end) == (0, len(text)) == (0, 0)
        out += text[len(out) : end]
    return out


SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank. "
PARAGRAPHS = "\n\n".join(SENTENCE * (3 + i % 4) for i in range(30))


def tokens(minilm: SentenceTransformerTextEmbedder, text: str) -> int:
    return len(minilm._model.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_a_text_that_fits_is_one_window(minilm: SentenceTransformerTextEmbedder) -> None:
    text = SENTENCE * 10  # about 140 word pieces
    assert minilm.max_tokens == 254  # 256 less [CLS] and [SEP]
    assert minilm.text_windows(text, window=None, overlap=32, max_chars=8000) == [(0, len(text))]


def test_windows_cover_the_text_overlap_and_end_at_paragraphs(
    minilm: SentenceTransformerTextEmbedder,
) -> None:
    spans = minilm.text_windows(PARAGRAPHS, window=None, overlap=32, max_chars=8000)
    assert len(spans) > 4
    assert rebuilt(PARAGRAPHS, spans) == PARAGRAPHS
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start < end  # overlapping
        assert PARAGRAPHS[:end].endswith("\n\n")  # cut at a blank line
    for start, end in spans:
        assert tokens(minilm, PARAGRAPHS[start:end]) <= minilm.max_tokens


def test_window_is_capped_at_what_the_model_reads(minilm: SentenceTransformerTextEmbedder) -> None:
    wide = minilm.text_windows(PARAGRAPHS, window=10_000, overlap=0, max_chars=100_000)
    assert all(tokens(minilm, PARAGRAPHS[s:e]) <= minilm.max_tokens for s, e in wide)
    narrow = minilm.text_windows(PARAGRAPHS, window=64, overlap=8, max_chars=100_000)
    assert len(narrow) > len(wide)
    assert all(tokens(minilm, PARAGRAPHS[s:e]) <= 64 for s, e in narrow)


@pytest.mark.parametrize(
    "text",
    [
        "x" * 50_000,  # one unknown word piece
        "😀" * 20_000,  # emoji, no spaces
        "Wörter ünd Ümlaute; 漢字 ok. 😀 " * 2_000,
        "word " * 20_000,  # one repeated token
        "\n" * 5 + "a" + " " * 30_000 + "b\n",
    ],
)
def test_odd_texts_split_into_bounded_windows_that_rebuild_exactly(
    minilm: SentenceTransformerTextEmbedder, text: str
) -> None:
    spans = minilm.text_windows(text, window=None, overlap=32, max_chars=4000)
    assert rebuilt(text, spans) == text
    assert all(0 < end - start <= 4000 for start, end in spans)


def test_split_windows_refuses_bad_settings() -> None:
    with pytest.raises(ValueError):
        split_windows("abc", [(0, 3)], window=4, overlap=4, max_chars=10)
