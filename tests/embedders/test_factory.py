from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import embedders
from embedders.base import MissingDependency
from embedders.factory import EmbedderKind, create_embedder, validate_config

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_unknown_kind_error_lists_the_valid_kinds() -> None:
    with pytest.raises(ValueError) as caught:
        create_embedder("resnet50")
    message = str(caught.value)
    assert "'resnet50'" in message
    for kind in EmbedderKind:
        assert repr(kind.value) in message


def test_kind_parses_from_its_string_value() -> None:
    assert EmbedderKind.parse("clip") is EmbedderKind.CLIP
    assert EmbedderKind.parse(EmbedderKind.CLIP) is EmbedderKind.CLIP
    assert str(EmbedderKind.SENTENCE_TRANSFORMER_TEXT) == "sentence_transformer_text"


def test_unknown_config_key_error_lists_the_valid_keys() -> None:
    with pytest.raises(ValueError) as caught:
        validate_config("sentence_transformer_text", batchsize=8)
    message = str(caught.value)
    assert "'batchsize'" in message
    for key in ("batch_size", "device", "backend", "model", "models_dir", "allow_download"):
        assert key in message


def test_closed_value_set_error_lists_the_valid_values() -> None:
    with pytest.raises(ValueError, match=r"'tensorrt'.*valid values: 'torch', 'onnx'"):
        validate_config("sentence_transformer_text", backend="tensorrt")


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("efficientnet_lite0", {"batch_size": "32"}),
        ("efficientnet_lite0", {"batch_size": True}),
        ("clip", {"allow_download": "no"}),
        ("clip", {"models_dir": 3}),
    ],
)
def test_wrongly_typed_config_value_is_refused(kind: str, config: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        validate_config(kind, **config)


def test_out_of_range_values_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        validate_config("clip", batch_size=0)


def test_the_service_keys_are_accepted_by_every_kind(tmp_path: Path) -> None:
    # The service's loader passes batch_size and models_dir to whatever kind it loads.
    for kind in EmbedderKind:
        validate_config(kind, batch_size=64, models_dir=tmp_path)


def test_importing_embedders_loads_no_backend() -> None:
    """A model that is not used costs nothing: no torch until create_embedder asks for one."""
    code = (
        "import sys, embedders, embedders.factory\n"
        "heavy = {'torch', 'sentence_transformers', 'transformers', 'embedders.clip'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_missing_backend_package_becomes_a_pip_install_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_import = importlib.import_module

    def fake_import(name: str, package: str | None = None) -> ModuleType:
        if name == "embedders.sentence_transformer":
            raise ModuleNotFoundError(
                "No module named 'sentence_transformers'", name="sentence_transformers"
            )
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(MissingDependency, match="pip install sentence-transformers"):
        create_embedder("sentence_transformer_text")


@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is not None
    and importlib.util.find_spec("onnx") is not None,
    reason="onnxruntime and onnx are installed here",
)
def test_onnx_backend_without_onnxruntime_says_what_to_install() -> None:
    with pytest.raises(MissingDependency, match=r"pip install onnxruntime onnx"):
        create_embedder("sentence_transformer_text", backend="onnx")


def test_package_exports_the_interface() -> None:
    for name in embedders.__all__:
        assert hasattr(embedders, name)
