"""Production mode (`VECTORSVC_ENV=production`, the image's default): `vectorsvc serve`
creates no `dev` workspace and prints or logs no API key; the operator creates the first
workspace and key with the CLI; unsafe settings stop the command before it starts."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from tests.reliability._server import free_port
from vectorsvc.cli import main
from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.db.tables import Workspace

VECTORSVC = str(Path(sys.executable).parent / "vectorsvc")


def production_env(data_dir: Path) -> dict[str, str]:
    # The test's own database (VECTORSVC_DATABASE_URL, set on PostgreSQL runs) is kept.
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VECTORSVC_") or k == "VECTORSVC_DATABASE_URL"
    }
    return {
        **inherited,
        "VECTORSVC_ENV": "production",
        "VECTORSVC_DATA_DIR": str(data_dir),
        "VECTORSVC_PRELOAD_MODELS": "",
        "VECTORSVC_WARM_STORE": "false",
        "TOKENIZERS_PARALLELISM": "false",
    }


def workspace_count(data_dir: Path) -> int:
    db = Database(Settings(data_dir=data_dir).resolved_database_url)
    try:
        with db.session() as session:
            return int(session.scalar(select(func.count()).select_from(Workspace)) or 0)
    finally:
        db.close()


def test_serve_in_production_creates_no_workspace_and_logs_no_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = production_env(data_dir)
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [VECTORSVC, "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            ready = False
            while not ready and server.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    ready = httpx.get(f"{url}/health", timeout=2).status_code == 200
                time.sleep(0.1)
            assert ready, log_path.read_text()[-3000:]
            assert workspace_count(data_dir) == 0

            # The operator's path to the first workspace and key.
            def cli(*args: str) -> str:
                command = [VECTORSVC, *args]
                return subprocess.run(
                    command, env=env, check=True, capture_output=True, text=True
                ).stdout

            cli("workspace", "create", "acme")
            key = cli("keys", "create", "--workspace", "acme").splitlines()[-1]
            r = httpx.get(f"{url}/api/knowledge-bases", headers={"X-API-Key": key})
            assert r.status_code == 200, r.text
        finally:
            server.terminate()
            server.wait(30)
    output = log_path.read_text()
    assert "vsk_" not in output  # neither printed nor logged, not even the operator's key
    assert "development workspace" not in output
    assert "VECTORSVC_PUBLIC_BASE_URL is unset" in output  # the start-up warning
    assert workspace_count(data_dir) == 1  # acme alone: no `dev`


def test_production_refuses_to_create_the_dev_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VECTORSVC_ENV", "production")
    assert Settings().create_dev_workspace is False  # the default turns off
    monkeypatch.setenv("VECTORSVC_CREATE_DEV_WORKSPACE", "true")
    with pytest.raises(ValidationError, match="VECTORSVC_CREATE_DEV_WORKSPACE"):
        Settings()
    # The CLI stops with the reason (exit 2), before it touches the data directory.
    data_dir = tmp_path / "data"
    assert main(["workspace", "create", "acme", "--data-dir", str(data_dir)]) == 2
    assert "VECTORSVC_CREATE_DEV_WORKSPACE=true is refused" in capsys.readouterr().err
    assert not data_dir.exists()
    monkeypatch.setenv("VECTORSVC_ENV", "development")
    assert Settings().create_dev_workspace is True
    monkeypatch.setenv("VECTORSVC_ENV", "staging")
    with pytest.raises(ValidationError, match="production"):
        Settings()


@pytest.mark.parametrize(
    "value",
    [
        "vectors.example.com",
        "ftp://vectors.example.com",
        "https://",
        "https://vectors.example.com/?a=1",
        "https://vectors.example.com/?",
        "https://vectors.example.com/#top",
        "https://user:pw@vectors.example.com",
        "https://vectors.example.com:port",
        "https://[::1",
        "https://vectors.example.com/a b",
        "https://vectors.example.com/\r\nX-Evil: 1",
    ],
)
def test_public_base_url_must_be_a_plain_http_url(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VECTORSVC_PUBLIC_BASE_URL", value)
    with pytest.raises(ValidationError, match="public_base_url"):
        Settings()


def test_public_base_url_is_kept_without_its_trailing_slash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VECTORSVC_PUBLIC_BASE_URL", "https://example.com:8443/vectorsvc/")
    assert Settings().public_base_url == "https://example.com:8443/vectorsvc"
    monkeypatch.setenv("VECTORSVC_PUBLIC_BASE_URL", "")
    assert Settings().public_base_url is None
