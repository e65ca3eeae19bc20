"""docker-compose.yml, read as compose reads it (no Docker engine here to run it): the
`server` and `cluster` profiles, what each publishes, the secrets it requires, and the wiring
every vectorsvc gets. Values go through compose's interpolation and then the real `Settings`,
so the file and config.py's rules cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deployment.test_files import settings_from
from vectorsvc.db.database import POSTGRES_DRIVER, engine_url

ROOT = Path(__file__).resolve().parents[2]
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}")
SECRETS = ("QDRANT_API_KEY", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MEDIA_S3_SECRET_KEY")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|API_KEY|TOKEN")
# Values for the secrets, as an operator's .env would give them.
ENV = {name: f"{name.lower()}-{'9' * 32}" for name in SECRETS}
SERVER = {"postgres", "qdrant", "vectorsvc"}
CLUSTER = {"postgres", "qdrant-1", "qdrant-2", "qdrant-3", "minio", "media-bucket"} | {
    "vectorsvc-1",
    "vectorsvc-2",
    "proxy",
}
REPLICAS = ("vectorsvc-1", "vectorsvc-2")


def compose_value(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation of `${NAME}`, `${NAME:-default}`, `${NAME:?error}`."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name} is required: {arg}")
        return arg or ""

    return INTERPOLATION.sub(one, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def services_of(compose: dict[str, Any], profile: str) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if profile in service.get("profiles", [])
    }


def environment(service: dict[str, Any], env: dict[str, str] = ENV) -> dict[str, str]:
    return {name: compose_value(str(value), env) for name, value in service["environment"].items()}


def published(service: dict[str, Any]) -> list[str]:
    """The host side of each published port that is not loopback-only."""
    out = []
    for port in service.get("ports", []):
        host_ip = port.get("host_ip") if isinstance(port, dict) else None
        if isinstance(port, str) and port.count(":") == 2:
            host_ip = port.split(":")[0]
        if host_ip != "127.0.0.1":
            out.append(str(port))
    return out


def names_on_network(services: dict[str, dict[str, Any]]) -> set[str]:
    """Service names and their network aliases: the host names a container can reach."""
    names = set(services)
    for service in services.values():
        for network in (service.get("networks") or {}).values():
            names |= set((network or {}).get("aliases", []))
    return names


def test_every_service_belongs_to_the_server_or_the_cluster(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service.get("profiles"), f"{name} would start in every profile"
        assert set(service["profiles"]) <= {"server", "cluster"}, name
    assert set(services_of(compose, "server")) == SERVER
    assert set(services_of(compose, "cluster")) == CLUSTER


def test_only_the_entry_point_publishes_a_port(compose: dict[str, Any]) -> None:
    for profile, entry in (("server", "vectorsvc"), ("cluster", "proxy")):
        services = services_of(compose, profile)
        exposed = {name for name, service in services.items() if published(service)}
        assert exposed == {entry}, (profile, exposed)
        for service in services.values():
            assert service.get("network_mode") != "host"


def test_no_secret_has_a_default(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    uses = INTERPOLATION.findall(text)
    for name in SECRETS:
        ops = {op for used, op, _ in uses if used == name}
        assert ops == {":?"}, f"{name} must be required everywhere (${{{name}:?...}}): {ops}"
    for used, op, _ in uses:
        if SECRET_NAME.search(used):
            assert used in SECRETS and op == ":?", used
    for name, service in compose["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(variable):
                names = [used for used, _, _ in INTERPOLATION.findall(str(value))]
                assert names and set(names) <= set(SECRETS), f"{name}: {variable} is written in"
        for secret in SECRETS:
            missing = {key: value for key, value in ENV.items() if key != secret}
            for value in (service.get("environment") or {}).values():
                if secret in str(value):
                    with pytest.raises(KeyError, match=secret):
                        compose_value(str(value), missing)


def test_every_vectorsvc_gets_the_same_database_qdrant_and_media(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    first, second = (environment(services[name]) for name in REPLICAS)
    assert first == second
    assert services[REPLICAS[0]].get("build") == services[REPLICAS[1]].get("build") == "."
    server = environment(services["vectorsvc"])
    shared = ("VECTORSVC_DATABASE_URL", "VECTORSVC_QDRANT_URL", "VECTORSVC_QDRANT_API_KEY")
    assert {name: server[name] for name in shared} == {name: first[name] for name in shared}
    assert first["VECTORSVC_MEDIA_URL"].startswith("s3://")
    assert "VECTORSVC_MEDIA_URL" not in server  # one replica: media on its own volume

    for profile, env in (("server", server), ("cluster", first)):
        reachable = names_on_network(services_of(compose, profile))
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = settings_from(env, monkeypatch)
        assert settings.env == "production" and settings.create_dev_workspace is False
        database = urlsplit(settings.resolved_database_url)
        assert database.hostname in reachable, profile
        # The URL works as written: postgresql:// is taken to the installed driver.
        assert engine_url(settings.resolved_database_url).startswith(f"{POSTGRES_DRIVER}://")
        assert database.password == ENV["POSTGRES_PASSWORD"]
        assert urlsplit(settings.qdrant_url or "").hostname in reachable, profile
        assert settings.qdrant_api_key == ENV["QDRANT_API_KEY"]
    assert urlsplit(first["VECTORSVC_MEDIA_S3_ENDPOINT_URL"]).hostname in names_on_network(
        services_of(compose, "cluster")
    )


def test_postgres_is_the_database_the_url_names(compose: dict[str, Any]) -> None:
    postgres = environment(compose["services"]["postgres"])
    for name in ("vectorsvc", *REPLICAS):
        url = urlsplit(environment(compose["services"][name])["VECTORSVC_DATABASE_URL"])
        assert url.scheme == "postgresql" and url.port == 5432
        assert (url.username, url.password, url.path) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
            f"/{postgres['POSTGRES_DB']}",
        )


def test_qdrant_cluster_has_three_nodes_two_copies_and_one_key(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    nodes = [services[f"qdrant-{n}"] for n in (1, 2, 3)]
    key = environment(services[REPLICAS[0]])["VECTORSVC_QDRANT_API_KEY"]
    for n, node in enumerate(nodes, start=1):
        env = environment(node)
        assert env["QDRANT__CLUSTER__ENABLED"] == "true"
        assert env["QDRANT__STORAGE__COLLECTION__REPLICATION_FACTOR"] == "2"
        assert env["QDRANT__SERVICE__API_KEY"] == key
        command = node["command"]
        assert command[command.index("--uri") + 1] == f"http://qdrant-{n}:6335"
        if n == 1:
            assert "--bootstrap" not in command
        else:
            assert command[command.index("--bootstrap") + 1] == "http://qdrant-1:6335"
            assert "qdrant-1" in node["depends_on"]
    volumes = [node["volumes"][0].split(":")[0] for node in nodes]
    assert len(set(volumes)) == 3  # each node keeps its own storage
    # Qdrant of the server profile is not a cluster node.
    assert "QDRANT__CLUSTER__ENABLED" not in environment(services["qdrant"])


def test_the_proxy_spreads_over_both_replicas_and_is_the_trusted_one(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    proxy = services["proxy"]
    (mount,) = proxy["volumes"]
    config = (ROOT / mount.split(":")[0]).read_text()
    (upstream,) = re.findall(r"upstream\s+(\w+)\s*\{([^}]*)\}", config)
    servers = re.findall(r"^\s*server\s+([\w.-]+:\d+)", upstream[1], re.MULTILINE)
    port = environment(services[REPLICAS[0]])["VECTORSVC_PORT"]
    assert sorted(servers) == [f"{name}:{port}" for name in REPLICAS]
    assert f"proxy_pass http://{upstream[0]};" in config
    assert set(proxy["depends_on"]) == set(REPLICAS)
    address = proxy["networks"]["default"]["ipv4_address"]
    for name in REPLICAS:
        assert environment(services[name])["VECTORSVC_TRUSTED_PROXIES"] == address
    # The service's own upload limit answers, not the proxy's.
    (size,) = re.findall(r"client_max_body_size\s+(\d+)m;", config)
    assert int(size) * 1024 * 1024 > 20 * 1024 * 1024
