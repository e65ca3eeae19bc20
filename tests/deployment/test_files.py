"""Static checks of the Dockerfile (no Docker engine here to run it): the image runs
unprivileged in production. Its settings are fed to the real `Settings`, so the file and
config.py's rules cannot drift apart. The compose file: test_compose.py."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from vectorsvc.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    out: list[tuple[str, str]] = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_runs_unprivileged_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users, "the image runs as root"
    user, _, group = users[-1].partition(":")
    assert user not in ("root", "0") and group not in ("root", "0"), users[-1]
    # Nothing after the USER switches back or runs as root at build time.
    assert "RUN" not in keywords[keywords.index("USER") :]

    env: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                env[name] = value
    settings = settings_from(env, monkeypatch)
    assert settings.env == "production"
    assert settings.create_dev_workspace is False
    data_dir = str(settings.data_dir)
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert re.search(rf"chown \S*\s+{re.escape(data_dir)}\b", runs), "the user must own the data"
    health = " ".join(rest for keyword, rest in instructions if keyword == "HEALTHCHECK")
    assert "/health" in health
