"""Wallets, usage records and ledger.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _workspace_fk() -> sa.Column[str]:
    return sa.Column(
        "workspace_id",
        sa.String(40),
        sa.ForeignKey("workspaces.id", ondelete="CASCADE"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "wallets",
        sa.Column(
            "workspace_id",
            sa.String(40),
            sa.ForeignKey("workspaces.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("balance", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("balance >= 0", name="ck_wallets_balance_not_negative"),
    )
    op.create_table(
        "usage_records",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _workspace_fk(),
        sa.Column("run_id", sa.String(64), nullable=False, unique=True),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("items", sa.BigInteger, nullable=False),
        sa.Column("queries", sa.BigInteger, nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("unit_price", sa.BigInteger, nullable=False),
        sa.Column("cost", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_usage_records_workspace_created", "usage_records", ["workspace_id", "created_at"]
    )
    op.create_table(
        "wallet_ledger",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _workspace_fk(),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("balance_after", sa.BigInteger, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("note", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_wallet_ledger_workspace_id", "wallet_ledger", ["workspace_id"])


def downgrade() -> None:
    op.drop_index("ix_wallet_ledger_workspace_id", "wallet_ledger")
    op.drop_table("wallet_ledger")
    op.drop_index("ix_usage_records_workspace_created", "usage_records")
    op.drop_table("usage_records")
    op.drop_table("wallets")
