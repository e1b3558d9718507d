"""The portal's commands as an operator runs them, on every database: ``portal link`` prints a path (and a
URL with PUBLIC_BASE_URL) that the signing settings accept, ``portal revoke`` ends it, ``statement``
streams a balanced month (CSV and JSON, one member or everyone), ``user transactions`` pages back; bad
input is one line on stderr."""

import csv
import io
import json
import time

from creditrelay.billing.portal import member_of
from creditrelay.schema.portal_tokens import portal_key
from tests.support.cli import ok, run
from tests.support.database import Database

SECRET = "portal-cli-secret-portal-cli-secret-0001"


def test_links_statements_and_transactions(database: Database) -> None:
    env = {"WEBHOOK_SECRET": SECRET}
    user = ok(database, "user", "create", "--email", "ann@example.com", "--credits", "500", **env)
    ok(database, "topup", "ann@example.com", "250", "--reference", "order-1", **env)
    ok(database, "adjust", "ann@example.com", "-50", "--reference", "fix-1", "--reason", "oops", **env)
    link = ok(database, "portal", "link", "ann@example.com", "--days", "3", **env)
    assert set(link) == {"path", "expiresAt"}
    token = link["path"].removeprefix("/portal/")
    with database.engine.connect() as connection:
        assert member_of(connection, (portal_key(SECRET.encode()),), token, time.time()) == user["id"]
    other = ok(database, "portal", "link", str(user["id"]), **env, PUBLIC_BASE_URL="https://billing.example.com/")
    assert other["url"] == "https://billing.example.com" + other["path"]
    ended = ok(database, "portal", "revoke", "ann@example.com", **env)
    assert ended == {"userId": user["id"], "email": "ann@example.com", "revoked": True}
    with database.engine.connect() as connection:
        assert member_of(connection, (portal_key(SECRET.encode()),), token, time.time()) is None

    month = time.strftime("%Y-%m", time.gmtime())
    statement = run(database, "statement", "--month", month, "--user", "ann@example.com", env=env)
    assert statement.returncode == 0, statement.stderr
    rows = list(csv.DictReader(io.StringIO(statement.stdout)))
    assert [r["type"] for r in rows] == ["opening balance", "opening", "topup", "adjustment", "closing balance"]
    assert int(rows[0]["balance"]) + sum(int(r["amount"]) for r in rows[1:-1]) == int(rows[-1]["balance"]) == 700
    answer = json.loads(run(database, "statement", "--month", month, "--user", "ann@example.com", "--format",
                            "json", env=env).stdout)  # fmt: skip
    assert (answer["opening"], answer["closing"], len(answer["transactions"])) == (0, 700, 3)
    everyone = json.loads(run(database, "statement", "--month", month, "--format", "json", env=env).stdout)
    assert everyone["totals"] == {"opening": 0, "creditsIn": 750, "usage": 0, "corrections": -50, "closing": 700}

    first = ok(database, "user", "transactions", "ann@example.com", "--limit", "2", **env)
    assert [t["type"] for t in first["transactions"]] == ["adjustment", "topup"]
    rest = ok(database, "user", "transactions", "ann@example.com", "--before", str(first["older"]), **env)
    assert [t["type"] for t in rest["transactions"]] == ["opening"]
    assert rest["older"] is None


def test_bad_input_is_one_line_on_stderr(database: Database) -> None:
    env = {"WEBHOOK_SECRET": SECRET}
    ok(database, "user", "create", "--email", "ann@example.com", **env)
    for args, said in (
        (("portal", "link", "ann@example.com", "--days", "366"), "out of range 1 to 365"),
        (("portal", "link", "nobody@example.com"), "no user 'nobody@example.com'"),
        (("statement", "--month", "2026-13"), "month: a month as YYYY-MM"),
        (("statement", "--month", "2026-11", "--format", "xml"), "invalid choice"),
    ):
        result = run(database, *args, env=env)
        assert result.returncode != 0, args
        assert said in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr
    unsigned = run(database, "portal", "link", "ann@example.com")
    assert unsigned.returncode == 2
    assert "PORTAL_SECRET (or WEBHOOK_SECRET) is not set" in unsigned.stderr
