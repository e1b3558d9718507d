"""The `creditrelay` console script, run as an operator runs it."""

import json
from pathlib import Path

import pytest

from creditrelay.schema.migrate import head_revision
from tests.support.cli import ok, run
from tests.support.database import Database
from tests.support.signing import SECRET

pytestmark = pytest.mark.slow  # each test starts the command line or a server as processes


def test_account_commands_print_json(database: Database) -> None:
    """migrate, user create/show, key link and topup print one JSON object each."""
    assert ok(database, "migrate")["revision"] == head_revision()
    created = ok(
        database,
        "user",
        "create",
        "--email",
        "Ops@Example.com",
        "--name",
        "Ops",
        "--telegram-id",
        "42",
        "--credits",
        "500",
    )
    assert (created["email"], created["balance"], created["telegramId"]) == ("ops@example.com", 500, 42)
    assert ok(database, "user", "show", "ops@example.com")["id"] == created["id"]
    assert ok(database, "user", "show", str(created["id"]))["balance"] == 500
    assert ok(database, "key", "link", "7", "--user", "ops@example.com") == {
        "remoteKeyId": "7",
        "userId": created["id"],
        "email": "ops@example.com",
        "automatic": False,
    }
    first = ok(database, "topup", "ops@example.com", "250", "--reference", "order-9", "--reason", "paid")
    again = ok(database, "topup", "ops@example.com", "250", "--reference", "order-9")
    assert (first["balance"], first["duplicate"]) == (750, False)
    assert (again["balance"], again["duplicate"]) == (750, True)
    assert database.count("credit_transactions") == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("user", "show", "nobody@example.com"), "no user 'nobody@example.com'"),
        (("user", "create", "--email", "not-an-email"), "not an email address"),
        (("topup", "nobody@example.com", "5", "--reference", "r"), "no user"),
    ],
)
def test_account_errors_go_to_stderr_with_a_non_zero_exit(
    database: Database, args: tuple[str, ...], message: str
) -> None:
    """A command that cannot be done says why on stderr and exits 1, printing nothing on stdout."""
    result = run(database, *args)
    assert result.returncode == 1
    assert result.stdout == ""
    assert message in result.stderr


def test_a_second_user_with_the_same_email_is_refused(database: Database) -> None:
    """Emails are unique (case-insensitively)."""
    ok(database, "user", "create", "--email", "a@example.com")
    result = run(database, "user", "create", "--email", "A@example.com")
    assert result.returncode == 1
    assert "exists" in result.stderr


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "WEBHOOK_SECRET"),
        ({"WEBHOOK_SECRET": "too-short"}, "WEBHOOK_SECRET"),
        ({"WEBHOOK_SECRET": SECRET, "DATABASE_URL": "postgres://x/y"}, "DATABASE_URL"),
        ({"WEBHOOK_SECRET": SECRET, "ADMIN_TOKEN": "weak"}, "ADMIN_TOKEN"),
        ({"WEBHOOK_SECRET": SECRET, "NEW_API_BASE_URL": "http://gw"}, "NEW_API_ADMIN_TOKEN"),
        ({"WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"WEBHOOK_SECRET": SECRET, "POLL_INTERVAL": "often"}, "POLL_INTERVAL"),
        ({"WEBHOOK_SECRET": SECRET, "CREDIT_PACKAGES": "starter=1000:10.001:CNY"}, "CREDIT_PACKAGES"),
        ({"WEBHOOK_SECRET": SECRET, "EPAY_URL": "https://pay.example.com/submit.php"}, "EPAY_KEY"),
        ({"WEBHOOK_SECRET": SECRET, "WEBHOOK_WRITER": "fork"}, "WEBHOOK_WRITER"),
    ],
)
def test_serve_refuses_bad_settings_naming_the_variable(database: Database, env: dict[str, str], variable: str) -> None:
    """A missing or unusable setting stops serve at start with the variable's name, never its value."""
    result = run(database, "serve", env=env)
    assert result.returncode == 2
    assert variable in result.stderr
    for secret in ("WEBHOOK_SECRET", "ADMIN_TOKEN"):
        assert secret not in env or env[secret] not in result.stderr


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    """serve will not start on a schema that `migrate` has not brought up to date."""
    result = run(None, "serve", DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}", WEBHOOK_SECRET=SECRET)
    assert result.returncode == 1
    assert "creditrelay migrate" in result.stderr
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    [starting] = [json.loads(line) for line in lines if '"starting"' in line]  # what it serves, named first
    assert (starting["database"], starting["webhook_secret"]) == (f"sqlite:///{tmp_path}/empty.db", "WEBHOOK_SECRET")


def test_serve_warns_when_portal_links_are_signed_with_the_webhook_secret(tmp_path: Path) -> None:
    """Without PORTAL_SECRET serve says at start that whoever holds WEBHOOK_SECRET could sign portal links."""
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    warned = run(None, "serve", DATABASE_URL=url, WEBHOOK_SECRET=SECRET)
    assert "portal_secret_missing" in warned.stdout + warned.stderr
    quiet = run(None, "serve", DATABASE_URL=url, WEBHOOK_SECRET=SECRET, PORTAL_SECRET="p" * 32)
    assert "starting" in quiet.stdout + quiet.stderr
    assert "portal_secret_missing" not in quiet.stdout + quiet.stderr


def test_client_commands_print_credentials_once(database: Database) -> None:
    """client add prints the key and secret; list never does; rotate issues new ones; revoke retires them."""
    ok(database, "migrate")
    added = ok(database, "client", "add", "media_bot")
    assert set(added) == {"source", "api_key", "secret"}
    assert run(database, "client", "add", "media_bot").returncode == 1
    listed = ok(database, "client", "list")["clients"]
    assert [c["source"] for c in listed] == ["media_bot"]
    assert added["api_key"] not in json.dumps(listed)
    assert added["secret"] not in json.dumps(listed)
    refused = run(database, "client", "rotate", "media_bot", "--default-secret")
    assert (refused.returncode, "CREDIT_SYNC_SECRET" in refused.stderr) == (2, True)
    with_default = run(database, "client", "rotate", "media_bot", "--default-secret", CREDIT_SYNC_SECRET="d" * 40)
    rotated = json.loads(with_default.stdout)
    assert rotated["api_key"] != added["api_key"]
    assert rotated["secret"] is None
    assert ok(database, "client", "revoke", "media_bot") == {"source": "media_bot", "status": "revoked"}


def test_client_rights_are_given_changed_and_listed(database: Database) -> None:
    """client add takes --rights (by default every right but records:all), client rights changes them,
    client list shows them; an unknown right or client is refused, naming it."""
    ok(database, "migrate")
    ok(database, "client", "add", "shop")
    ok(database, "client", "add", "auditor", "--rights", "balance, records:all")
    listed = {c["source"]: c["rights"] for c in ok(database, "client", "list")["clients"]}
    assert listed == {"auditor": ["balance", "records:all"], "shop": ["balance", "records", "credit", "debit"]}
    assert ok(database, "client", "rights", "shop", "credit") == {"source": "shop", "rights": ["credit"]}
    assert ok(database, "client", "list")["clients"][1]["rights"] == ["credit"]
    unknown = run(database, "client", "add", "bank", "--rights", "balance,refund")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert "unknown right 'refund'" in unknown.stderr
    assert "unknown right 'deduct'" in run(database, "client", "rights", "shop", "deduct").stderr
    nobody = run(database, "client", "rights", "nobody", "credit")
    assert (nobody.returncode, nobody.stderr.strip()) == (1, "creditrelay: no client 'nobody'")
    assert [c["source"] for c in ok(database, "client", "list")["clients"]] == ["auditor", "shop"]


def test_serve_builds_its_app_with_startup_objects_frozen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` builds its app with the objects loaded at startup moved out of the collector's reach, so a
    full collection under load does not walk them (the p99 stalls `make bench` measured before)."""
    import gc

    from creditrelay.cli.server import asgi_app

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'frozen.db'}")
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    gc.unfreeze()
    try:
        asgi_app()
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("database", ["mysql", "postgresql"], indirect=True)
def test_a_wrong_password_is_the_database_unavailable_not_a_bug_of_ours(database: Database) -> None:
    """Credentials the server refuses: 'database unavailable', naming what it said, exit 1."""
    url = database.url.set(password="not-the-password", username="nobody_here")
    done = run(None, "user", "list", DATABASE_URL=url.render_as_string(hide_password=False))
    assert done.returncode == 1
    assert done.stderr.startswith("creditrelay: database unavailable:"), done.stderr


def test_a_statement_too_big_is_called_our_bug_not_an_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLite's 'too many SQL variables' (a statement of ours too big) is not 'database unavailable'."""
    from creditrelay.cli import accounts, main
    from creditrelay.schema.database import make_engine
    from creditrelay.schema.transactions import run_transaction

    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")

    def too_big(*_args: object) -> int:
        variables = ",".join("?" * 300_000)
        run_transaction(engine, lambda c: c.exec_driver_sql(f"SELECT 1 IN ({variables})", (1,) * 300_000))
        return 0

    monkeypatch.setattr(accounts, "cmd_user_list", too_big)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    assert main(["user", "list"]) == 1
    said = capsys.readouterr().err
    assert "database unavailable" not in said
    assert "a bug" in said


def test_users_are_mapped_to_gateway_users_and_the_account_creditrelay_calls_as_is_refused(database: Database) -> None:
    """`user create --gateway-user`, `user set-gateway-user ID|--clear`, shown by `user show`; a gateway user
    bills one user; NEW_API_USER_ID is nobody's."""
    gateway = {"NEW_API_BASE_URL": "http://127.0.0.1:9", "NEW_API_ADMIN_TOKEN": "t", "NEW_API_USER_ID": "1"}
    alice = ok(database, "user", "create", "--email", "alice@example.com", "--gateway-user", "42", **gateway)
    assert alice["gatewayUserId"] == "42"
    assert ok(database, "user", "show", "alice@example.com")["gatewayUserId"] == "42"
    ok(database, "user", "create", "--email", "bob@example.com")
    taken = run(database, "user", "set-gateway-user", "bob@example.com", "42")
    assert (taken.returncode, taken.stderr.strip()) == (
        1,
        "creditrelay: gateway user 42 already bills alice@example.com",
    )
    refused = run(database, "user", "set-gateway-user", "bob@example.com", "1", env=gateway)
    assert refused.returncode == 1
    assert "NEW_API_USER_ID" in refused.stderr
    assert ok(database, "user", "set-gateway-user", "alice@example.com", "--clear")["gatewayUserId"] is None
    bob = ok(database, "user", "set-gateway-user", "bob@example.com", "litellm-user-7")
    assert bob["gatewayUserId"] == "litellm-user-7"
    neither = run(database, "user", "set-gateway-user", "bob@example.com")
    assert (neither.returncode, "--clear" in neither.stderr) == (1, True)
