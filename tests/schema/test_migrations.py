"""The alembic migrations build exactly the schema the models describe, on both databases."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from schema.migrate import head_revision, is_current, upgrade
from schema.tables import metadata
from tests.support.database import Database


def test_migrated_schema_matches_the_models(database: Database) -> None:
    """After `migrate`, autogenerate finds nothing to change, and upgrading again is a no-op."""
    assert is_current(database.engine)
    upgrade(database.engine)
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
    assert head_revision() is not None
