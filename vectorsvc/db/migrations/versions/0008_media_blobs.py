"""Media blobs: one row per stored sha256, the lock that makes collecting them safe.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "media_blobs",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=False),
    )
    # Every blob a media row refers to today. Files on disk without a row (left by a crash)
    # are found by the collector's walk of the store.
    op.execute(
        "INSERT INTO media_blobs (sha256, size_bytes, created_at, last_used_at) "
        "SELECT sha256, MAX(size_bytes), MIN(created_at), MAX(created_at) "
        "FROM media GROUP BY sha256"
    )
    # The quota sums a workspace's open uploads by status.
    op.create_index(
        "ix_media_uploads_workspace_status", "media_uploads", ["workspace_id", "status"]
    )


def downgrade() -> None:
    op.drop_index("ix_media_uploads_workspace_status", "media_uploads")
    op.drop_table("media_blobs")
