"""The `vectorsvc` command: workspaces and keys, as an operator uses them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vectorsvc.auth.keys import verify_api_key
from vectorsvc.cli import bootstrap_dev_workspace, main
from vectorsvc.config import Settings
from vectorsvc.db.database import Database


def test_workspace_and_key_lifecycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    assert main(["workspace", "create", "acme", "--data-dir", data]) == 0
    assert "created workspace acme" in capsys.readouterr().out
    assert main(["workspace", "create", "acme", "--data-dir", data]) == 2
    assert "already exists" in capsys.readouterr().err

    assert main(["keys", "create", "--workspace", "acme", "--data-dir", data]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("vsk_")
    db = Database(Settings(data_dir=Path(data)).resolved_database_url)
    with db.session() as session:
        row = verify_api_key(session, key)
        assert row is not None
        key_id = row.id

    assert main(["keys", "revoke", key_id, "--data-dir", data]) == 0
    with db.session() as session:
        assert verify_api_key(session, key) is None
    assert main(["keys", "revoke", "nope", "--data-dir", data]) == 2
    assert main(["keys", "create", "--workspace", "ghost", "--data-dir", data]) == 2


def test_a_key_label_longer_than_stored_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # PostgreSQL refuses text longer than its column where SQLite keeps it: refused first.
    data = str(tmp_path / "data")
    assert main(["workspace", "create", "acme", "--data-dir", data]) == 0
    args = ["keys", "create", "--workspace", "acme", "--data-dir", data]
    with pytest.raises(SystemExit) as refused:
        main([*args, "--label", "x" * 101])
    assert refused.value.code == 2
    assert "--label: at most 100 characters, got 101" in capsys.readouterr().err
    assert main([*args, "--label", "x" * 100]) == 0


def test_dev_workspace_is_created_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    db = Database(settings.resolved_database_url)
    db.migrate()
    first = bootstrap_dev_workspace(settings, db)
    assert first is not None and first.startswith("vsk_")
    assert bootstrap_dev_workspace(settings, db) is None


def test_console_script_prints_the_key_alone_on_the_last_line(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "vectorsvc"
    env = {"VECTORSVC_DATA_DIR": str(tmp_path), "PATH": str(exe.parent)}
    subprocess.run([str(exe), "workspace", "create", "w1"], env=env, check=True)
    out = subprocess.run(
        [str(exe), "keys", "create", "--workspace", "w1"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.splitlines()[-1].startswith("vsk_")
    assert " " not in out.splitlines()[-1]


def test_settings_fail_fast_on_unsafe_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VECTORSVC_QDRANT_URL", "qdrant.example:6333")
    with pytest.raises(ValueError, match="http"):
        Settings()
    monkeypatch.setenv("VECTORSVC_QDRANT_URL", "http://qdrant.example:6333")
    monkeypatch.setenv("VECTORSVC_QDRANT_API_KEY", "secret")
    with pytest.raises(ValueError, match="https"):
        Settings()
    monkeypatch.setenv("VECTORSVC_QDRANT_URL", "https://qdrant.example:6333")
    assert Settings().qdrant_url == "https://qdrant.example:6333"
    monkeypatch.setenv("VECTORSVC_PORT", "99999")
    with pytest.raises(ValueError):
        Settings()


def test_models_list_says_which_weights_are_missing_and_how_to_get_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "list", "--data-dir", str(tmp_path)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["all-minilm-l6-v2"].endswith("available")
    assert lines["image-similarity"].endswith("available")
    assert "not available" in lines["clip-vit-b-32"]
    assert str(tmp_path / "models" / "clip-vit-b-32") in lines["clip-vit-b-32"]
    assert "download" in lines["clip-vit-b-32"].lower()
    assert main(["models", "download", "all-minilm-l6-v2", "--data-dir", str(tmp_path)]) == 0
    assert "nothing to download" in capsys.readouterr().out
