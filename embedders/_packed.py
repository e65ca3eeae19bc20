"""Batches without padding for sentence-transformers BERT models: sequences packed into rows.

A padded batch computes every text at the length of its longest: eight SciFact queries of
23 word pieces on average are run at 37, 1.6 times the work (1.8 times at sixteen). Packing
puts the texts of a batch one after another into rows of up to `row_tokens` tokens, with
position ids restarting at each text and an attention mask that keeps each text to itself
(block-diagonal), so the linear layers, nine tenths of the work, see only real tokens. Mean
pooling then averages each text's own span. Same model, same weights; the vectors equal
sentence-transformers' own to cosine >= 0.99999 (checked at load, and in the tests).

Measured on this project's 2-core CPU: docs/performance.md.

Only for the shape it knows: [Transformer on a BERT model with absolute positions, mean
Pooling, optional Normalize], right padding, no prompts. Anything else is reported by
`unsupported()` and keeps sentence-transformers' `encode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

_MODEL_TYPES = frozenset({"bert"})


def unsupported(model: SentenceTransformer) -> str | None:
    """Why `model` cannot be packed, or None when it can."""
    modules: list[Any] = list(model)
    names = [type(m).__name__ for m in modules]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return f"modules {names}"
    transformer, pooling = modules[0], modules[1]
    config = getattr(getattr(transformer, "auto_model", None), "config", None)
    if getattr(config, "model_type", None) not in _MODEL_TYPES:
        return f"model type {getattr(config, 'model_type', None)!r}"
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return "relative position embeddings"
    pooling_config = pooling.get_config_dict()
    mode = pooling_config.get("pooling_mode")
    if mode is None:  # releases before 5.x: one flag per mode
        flags = [k for k, v in pooling_config.items() if k.startswith("pooling_mode_") and v]
        mode = "mean" if flags == ["pooling_mode_mean_tokens"] else ",".join(flags)
    if mode != "mean":
        return f"pooling {mode!r}"
    if getattr(model.tokenizer, "padding_side", "right") != "right":
        return "left padding"
    if any((getattr(model, "prompts", None) or {}).values()):
        return "prompts"  # encode_query/encode_document would prepend them
    return None


class PackedEncoder:
    """`encode(texts)` for a model that `unsupported()` accepts; float32 (n, dimension)."""

    def __init__(self, model: SentenceTransformer, *, row_tokens: int = 256) -> None:
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(f"cannot pack this model: {reason}")
        self._model = model
        # preprocess() since sentence-transformers 6; tokenize() before (now deprecated).
        self._preprocess: Any = getattr(model, "preprocess", None) or model.tokenize
        self._bert: Any = model[0].auto_model
        self._row_tokens = row_tokens

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, **_: Any) -> np.ndarray:
        out = np.empty((len(texts), self._bert.config.hidden_size), dtype=np.float32)
        # Longest first, as sentence-transformers does: each call packs texts of like length.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self._encode_chunk([texts[i] for i in chunk])
        return out

    def _encode_chunk(self, texts: list[str]) -> np.ndarray:
        # The model's own tokenisation (truncation, lower-casing, special tokens): padded, then
        # each text cut back to its length. Same call, same settings as encode() makes.
        features = self._preprocess(texts)
        lengths = features["attention_mask"].sum(dim=1).tolist()
        ids = features["input_ids"]
        types = features.get("token_type_ids")
        rows = _pack(lengths, max(self._row_tokens, max(lengths)))
        width = max(sum(lengths[i] for i in row) for row in rows)
        input_ids = torch.zeros((len(rows), width), dtype=ids.dtype)
        token_types = torch.zeros_like(input_ids)
        positions = torch.zeros_like(input_ids)
        segment = torch.full((len(rows), width), -1, dtype=torch.long)
        spans: list[tuple[int, int, int]] = [(0, 0, 0)] * len(texts)
        for r, row in enumerate(rows):
            offset = 0
            for k, i in enumerate(row):
                n = lengths[i]
                input_ids[r, offset : offset + n] = ids[i, :n]
                if types is not None:
                    token_types[r, offset : offset + n] = types[i, :n]
                positions[r, offset : offset + n] = torch.arange(n)
                segment[r, offset : offset + n] = k
                spans[i] = (r, offset, n)
                offset += n
        # Each token attends to its own text only (the padding tail to itself, harmlessly).
        same = segment[:, None, :, None] == segment[:, None, None, :]
        mask = torch.zeros(same.shape, dtype=torch.float32)
        mask.masked_fill_(~same, torch.finfo(torch.float32).min)
        with torch.inference_mode():
            hidden = self._bert(
                input_ids=input_ids,
                attention_mask=mask,
                token_type_ids=token_types,
                position_ids=positions,
            ).last_hidden_state
            pooled = torch.stack([hidden[r, o : o + n].mean(dim=0) for r, o, n in spans])
        return pooled.float().numpy()


def _pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Text indexes in rows of at most `capacity` tokens (a longer text alone in its row):
    as few rows as first-fit finds, then balanced (longest text first, each into the emptiest
    row), because every row is padded to the fullest one."""
    longest_first = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    first_fit: list[list[int]] = []
    room: list[int] = []
    for i in longest_first:
        for r, free in enumerate(room):
            if lengths[i] <= free:
                first_fit[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            first_fit.append([i])
            room.append(capacity - lengths[i])
    balanced: list[list[int]] = [[] for _ in first_fit]
    fill = [0] * len(first_fit)
    for i in longest_first:
        r = min(range(len(fill)), key=fill.__getitem__)
        if balanced[r] and fill[r] + lengths[i] > capacity:
            return first_fit  # balancing would overfill a row: keep first fit
        balanced[r].append(i)
        fill[r] += lengths[i]
    return balanced
