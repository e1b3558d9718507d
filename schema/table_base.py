"""What every table shares: SQLModel's metadata with the project's constraint names and exact collation, and
a field whose SQL column has a name of its own (the seed's camelCase)."""

from typing import Any

from sqlmodel import Field, SQLModel

from creditrelay.schema.database import register_exact_collation

metadata = SQLModel.metadata
register_exact_collation(metadata)
metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}


def column(name: str, **kwargs: Any) -> Any:
    """A SQLModel field whose SQL column is called ``name``."""
    return Field(sa_column_kwargs={"name": name}, **kwargs)
