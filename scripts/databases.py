"""A database of the tests' or benchmarks' own, new and empty, on whichever server its URL names."""

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL

from creditrelay.schema.database import with_driver


def recreate(url: URL | str) -> URL:
    """Drop the database ``url`` names and create it again, empty (a SQLite file: delete it); the URL with
    its driver. MySQL's gets utf8mb4; PostgreSQL's UTF-8 from ``template0``."""
    url = with_driver(sa.make_url(url))
    backend = url.get_backend_name()
    if backend == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{url.database}{suffix}").unlink(missing_ok=True)
        return url
    name = url.database
    if backend == "mysql":
        admin = sa.create_engine(url._replace(database=None))
        statements = [
            f"DROP DATABASE IF EXISTS `{name}`",
            f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        ]
    else:
        admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        statements = [
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0",
        ]
    try:
        with admin.connect() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
    finally:
        admin.dispose()
    return url
