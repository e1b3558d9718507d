"""The one command line: every option explained, mistakes in one line, the everyday commands, a database
that was never migrated named as such, and nothing heavy imported by a command that does not need it."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from creditrelay import __version__
from creditrelay.app import ATTEMPTS
from creditrelay.billing.polling import PollConfig
from creditrelay.cli import build_parser
from creditrelay.cli.outbox import DAY, DEFAULT_OUTBOX_URL, RETENTION_DAYS
from creditrelay.sender import outbox
from creditrelay.sender.relay import DEFAULT_RETENTION
from tests.support.cli import ok, run
from tests.support.database import Database
from tests.support.signing import SECRET, encode, usage_event

pytestmark = pytest.mark.slow  # each test starts the command line or a server as processes


def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += parsers(sub)
    return found


def test_every_command_and_option_says_what_it_is() -> None:
    """Each command has a description; each option and argument a help text (the --help a user reads)."""
    every = parsers(build_parser())
    assert len(every) > 25
    missing = [
        f"{parser.prog} {action.dest}"
        for parser in every
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction) and not action.help
    ]
    assert missing == []
    assert [parser.prog for parser in every if not parser.description] == []


def test_the_lightweight_copies_of_defaults_are_the_real_ones() -> None:
    assert PollConfig.attempts == ATTEMPTS
    assert DEFAULT_OUTBOX_URL == outbox.DEFAULT_OUTBOX_URL
    assert RETENTION_DAYS * DAY == DEFAULT_RETENTION


def test_version() -> None:
    result = run(None, "--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"creditrelay {__version__}")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("user", "create", "--email", "a@x.io", "--credits", "99999999999999999999"), "argument --credits:"),
        (("user", "create", "--email", "a b@x"), "not an email address: 'a b@x'"),
        (("key", "link", "-3", "--user", "1"), "argument REMOTE_KEY_ID: a gateway key id"),
        (("topup", "1", "12abc", "--reference", "r"), "argument AMOUNT: not a whole number"),
        (("adjust", "1", "30", "--reference", "r", "--reason", "x"), "30 is out of range"),
        (("serve", "--port", "70000"), "argument --port"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
    ],
)
def test_a_mistake_in_the_input_is_one_line_and_changes_nothing(
    database: Database, args: tuple[str, ...], says: str
) -> None:
    ok(database, "migrate")
    before = database.count("users")
    result = run(database, *args)
    assert result.returncode in (1, 2)
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert database.count("users") == before


def test_a_database_never_migrated_is_named_with_what_to_run(tmp_path: Path) -> None:
    """From a directory with no database, a command says so and creates nothing there."""
    result = run(None, "user", "list", cwd=tmp_path)
    assert result.returncode == 1
    assert "run `creditrelay migrate` first" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_empty_database_is_named_with_what_to_run(database: Database) -> None:
    revision = database.scalar("SELECT version_num FROM alembic_version")
    database.execute("DROP TABLE alembic_version")  # what a database creditrelay never migrated lacks
    try:
        result = run(database, "user", "show", "1")
    finally:  # the fixture's database serves the next test
        database.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        database.execute("INSERT INTO alembic_version VALUES (:v)", v=revision)
    assert result.returncode == 1
    assert "has no creditrelay tables: run `creditrelay migrate` first" in result.stderr


def test_everyday_commands(database: Database) -> None:
    """user list, key list/unlink, adjust (once per reference, may go below zero), replay."""
    ok(database, "migrate")
    first = ok(database, "user", "create", "--email", "a@example.com", "--credits", "100")
    second = ok(database, "user", "create", "--email", "b@example.com")
    listed = ok(database, "user", "list")["users"]
    assert [u["email"] for u in listed] == ["a@example.com", "b@example.com"]
    assert [u["id"] for u in ok(database, "user", "list", "--below", "1")["users"]] == [second["id"]]
    assert ok(database, "user", "list", "--after", str(first["id"]), "--limit", "1")["users"][0]["id"] == second["id"]

    ok(database, "key", "link", "17", "--user", "a@example.com")
    ok(database, "key", "link", "18", "--user", "b@example.com")
    assert ok(database, "key", "list", "--user", "a@example.com")["keys"] == [
        {"remoteKeyId": "17", "userId": first["id"], "email": "a@example.com", "automatic": False}
    ]
    assert ok(database, "key", "unlink", "18")["remoteKeyId"] == "18"
    assert [k["remoteKeyId"] for k in ok(database, "key", "list")["keys"]] == ["17"]
    again = run(database, "key", "unlink", "18")
    assert (again.returncode, again.stderr.strip()) == (1, "creditrelay: gateway key '18' is not linked")

    taken = ok(database, "adjust", "a@example.com", "-130", "--reference", "ticket-9", "--reason", "double top-up")
    assert (taken["balance"], taken["duplicate"]) == (-30, False)
    repeat = ok(database, "adjust", "a@example.com", "-130", "--reference", "ticket-9", "--reason", "double top-up")
    assert (repeat["balance"], repeat["duplicate"]) == (-30, True)
    assert database.scalar("SELECT type FROM credit_transactions WHERE reference = 'adjust:ticket-9'") == "adjustment"
    no_reason = run(database, "adjust", "a@example.com", "-1", "--reference", "t-10")
    assert no_reason.returncode == 2
    assert "--reason" in no_reason.stderr

    assert run(database, "replay", "nope").stderr.strip() == "creditrelay: no stored delivery 'nope'"


def test_replay_charges_a_failed_delivery_once_its_key_is_linked(database: Database) -> None:
    from creditrelay.billing.deliveries import deliver
    from creditrelay.schema.database import utc
    from creditrelay.schema.wire import parse_event
    from tests.support.receiver import add_user
    from tests.support.signing import encode, usage_event

    add_user(database.engine, key="1")
    event = parse_event(encode(usage_event("evt-late", cost=7, key=99)))
    [failed] = deliver(database.engine, [event], utc(1_767_225_600))
    assert failed.status.value == "unbillable"  # logged as failed: no user has that key yet
    ok(database, "key", "link", "99", "--user", "alice@example.com")
    assert ok(database, "replay", "evt-late")["status"] == "charged"
    assert database.count("usage_records") == 1
    assert ok(database, "replay", "evt-late")["status"] != "charged"
    assert database.count("usage_records") == 1


def test_options_go_where_a_user_puts_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    assert ok(None, "outbox", "status", "--outbox", url) == {"pending": 0, "delivered": 0, "dead": 0}
    assert ok(None, "outbox", "list", "--limit", "5", "--outbox", url) == {"events": []}


def test_send_finds_the_development_secret_as_serve_does(tmp_path: Path) -> None:
    """Run where `make run` keeps its secret, ``send`` signs with it (and fails only on delivery here)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dev-webhook-secret").write_text(SECRET + "\n")
    event = encode(usage_event("e1")).decode()
    result = run(
        None, "send", "http://127.0.0.1:9/api/webhooks/events", "-", "--attempts", "1", cwd=tmp_path, stdin=event
    )
    assert "WEBHOOK_SECRET" not in result.stderr
    assert "not delivered after 1 attempt" in result.stderr
    elsewhere = run(None, "send", "http://127.0.0.1:9/", "-", stdin=event)
    assert "WEBHOOK_SECRET is not set" in elsewhere.stderr


def test_account_commands_import_no_web_server(tmp_path: Path) -> None:
    """The command line's modules load what a command uses when it runs: a top-up and a listing run
    without loading uvicorn, Starlette's app machinery, alembic or the HTTP client."""
    url = f"sqlite:///{tmp_path / 'light.db'}"
    ok(None, "migrate", DATABASE_URL=url)
    ok(None, "user", "create", "--email", "a@example.com", DATABASE_URL=url)
    probe = (
        "import sys\nfrom creditrelay.cli import main\n"
        "main(['topup', '1', '5', '--reference', 'r'])\nmain(['user', 'list'])\n"
        "print(sorted({m for m in sys.modules if m.startswith(('uvicorn', 'alembic', 'httpx', "
        "'starlette.applications', 'starlette.routing', 'creditrelay.receiver.app'))}))"
    )
    env = {**os.environ, "DATABASE_URL": url}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert '"balance": 5' in out
