"""Workspaces: the unit of tenancy. Every stored thing belongs to exactly one."""

from __future__ import annotations

import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from vectorsvc.db.tables import Workspace
from vectorsvc.errors import Conflict, NotFound, ValidationFailed

NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
DEV_WORKSPACE = "dev"


def create_workspace(session: Session, *, name: str) -> Workspace:
    if not NAME_RULE.match(name):
        raise ValidationFailed(
            "workspace name must start with a letter or digit and contain only letters, "
            "digits, '.', '_' and '-' (at most 100 characters)",
            field="name",
            code="invalid_workspace_name",
        )
    if session.scalar(select(Workspace).where(Workspace.name == name)) is not None:
        raise Conflict(f"workspace {name!r} already exists", field="name", code="workspace_exists")
    workspace = Workspace(id=f"ws_{secrets.token_hex(8)}", name=name)
    session.add(workspace)
    session.flush()
    return workspace


def get_workspace_by_name(session: Session, *, name: str) -> Workspace:
    workspace = session.scalar(select(Workspace).where(Workspace.name == name))
    if workspace is None:
        raise NotFound(f"workspace {name!r} does not exist", field="workspace")
    return workspace


def find_workspace(session: Session, *, name: str) -> Workspace | None:
    return session.scalar(select(Workspace).where(Workspace.name == name))
