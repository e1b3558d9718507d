"""Alembic environment: runs on the connection handed in by ``schema.migrate``."""

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlmodel.sql.sqltypes import AutoString

from creditrelay.schema.tables import metadata


def render_item(kind: str, item: Any, _context: AutogenContext) -> str | Literal[False]:
    """Render SQLModel's string type as plain SQLAlchemy, so migrations do not import sqlmodel."""
    if kind == "type" and isinstance(item, AutoString):
        return f"sa.String(length={item.length})"
    return False


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    compare_type=True,
    render_item=render_item,
)
with context.begin_transaction():
    context.run_migrations()
