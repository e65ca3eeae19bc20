"""Model releases: the live release of each model, its rollback target and the background
migration to a new release, with each namespace's progress (resumable across restarts).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_releases",
        sa.Column("model", sa.String(100), primary_key=True),
        sa.Column("live_release", sa.String(64), nullable=False),
        sa.Column("previous_release", sa.String(64), nullable=True),
        sa.Column("target_release", sa.String(64), nullable=True),
        sa.Column("blocked_release", sa.String(64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("done", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "release_migration_scopes",
        sa.Column("model", sa.String(100), primary_key=True),
        sa.Column("tenant_key", sa.String(200), primary_key=True),
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("cursor", sa.String(64), nullable=True),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("done", sa.BigInteger(), nullable=False),
        sa.Column("finished", sa.Boolean(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("release_migration_scopes")
    op.drop_table("model_releases")
