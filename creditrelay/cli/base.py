"""What every command shares: the parser that errs in one line, argument types that name what is wrong,
the database a command works on (refused, with what to run, when it was never migrated), and output."""

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from creditrelay.schema.database import utc
from creditrelay.schema.errors import CreditRelayError
from creditrelay.schema.money import MAX_AMOUNT as MAX_AMOUNT
from creditrelay.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from tqdm import tqdm

Handler = Callable[[argparse.Namespace, Settings], int]


class CommandError(CreditRelayError):
    """A command cannot do what was asked; printed on stderr, exit 1."""


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake in the command line is one line on stderr (exit 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def fail(message: str, code: int = 1) -> int:
    print(f"creditrelay: {message}", file=sys.stderr)
    return code


def emit(value: Any) -> int:
    """Print one JSON object on stdout (billing's types shaped as the API shapes them)."""
    from creditrelay.schema.shapes import to_json

    print(json.dumps(to_json(value)))
    return 0


def progress_bar(**options: Any) -> "tqdm[Any]":
    """A progress bar on a terminal for long runs; silent when stderr is not a terminal (cron, pipes)."""
    from tqdm import tqdm

    return tqdm(disable=not sys.stderr.isatty(), **options)


def counting(bar: "tqdm[Any]") -> Callable[[int], None]:
    """A ``progress`` callback that moves ``bar`` on by the count it is told."""

    def told(count: int) -> None:
        bar.update(count)

    return told


def command(parent: Any, name: str, handler: Handler, help_text: str) -> Parser:
    sub: Parser = parent.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".")
    sub.set_defaults(handler=handler)
    return sub


def ledger(settings: Settings) -> "Engine":
    """The ledger's database, refused with what to run when it was never migrated (rather than an SQL
    error naming a table, or a new empty SQLite file made in whatever directory the command ran in)."""
    import sqlalchemy as sa

    from creditrelay.app import open_ledger

    url = settings.database_url
    hint = f"run `creditrelay migrate` first (DATABASE_URL={url.render_as_string(hide_password=True)})"
    file = url.database if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") else None
    if file is not None and not Path(file).exists():
        raise CommandError(f"no database at {file} (relative to {Path.cwd()}): {hint}")
    engine = open_ledger(settings)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    except (sa.exc.OperationalError, sa.exc.ProgrammingError) as error:  # SQLite / MySQL, PostgreSQL
        orig = error.orig
        missing = (
            getattr(orig, "sqlstate", None) == "42P01"  # PostgreSQL: undefined table
            or (orig is not None and bool(orig.args) and orig.args[0] == 1146)  # MySQL: no such table
            or "no such table" in str(orig)  # SQLite
        )
        if not missing:
            raise
        raise CommandError(f"the database has no creditrelay tables: {hint}") from None
    return engine


def transaction(settings: Settings, work: "Callable[[Connection], Any]") -> int:
    from creditrelay.schema.transactions import run_transaction

    return emit(run_transaction(ledger(settings), work))


def now() -> datetime:
    """The time, naive UTC, as the tables keep it."""
    return utc(time.time())


def integer(low: int, high: int) -> Callable[[str], int]:
    """An argument type: a whole number in ``[low, high]``, refused by name otherwise."""

    def parse(text: str) -> int:
        stripped = text.strip()
        digits = stripped[1:] if stripped[:1] in "+-" else stripped
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 20:
            raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}")
        value = int(stripped)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value if len(digits) <= 20 else text} is out of range {low} to {high}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its message: "invalid integer value"
    return parse


def number(low: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text[:40]!r}") from None
        if not low <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be at least {low}")
        return value

    parse.__name__ = "number"
    return parse


def remote_key(text: str) -> str:
    key = text.strip()
    if not key or len(key) > 64 or key.startswith("-") or any(c.isspace() for c in key):
        raise argparse.ArgumentTypeError(f"a gateway key id is 1 to 64 characters, no spaces, not {text[:70]!r}")
    return key


def instant(text: str) -> datetime:
    """An ISO-8601 date/time (UTC unless it says otherwise), naive UTC as the tables keep it."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time (e.g. 2026-01-31T00:00:00Z): {text[:40]!r}") from None
    return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


def moment(text: str) -> int:
    """Unix seconds, or an ISO-8601 date/time (UTC unless it says otherwise)."""
    if text.isascii() and text.isdigit() and len(text) <= 12:
        return int(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("Unix seconds or an ISO-8601 time, e.g. 2026-01-31T00:00:00Z") from None
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())
