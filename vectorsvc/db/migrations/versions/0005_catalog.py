"""Knowledge-base catalog.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kb_catalog",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "workspace_id",
            sa.String(40),
            sa.ForeignKey("workspaces.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("collection", sa.String(200), nullable=False),
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("point_count", sa.BigInteger, nullable=False),
        sa.Column("avg_payload_bytes", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_write_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("workspace_id", "model", "scope", name="uq_kb_catalog_ns"),
    )
    op.create_index("ix_kb_catalog_workspace_id", "kb_catalog", ["workspace_id"])


def downgrade() -> None:
    op.drop_index("ix_kb_catalog_workspace_id", "kb_catalog")
    op.drop_table("kb_catalog")
