"""Replicas on one database: funds reserved in it, background runs leased from it.

Funds: a wallet's `reserved` total and one row per reservation.

Several service processes on one database reserve against the same wallet, so a reservation
is a conditional update of `wallets.reserved` (never above the balance) and a row in
`fund_reservations` that says who holds it until when: a row left by a process that died
expires and is given back by any other (`billing.reservations`).

Background runs: a lease (`lease_owner`, `lease_expires_at`) says which process works on a
run; one that dies lets its lease expire and another takes the run up (`runs.leases`). The
run's items move from a file on one process's disk into `background_run_inputs`, so that
any process can read them.

Rate limits and sign-in lockouts: one row per key, so that replicas share each budget.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("wallets") as batch:
        batch.add_column(sa.Column("reserved", sa.BigInteger(), nullable=False, server_default="0"))
        batch.create_check_constraint(
            "ck_wallets_reserved_within_balance", "reserved >= 0 AND reserved <= balance"
        )
    op.create_table(
        "fund_reservations",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column(
            "workspace_id",
            sa.String(40),
            sa.ForeignKey("workspaces.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        # NULL: held until its holder gives it back (a queued background run's funds).
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount >= 0", name="ck_fund_reservations_amount_not_negative"),
    )
    op.create_index("ix_fund_reservations_expires_at", "fund_reservations", ["expires_at"])
    op.create_index("ix_fund_reservations_workspace_id", "fund_reservations", ["workspace_id"])
    with op.batch_alter_table("background_runs") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(80), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "background_run_inputs",
        sa.Column(
            "run_id",
            sa.String(40),
            sa.ForeignKey("background_runs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("items", sa.JSON(), nullable=False),
    )

    # Rate limits and sign-in lockouts every replica shares (`auth.shared_limits`).
    op.create_table(
        "rate_limits",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("tat", sa.Float(), nullable=False),
        sa.Column("allowed", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "sign_in_lockouts",
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sign_in_lockouts")
    op.drop_table("rate_limits")
    op.drop_table("background_run_inputs")
    with op.batch_alter_table("background_runs") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
    op.drop_index("ix_fund_reservations_workspace_id", "fund_reservations")
    op.drop_index("ix_fund_reservations_expires_at", "fund_reservations")
    op.drop_table("fund_reservations")
    with op.batch_alter_table("wallets") as batch:
        batch.drop_constraint("ck_wallets_reserved_within_balance", type_="check")
        batch.drop_column("reserved")
