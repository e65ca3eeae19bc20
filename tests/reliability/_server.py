"""`vectorsvc serve` as a subprocess on a loopback port, for tests that kill or load it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

from vectorsvc.auth.keys import create_api_key
from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.workspaces.service import create_workspace

VECTORSVC = str(Path(sys.executable).parent / "vectorsvc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def item_ids(client: httpx.Client, model: str, scope: str) -> list[str]:
    """Every item id the scope holds, through the paged Knowledge Bases listing."""
    ids: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        r = client.get(f"/api/knowledge-bases/{model}/{scope}/items", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        ids += [entry["id"] for entry in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            return ids


def create_keys(
    data_dir: Path, *workspaces: str, database_url: str | None = None
) -> dict[str, str]:
    """Create each workspace with one API key in the database the service on `data_dir`
    opens (`database_url`, else VECTORSVC_DATABASE_URL, else its SQLite file); name -> key."""
    data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(database_url or Settings(data_dir=data_dir).resolved_database_url)
    try:
        db.migrate()
        keys: dict[str, str] = {}
        with db.session() as session:
            for name in workspaces:
                workspace = create_workspace(session, name=name)
                keys[name] = create_api_key(session, workspace=workspace).plaintext
        return keys
    finally:
        db.close()


class ServerProcess:
    """One `vectorsvc serve` process; `start` again after `kill` reopens the same data dir."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.command = command or [VECTORSVC]  # what runs `serve ...`
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "VECTORSVC_DATA_DIR": str(data_dir),
            "VECTORSVC_CREATE_DEV_WORKSPACE": "false",
            "VECTORSVC_DEFAULT_WORKSPACE_CREDITS": "1000000",
            "VECTORSVC_PRELOAD_MODELS": "all-minilm-l6-v2",
            "TOKENIZERS_PARALLELISM": "false",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 120) -> float:
        """Start and wait until /health answers; the seconds it took."""
        assert self.process is None or self.process.poll() is not None, "already running"
        started = time.monotonic()
        self._log = open(self.log_path, "ab")  # closed by kill() or stop()
        self.process = subprocess.Popen(
            [*self.command, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = started + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - started
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"vectorsvc serve did not start; log:\n{self.log_text()[-3000:]}"
                )
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flushes, the crash a power cut would be to RAM."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        self._close_log()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self._close_log()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
