"""Secrets: keys, tokens and passwords are stored only hashed, keys are revocable, and no
secret ever reaches the logs.

One `vectorsvc serve` process at log level debug serves a session of everything that
carries a secret: API key use (good, forged, revoked, sent as a bearer), sign-in (right and
wrong password), refresh and its reuse, sign-out, and a media upload whose PUT URL carries
its token in the query string (a wrong token too). Then the database rows, the raw bytes of
every file in the data dir, and every log line are searched for each secret.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from tests.pgcluster import dump_database
from tests.reliability._server import VECTORSVC, ServerProcess
from vectorsvc.accounts.service import create_user
from vectorsvc.auth.keys import create_api_key
from vectorsvc.db.database import Database
from vectorsvc.db.tables import ApiKey, MediaUpload, User, UserSession
from vectorsvc.workspaces.service import create_workspace

pytestmark = pytest.mark.slow

EMAIL = "ada@example.com"
PASSWORD = "Correct-Horse-Battery-9271"
WRONG_PASSWORD = "Wrong-Horse-Battery-1138"
KEY_CACHE_S = 0.5
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
    "0000000c4944415408d763f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Session:
    data_dir: Path
    database_url: str
    log: str
    keys: dict[str, tuple[str, str]]  # name -> (key id, plaintext)
    secrets: dict[str, str] = field(default_factory=dict)  # what it is -> the secret
    statuses: dict[str, int] = field(default_factory=dict)  # step -> HTTP status
    codes: dict[str, str] = field(default_factory=dict)  # step -> error code


def key_secret(plaintext: str) -> str:
    return plaintext.split("_", 2)[2]  # vsk_<id>_<secret>


def prepare(data_dir: Path, database_url: str) -> dict[str, tuple[str, str]]:
    data_dir.mkdir(parents=True)
    db = Database(database_url)
    try:
        db.migrate()
        with db.session() as session:
            acme = create_workspace(session, name="acme")
            other = create_workspace(session, name="other")
            keys = {
                name: (issued.key_id, issued.plaintext)
                for name, issued in (
                    ("main", create_api_key(session, workspace=acme)),
                    ("doomed", create_api_key(session, workspace=acme)),
                    ("other", create_api_key(session, workspace=other)),
                )
            }
            create_user(session, email=EMAIL, password=PASSWORD, workspace=acme)
        return keys
    finally:
        db.close()


def exercise(server: ServerProcess, session: Session) -> None:
    """Every flow that carries a secret, with its status recorded under a step name."""
    main, doomed, other = (session.keys[n][1] for n in ("main", "doomed", "other"))
    forged = f"vsk_{session.keys['main'][0]}_{secrets.token_urlsafe(32)}"
    session.secrets.update(
        main_key=main,
        main_secret=key_secret(main),
        doomed_key=doomed,
        doomed_secret=key_secret(doomed),
        other_key=other,
        forged_key=forged,
        forged_secret=key_secret(forged),
        password=PASSWORD,
        wrong_password=WRONG_PASSWORD,
    )

    with httpx.Client(base_url=server.url, timeout=60) as http:

        def step(name: str, r: httpx.Response) -> Any:
            session.statuses[name] = r.status_code
            body = r.json() if r.content else None
            if isinstance(body, dict) and "error" in body:
                session.codes[name] = body["error"]["code"]
            return body

        def as_key(key: str) -> dict[str, str]:
            return {"X-API-Key": key}

        step("wallet", http.get("/api/billing/wallet", headers=as_key(main)))
        run = {"model": "all-minilm-l6-v2", "input": {"text": "hello"}}
        step("run", http.post("/api/runs", json=run, headers=as_key(main)))
        step("forged", http.get("/api/billing/wallet", headers=as_key(forged)))
        step(
            "key_as_bearer",
            http.get("/api/billing/wallet", headers={"Authorization": f"Bearer {main}"}),
        )
        step("doomed_before", http.get("/api/billing/wallet", headers=as_key(doomed)))

        # Sign-in, wrong and right; refresh, reuse of the old refresh token; sign-out.
        sign_in = "/api/auth/sign-in"
        step(
            "wrong_password", http.post(sign_in, json={"email": EMAIL, "password": WRONG_PASSWORD})
        )
        tokens = step("sign_in", http.post(sign_in, json={"email": EMAIL, "password": PASSWORD}))
        bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
        step("me", http.get("/api/auth/me", headers=bearer))
        renewed = step(
            "refresh",
            http.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}),
        )
        step(
            "refresh_reuse",
            http.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}),
        )
        again = step(
            "sign_in_again", http.post(sign_in, json={"email": EMAIL, "password": PASSWORD})
        )
        bearer_again = {"Authorization": f"Bearer {again['access_token']}"}
        step("sign_out", http.post("/api/auth/sign-out", headers=bearer_again))
        step("me_after_sign_out", http.get("/api/auth/me", headers=bearer_again))
        session.secrets.update(
            access_token=tokens["access_token"],
            refresh_token=tokens["refresh_token"],
            renewed_access=renewed["access_token"],
            renewed_refresh=renewed["refresh_token"],
            access_again=again["access_token"],
            refresh_again=again["refresh_token"],
        )

        # An upload: the PUT URL's query string carries the token.
        ticket = step(
            "init",
            http.post(
                "/api/media/upload/init",
                json={
                    "filename": "dot.png",
                    "content_type": "image/png",
                    "media_type": "image",
                    "size_bytes": len(PNG_1X1),
                },
                headers=as_key(main),
            ),
        )
        url = httpx.URL(ticket["upload_url"])
        wrong_token = secrets.token_urlsafe(32)
        session.secrets.update(upload_token=url.params["token"], wrong_upload_token=wrong_token)
        step("put_wrong_token", http.put(url.copy_set_param("token", wrong_token), content=PNG_1X1))
        step("put", http.put(url, content=PNG_1X1))
        step("put_again", http.put(url, content=PNG_1X1))
        step(
            "complete",
            http.post(
                "/api/media/upload/complete",
                json={"upload_id": ticket["upload_id"]},
                headers=as_key(main),
            ),
        )

        # Revoke one key with the CLI, while the service runs.
        subprocess.run(
            [VECTORSVC, "keys", "revoke", session.keys["doomed"][0]],
            env={**server.env},
            check=True,
            capture_output=True,
        )
        time.sleep(KEY_CACHE_S + 0.1)  # what the service remembers of the key runs out
        step("doomed_after", http.get("/api/billing/wallet", headers=as_key(doomed)))
        step("main_after", http.get("/api/billing/wallet", headers=as_key(main)))
        step("other_after", http.get("/api/billing/wallet", headers=as_key(other)))


@pytest.fixture(scope="module")
def session(
    tmp_path_factory: pytest.TempPathFactory, module_database_url: str | None
) -> Iterator[Session]:
    root = tmp_path_factory.mktemp("secrets")
    data_dir = root / "data"
    database_url = module_database_url or f"sqlite:///{(data_dir / 'vectorsvc.db').resolve()}"
    keys = prepare(data_dir, database_url)
    # A verified key is remembered for VECTORSVC_API_KEY_CACHE_S; short here, and waited for.
    env = {
        "VECTORSVC_LOG_LEVEL": "debug",
        "VECTORSVC_API_KEY_CACHE_S": str(KEY_CACHE_S),
        "VECTORSVC_DATABASE_URL": database_url,
    }
    server = ServerProcess(data_dir, root / "service.log", env=env)
    record = Session(data_dir=data_dir, database_url=database_url, log="", keys=keys)
    server.start()
    try:
        exercise(server, record)
    finally:
        server.stop()
    record.log = server.log_text()
    yield record


def test_every_flow_behaved(session: Session) -> None:
    expected = {
        "wallet": 200,
        "run": 200,
        "forged": 401,
        "key_as_bearer": 401,
        "doomed_before": 200,
        "wrong_password": 401,
        "sign_in": 200,
        "me": 200,
        "refresh": 200,
        "refresh_reuse": 401,
        "sign_in_again": 200,
        "sign_out": 204,
        "me_after_sign_out": 401,
        "init": 200,
        "put_wrong_token": 404,
        "put": 200,
        "put_again": 409,
        "complete": 200,
        "doomed_after": 401,
        "main_after": 200,
        "other_after": 200,
    }
    assert session.statuses == expected
    assert session.codes["forged"] == "invalid_api_key"
    assert session.codes["key_as_bearer"] == "api_key_as_bearer"
    assert session.codes["wrong_password"] == "invalid_credentials"


def test_revoked_key_stops_working_and_only_that_key(session: Session) -> None:
    assert session.statuses["doomed_before"] == 200
    assert session.statuses["doomed_after"] == 401
    assert session.codes["doomed_after"] == "invalid_api_key"
    assert session.statuses["main_after"] == session.statuses["other_after"] == 200
    db = Database(session.database_url)
    try:
        with db.session() as s:
            revoked = {row.id: row.revoked_at is not None for row in s.scalars(select(ApiKey))}
    finally:
        db.close()
    assert revoked == {
        session.keys["main"][0]: False,
        session.keys["doomed"][0]: True,
        session.keys["other"][0]: False,
    }


def test_keys_tokens_and_passwords_are_stored_hashed(session: Session) -> None:
    found = session.secrets
    db = Database(session.database_url)
    try:
        with db.session() as s:
            key_hashes = {row.id: row.secret_hash for row in s.scalars(select(ApiKey))}
            (user,) = s.scalars(select(User)).all()
            sessions = s.scalars(select(UserSession)).all()
            (upload,) = s.scalars(select(MediaUpload)).all()
            access_hashes = {row.access_token_hash for row in sessions}
            refresh_hashes = {row.refresh_token_hash for row in sessions}
            password_hash, token_hash = user.password_hash, upload.token_hash
    finally:
        db.close()
    for name, (key_id, plaintext) in session.keys.items():
        assert key_hashes[key_id] == sha256(key_secret(plaintext)), name
    assert password_hash.startswith("$argon2id$")
    assert PasswordHasher().verify(password_hash, PASSWORD)
    for name in ("access_token", "renewed_access", "access_again"):
        assert sha256(found[name]) in access_hashes, name
    for name in ("refresh_token", "renewed_refresh", "refresh_again"):
        assert sha256(found[name]) in refresh_hashes, name
    assert token_hash == sha256(found["upload_token"])

    # No secret in clear anywhere in the data dir: database, its journal, vectors, media.
    stored = {str(p): p.read_bytes() for p in session.data_dir.rglob("*") if p.is_file()}
    if session.database_url.startswith("sqlite"):
        assert any(path.endswith("/vectorsvc.db") for path in stored)
    else:
        stored["pg_dump"] = dump_database(session.database_url)
        assert password_hash.encode() in stored["pg_dump"]
    for path, data in stored.items():
        for name, secret in found.items():
            assert secret.encode() not in data, f"{name} in clear in {path}"


def test_no_secret_in_the_logs(session: Session) -> None:
    lines = [line for line in session.log.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any(e["level"] == "debug" for e in entries), "the service did not log at debug"
    routes = {e["http"]["route"] for e in entries if "http" in e}
    # The requests that carried secrets were logged, by route template only.
    assert {
        "/api/auth/sign-in",
        "/api/auth/refresh",
        "/api/media/uploads/{upload_id}",
        "/api/billing/wallet",
    } <= routes
    for name, secret in session.secrets.items():
        assert secret not in session.log, f"{name} appears in the logs"
    assert "token=" not in session.log
    assert "vsk_" not in session.log
