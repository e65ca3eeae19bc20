"""`vectorsvc wallet topup`, and the development workspace's starting credits."""

from __future__ import annotations

from pathlib import Path

import pytest

from vectorsvc.billing import service as billing
from vectorsvc.cli import bootstrap_dev_workspace, main
from vectorsvc.config import Settings
from vectorsvc.db.database import Database
from vectorsvc.workspaces.service import DEV_WORKSPACE, find_workspace


def balance(settings: Settings, name: str) -> int:
    db = Database(settings.resolved_database_url)
    try:
        with db.session() as session:
            workspace = find_workspace(session, name=name)
            assert workspace is not None
            return billing.get_wallet(session, workspace_id=workspace.id).balance
    finally:
        db.close()


def test_topup_adds_exact_credits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    assert main(["workspace", "create", "acme", "--data-dir", data]) == 0
    args = ["wallet", "topup", "--workspace", "acme", "--data-dir", data]
    assert main([*args, "--credits", "100"]) == 0
    assert main([*args, "--credits", "0.25", "--note", "promo"]) == 0
    out = capsys.readouterr().out
    assert "by 0.25 credits; balance: 100.25 credits" in out
    assert balance(Settings(data_dir=Path(data)), "acme") == 100_250_000


@pytest.mark.parametrize("credits", ["0", "-5", "1.0000001", "lots"])
def test_topup_refuses_a_bad_amount(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], credits: str
) -> None:
    data = str(tmp_path / "data")
    assert main(["workspace", "create", "acme", "--data-dir", data]) == 0
    args = ["wallet", "topup", "--workspace", "acme", "--credits", credits, "--data-dir", data]
    assert main(args) == 2
    assert "credits" in capsys.readouterr().err


def test_a_note_longer_than_the_ledger_keeps_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # PostgreSQL refuses text longer than its column where SQLite keeps it: refused first,
    # on both, naming the limit; the exact limit still goes through.
    data = str(tmp_path / "data")
    assert main(["workspace", "create", "acme", "--data-dir", data]) == 0
    args = ["wallet", "topup", "--workspace", "acme", "--credits", "1", "--data-dir", data]
    with pytest.raises(SystemExit) as refused:
        main([*args, "--note", "n" * 201])
    assert refused.value.code == 2
    assert "--note: at most 200 characters, got 201" in capsys.readouterr().err
    assert balance(Settings(data_dir=Path(data)), "acme") == 0
    assert main([*args, "--note", "n" * 200]) == 0
    assert balance(Settings(data_dir=Path(data)), "acme") == 1_000_000


def test_topup_of_an_unknown_workspace_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["wallet", "topup", "--workspace", "ghost", "--credits", "5"]
    assert main([*args, "--data-dir", str(tmp_path)]) == 2
    assert "ghost" in capsys.readouterr().err


def test_the_dev_workspace_starts_with_credits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VECTORSVC_DEV_STARTING_CREDITS", "42.5")
    settings = Settings(data_dir=tmp_path)
    db = Database(settings.resolved_database_url)
    db.migrate()
    assert bootstrap_dev_workspace(settings, db) is not None
    db.close()
    assert balance(settings, DEV_WORKSPACE) == 42_500_000


def test_starting_credits_default_to_1000_and_must_be_exact() -> None:
    assert Settings().dev_starting_credits == 1000
    assert Settings().default_workspace_credits == 0
    with pytest.raises(ValueError):
        Settings(dev_starting_credits="0.0000001")
    with pytest.raises(ValueError):
        Settings(default_workspace_credits=-1)
