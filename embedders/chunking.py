"""Splitting a long text into windows the model reads whole, by the model's own tokens.

`split_windows` takes the text and its tokens' character offsets (from the model's
tokenizer) and returns character spans `(start, end)`:

- a text of at most `window` tokens and `max_chars` characters is one span, `(0, len(text))`;
- otherwise windows of at most `window` tokens, each starting `overlap` tokens before the
  previous one ended, cut where the text breaks best in the window's second half: a blank
  line, then a line break or a sentence's end, then a space, else between word pieces;
- the spans cover the text: the first starts at 0, the last ends at `len(text)`, and each
  starts at or before the end of the one before, so the text is rebuilt exactly from them;
- no span is longer than `max_chars` characters (a text without spaces can be one unknown
  token of any length: it is cut by characters).
"""

from __future__ import annotations

from collections.abc import Sequence

Span = tuple[int, int]

_SENTENCE_ENDS = frozenset(".!?;:。！？")


def _cut_quality(text: str, offsets: Sequence[Span], cut: int) -> int:
    """How good a place it is to end a window before token `cut` (higher is better)."""
    gap = text[offsets[cut - 1][1] : offsets[cut][0]]
    if gap.count("\n") >= 2:
        return 4
    if "\n" in gap:
        return 3
    last = text[offsets[cut - 1][0] : offsets[cut - 1][1]]
    if gap and last and last[-1] in _SENTENCE_ENDS:
        return 2
    return 1 if gap else 0


def _best_cut(text: str, offsets: Sequence[Span], start: int, end: int, min_cut: int) -> int:
    """The token index in `min_cut..end` where the window from `start` should end."""
    best, best_quality = end, -1
    for cut in range(end, min_cut - 1, -1):
        quality = _cut_quality(text, offsets, cut)
        if quality > best_quality:
            best, best_quality = cut, quality
            if quality == 4:
                break
    return best


def _by_chars(spans: list[Span], max_chars: int) -> list[Span]:
    out: list[Span] = []
    for start, end in spans:
        while end - start > max_chars:
            out.append((start, start + max_chars))
            start += max_chars
        out.append((start, end))
    return out


def split_windows(
    text: str, offsets: Sequence[Span], *, window: int, overlap: int, max_chars: int
) -> list[Span]:
    """Character spans of `text`'s windows (see the module docstring). `offsets` are the
    character spans of its tokens in order, special tokens left out."""
    if window < 1 or not 0 <= overlap < window or max_chars < 1:
        raise ValueError(f"window {window}, overlap {overlap}, max_chars {max_chars}")
    count = len(offsets)
    if count <= window:
        return _by_chars([(0, len(text))], max_chars)
    spans: list[Span] = []
    start = 0
    while True:
        end = min(start + window, count)
        if end == count:
            spans.append((offsets[start][0] if spans else 0, len(text)))
            break
        # Keep each window within max_chars: fewer tokens when they are long.
        while end > start + 1 and offsets[end - 1][1] - offsets[start][0] > max_chars:
            end -= 1
        cut = _best_cut(
            text, offsets, start, end, min_cut=max(start + 1, start + (end - start) // 2)
        )
        spans.append((offsets[start][0] if spans else 0, offsets[cut][0]))
        start = max(cut - overlap, start + 1)
    return _by_chars(spans, max_chars)
