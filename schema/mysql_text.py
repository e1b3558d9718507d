"""MySQL's side of running statements as text: values written in as literals by pymysql's own escaping,
and the check that an ``INSERT IGNORE`` skipped nothing but duplicates (``schema.statements`` runs them)."""

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from pymysql.constants import SERVER_STATUS
from pymysql.converters import escape_string


def only_duplicates_ignored(cursor: Any, given: int) -> Any:
    """The cursor of a MySQL ``INSERT IGNORE`` of ``given`` rows, if it skipped nothing but duplicates and
    stored every value whole.

    ``IGNORE`` turns every error into a warning: a value too long is cut, one out of range clamped, a row
    failing a foreign key or a check skipped. With no warning nothing happened; otherwise the warnings are
    read (one round trip, only then: sessions keep all of them, ``max_error_count``), and the statement is
    refused — its transaction must roll back, as rows were written — unless every skipped row was a
    duplicate (1062) and no warning says a value was changed. Notes about anything else pass."""
    if not cursor.warning_count:
        return cursor
    warnings = cursor.connection.show_warnings()
    codes = [int(code) for _level, code, _message in warnings]
    skipped = given - max(int(cursor.rowcount), 0)
    altered = [f"{code} {message}" for _level, code, message in warnings if int(code) in _ALTERED]
    if altered or codes.count(_DUPLICATE) != skipped:
        problem = "; ".join(altered) or f"{skipped} rows skipped, {codes.count(_DUPLICATE)} of them duplicates"
        raise sa.exc.DataError("INSERT IGNORE", None, ValueError(f"a value was not stored whole: {problem}"))
    return cursor


_DUPLICATE = 1062
# Warnings an IGNORE makes of errors that change or drop a row: data truncated or too long, out of range,
# an incorrect value, NULL into NOT NULL, a foreign key or a check constraint failing.
_ALTERED = {1265, 1406, 1264, 1366, 1292, 1048, 1452, 1451, 4025, 3819}


def inline(driver: Any, sql: str, params: Sequence[Any]) -> str:
    """``sql`` with its "%s" parameters written in as pymysql would write them."""
    literal = literal_for(driver)
    return sql % tuple([literal(value) for value in params])


def literal_for(driver: Any) -> Callable[[Any], str]:
    """How to write a value as a literal on this connection: pymysql's own ``escape`` when the session has
    ``NO_BACKSLASH_ESCAPES``, else its escaping table with one call per value, each distinct text escaped
    once per statement."""
    if driver.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES:
        return lambda value: str(driver.escape(value))

    written: dict[str, str] = {}  # a batch repeats its timestamps, statuses, sources and models

    def literal(value: Any) -> str:
        kind = type(value)
        if kind is str:
            text = written.get(value)
            if text is None:
                text = written[value] = "'" + escape_string(value) + "'"
            return text
        if kind is int:
            return str(value)
        if value is None:
            return "NULL"
        return str(driver.escape(value))

    return literal
