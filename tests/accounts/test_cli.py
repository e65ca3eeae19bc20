"""`vectorsvc users create`: makes a user who can sign in to the given workspace."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import select

from vectorsvc.cli import main
from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.db.tables import Membership, User


def test_users_create_reads_the_password_from_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "data")
    assert main(["workspace", "create", "acme", "--data-dir", data]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    args = ["users", "create", "--email", "Ada@Example.com", "--workspace", "acme"]
    assert main([*args, "--password-stdin", "--data-dir", data]) == 0
    assert "created user ada@example.com" in capsys.readouterr().out

    db = Database(Settings(data_dir=Path(data)).resolved_database_url)
    try:
        with db.session() as session:
            user = session.scalars(select(User)).one()
            memberships = list(session.scalars(select(Membership)))
    finally:
        db.close()
    assert user.email == "ada@example.com"
    assert user.password_hash.startswith("$argon2id$")
    assert [m.user_id for m in memberships] == [user.id]

    from argon2 import PasswordHasher

    assert PasswordHasher().verify(user.password_hash, "a long password")


def test_users_create_errors_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "data")
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    args = ["users", "create", "--email", "ada@example.com", "--password-stdin"]
    assert main([*args, "--workspace", "nope", "--data-dir", data]) == 2
    err = capsys.readouterr().err
    assert "workspace 'nope' does not exist" in err
    assert "vectorsvc workspace create nope" in err

    assert main(["workspace", "create", "acme", "--data-dir", data]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main([*args, "--workspace", "acme", "--data-dir", data]) == 2
    assert "at least 8 characters" in capsys.readouterr().err

    # Without --password-stdin and without a terminal there is nobody to prompt.
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main([*args[:-1], "--workspace", "acme", "--data-dir", data]) == 2
    assert "--password-stdin" in capsys.readouterr().err
