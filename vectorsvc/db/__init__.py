"""Metadata storage: SQLAlchemy 2 models, Alembic migrations, one `Database` handle."""

from vectorsvc.db.database import Database
from vectorsvc.db.tables import ApiKey, Base, Workspace

__all__ = ["ApiKey", "Base", "Database", "Workspace"]
