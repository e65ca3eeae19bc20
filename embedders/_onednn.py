"""fp32 `nn.Linear` on CPU through oneDNN instead of torch's default BLAS (MKL on x86 wheels).

On AMD CPUs MKL takes its AVX2 path; oneDNN uses AVX-512, and on the Zen 5 machines this
project runs on its GEMMs are about twice as fast at the shapes MiniLM and CLIP use
(measured: docs/performance.md).

`use_onednn_linear(model, probe)` switches every plain `nn.Linear` of a model to
`OneDnnLinear`, in place: the same module objects and Parameters, so state_dict, hooks and
memory are unchanged and no weight is copied. The switch is checked once on a real input; a
mismatch puts the modules back. Inference only: `OneDnnLinear` hands anything the op does not
cover (autograd, other dtypes or devices) to `F.linear`.

The weights are not prepacked (`mkldnn._reorder_linear_weight`): that saves a little more
per query but keeps a second copy of every weight (docs/performance.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

# A switched model must give these vectors row by row (cosine) and scale (norm ratio).
MIN_COSINE = 0.99999
MAX_NORM_DRIFT = 1e-4


def _find_linear_op() -> Callable[..., torch.Tensor] | None:
    """`mkldnn::_linear_pointwise` where this torch build has oneDNN and the op; else None."""
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return None
    try:
        op: Callable[..., torch.Tensor] = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # older torch, or a build without it
        return None
    return op


_linear_op = _find_linear_op()


def onednn_linear_available() -> bool:
    """Whether this process can run Linear layers through oneDNN at all."""
    return _linear_op is not None and bool(torch.backends.mkldnn.enabled)


class OneDnnLinear(nn.Linear):
    """An `nn.Linear` whose forward calls oneDNN for CPU float32 inference, `F.linear` else.

    Never constructed: `use_onednn_linear` switches existing modules to this class.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        op = _linear_op
        if (
            op is not None
            and input.dtype == torch.float32
            and weight.dtype == torch.float32
            and input.device.type == "cpu"
            and weight.device.type == "cpu"
            and input.layout == torch.strided
            and (bias is None or bias.dtype == torch.float32)
            # The op has no backward: under autograd it would return an output without grad.
            and not (
                torch.is_grad_enabled()
                and (
                    input.requires_grad
                    or weight.requires_grad
                    or (bias is not None and bias.requires_grad)
                )
            )
        ):
            return op(input, weight, bias, "none", [], "")
        return F.linear(input, weight, bias)


def _switchable(module: nn.Module) -> bool:
    # Exactly nn.Linear: subclasses (MultiheadAttention's out_proj, LoRA, quantised layers)
    # may not go through forward, or mean something else by it.
    if type(module) is not nn.Linear:
        return False
    weight = module.weight
    return bool(weight.device.type == "cpu" and weight.dtype == torch.float32)


def use_onednn_linear(
    model: nn.Module, probe: Callable[[], Any], *, reference: Any = None, name: str = ""
) -> bool:
    """Switch `model`'s CPU float32 `nn.Linear` layers to oneDNN; return whether it did.

    `probe()` runs the model on a small real input and returns its output (array or tensor,
    one row per input); `reference` is what it returned before the switch (default: call it
    now). After the switch it runs once more; if the outputs differ by more than float
    rounding, or the switched model raises, the switch is undone and a warning is logged.
    Nothing is switched (and `probe` is not called) when oneDNN or its op is missing, or no
    Linear layer is on the CPU in float32.
    """
    label = name or type(model).__name__
    if not onednn_linear_available():
        logger.info("%s: oneDNN linear op unavailable in torch %s", label, torch.__version__)
        return False
    targets = [module for module in model.modules() if _switchable(module)]
    if not targets:
        return False
    expected = _rows(probe() if reference is None else reference)
    # A class switch, not new modules: parents, tied references and hooks keep working.
    for module in targets:
        module.__class__ = OneDnnLinear
    try:
        problem = _mismatch(expected, _rows(probe()))
    except Exception as exc:  # noqa: BLE001 - any failure of the new path means "don't use it"
        problem = f"{type(exc).__name__}: {exc}"
    if problem is None:
        return True
    for module in targets:
        module.__class__ = nn.Linear
    logger.warning("%s: oneDNN Linear layers disagree with torch's (%s); not used", label, problem)
    return False


def _rows(output: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    if isinstance(output, torch.Tensor):
        output = output.detach().float().cpu().numpy()
    array = np.asarray(output, dtype=np.float64)
    return array.reshape(array.shape[0], -1) if array.ndim >= 2 else array.reshape(1, -1)


def _mismatch(
    reference: np.ndarray[Any, np.dtype[np.float64]],
    got: np.ndarray[Any, np.dtype[np.float64]],
) -> str | None:
    """Why `got` is not `reference` up to rounding, or None when it is."""
    if got.shape != reference.shape:
        return f"shape {got.shape} vs {reference.shape}"
    if not np.all(np.isfinite(got)):
        return "non-finite outputs"
    ref_norm = np.linalg.norm(reference, axis=1)
    got_norm = np.linalg.norm(got, axis=1)
    both_zero = (ref_norm == 0) & (got_norm == 0)
    cosines = np.sum(reference * got, axis=1) / np.maximum(ref_norm * got_norm, 1e-30)
    cosine = float(np.min(np.where(both_zero, 1.0, cosines), initial=1.0))
    drifts = np.abs(got_norm - ref_norm) / np.maximum(ref_norm, 1e-30)
    drift = float(np.max(drifts, initial=0.0))
    if cosine < MIN_COSINE or drift > MAX_NORM_DRIFT:
        return f"min cosine {cosine:.7f}, norm drift {drift:.2e}"
    return None


def linear_kernels(model: nn.Module) -> str:
    """What runs `model`'s Linear layers, for describe(): "onednn", "mkl" or "default"."""
    if any(isinstance(module, OneDnnLinear) for module in model.modules()):
        return "onednn"
    on_cpu = any(
        isinstance(module, nn.Linear) and module.weight.device.type == "cpu"
        for module in model.modules()
    )
    mkl = torch.backends.mkl.is_available()  # type: ignore[no-untyped-call]
    return "mkl" if on_cpu and mkl else "default"
