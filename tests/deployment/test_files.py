"""Static checks of the deployment files (no Docker engine here to run them): Qdrant stays
off the host and locked by a key that vectorsvc passes; the image runs unprivileged in
production. Each file's settings are fed to the real `Settings`, so the files and
config.py's rules (an API key over http only to local names) cannot drift apart."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from vectorsvc.config import Settings

ROOT = Path(__file__).resolve().parents[2]
REQUIRED_KEY = re.compile(r"^\$\{QDRANT_API_KEY:\?[^}]+\}$")  # compose fails fast when unset


def compose_value(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation of `${NAME}`, `${NAME:-default}`, `${NAME:?error}`."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name} is required: {arg}")
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_compose_keeps_qdrant_off_the_host_and_locked_by_the_key_vectorsvc_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    qdrant, vectorsvc = services["qdrant"], services["vectorsvc"]

    for port in qdrant.get("ports", []):  # none, or loopback only
        host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
        assert host_ip == "127.0.0.1", f"Qdrant published beyond loopback: {port!r}"
    assert qdrant.get("network_mode") != "host"

    qdrant_key = qdrant["environment"]["QDRANT__SERVICE__API_KEY"]
    assert REQUIRED_KEY.match(qdrant_key), qdrant_key
    assert vectorsvc["environment"]["VECTORSVC_QDRANT_API_KEY"] == qdrant_key
    with pytest.raises(KeyError, match="QDRANT_API_KEY"):
        compose_value(qdrant_key, {})

    env = {
        name: compose_value(str(value), {"QDRANT_API_KEY": "k" * 64})
        for name, value in vectorsvc["environment"].items()
    }
    settings = settings_from(env, monkeypatch)  # http://qdrant with a key must be accepted
    assert settings.qdrant_url == "http://qdrant:6333"
    assert settings.qdrant_api_key == "k" * 64
    assert settings.env == "production"
    assert settings.create_dev_workspace is False


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
