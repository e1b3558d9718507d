"""GATEWAY_ENFORCEMENT=litellm: the same durable intents, pushed as LiteLLM's /key/block and /key/unblock to a
fake proxy that answers as LiteLLM's does; read back with /key/info for reconcile."""

import json
from collections.abc import Iterator

import pytest

from creditrelay.billing.accounts import top_up
from creditrelay.billing.deliveries import deliver
from creditrelay.billing.drift import gateway_drift
from creditrelay.billing.enforcement import LITELLM, EnforceConfig, Enforcer
from creditrelay.billing.gateways.litellm import LiteLLMClient
from creditrelay.billing.rules import LedgerRules
from creditrelay.schema.errors import UpstreamError
from creditrelay.schema.wire import parse_event
from tests.support import cli
from tests.support.database import Database
from tests.support.fake_litellm import MASTER_KEY, MEMBER_KEY, FakeLiteLLM, fake_litellm
from tests.support.ledger import NOW, in_transaction, make_user
from tests.support.signing import encode, usage_event


@pytest.fixture
def proxy() -> Iterator[FakeLiteLLM]:
    with fake_litellm() as fake:
        yield fake


@pytest.fixture
def watched(database: Database) -> Database:
    database.rule(LedgerRules(enforce=True))
    return database


def enforcer(database: Database, proxy: FakeLiteLLM, master: str = MASTER_KEY) -> Enforcer:
    return Enforcer(database.engine, LiteLLMClient(proxy.url, master), EnforceConfig(LITELLM, wait=0.01))


def blocked(proxy: FakeLiteLLM) -> dict[str, bool]:
    return {token: bool(row["blocked"]) for token, row in proxy.keys.items()}


def test_running_out_blocks_the_users_keys_and_a_top_up_unblocks_them(watched: Database, proxy: FakeLiteLLM) -> None:
    first, second, other = proxy.add_key("sk-alice-1"), proxy.add_key("sk-alice-2"), proxy.add_key("sk-bob-1")
    alice = make_user(watched, "alice@example.com", 10, first, second)
    make_user(watched, "bob@example.com", 100, other)
    assert enforcer(watched, proxy).run_once().calls == 3  # linked keys take their users' state: served
    deliver(watched.engine, [parse_event(encode(usage_event("e1", cost=10, key=first)))], NOW)
    report = enforcer(watched, proxy).run_once()
    assert (report.applied, report.calls, report.failed) == (1, 2, 0)
    assert blocked(proxy) == {first: True, second: True, other: False}
    assert sorted(proxy.calls[-2:]) == sorted([("/key/block", first), ("/key/block", second)])  # called at once
    in_transaction(watched, lambda c: top_up(c, alice, 5, "order-1", NOW))
    assert enforcer(watched, proxy).run_once().calls == 2
    assert blocked(proxy) == {first: False, second: False, other: False}
    assert enforcer(watched, proxy).run_once().calls == 0  # nothing new to say


def test_refusals_are_recorded_and_tried_again_not_taken_for_done(watched: Database, proxy: FakeLiteLLM) -> None:
    """A wrong master key (401), a key LiteLLM does not hold (404) and a gateway key that is no key or hash
    (an alias: refused before calling) each fail their push with LiteLLM's words; the intent stays due."""
    known = proxy.add_key("sk-carol-1")
    make_user(watched, "carol@example.com", 0, known)
    report = enforcer(watched, proxy, master="sk-wrong").run_once()
    assert (report.failed, report.failed_calls) == (1, 1)
    assert "HTTP 401" in report.errors[0]
    watched.execute("UPDATE gateway_states SET nextAttemptAt = :t", t=NOW)
    report = enforcer(watched, proxy, master=MEMBER_KEY).run_once()  # a key that is no admin: FastAPI's words
    assert report.errors[0].endswith(
        f"{known}: LiteLLM refused the credentials (HTTP 403: Only proxy admins, team admins, or org admins can"
        " call /key/block.) — check LITELLM_MASTER_KEY"
    )
    watched.execute("DELETE FROM gateway_calls WHERE answer LIKE :a", a="%HTTP 403%")
    make_user(watched, "dan@example.com", 0, "f" * 64)  # a hash LiteLLM does not know
    make_user(watched, "erin@example.com", 0, "erins-alias")
    answers = dict(watched.rows("SELECT target, answer FROM gateway_calls WHERE ok = :no", no=False))
    assert answers == {
        f"key {known}": "LiteLLM refused the credentials (HTTP 401: Authentication Error, Invalid proxy server token"
        " passed.) — check LITELLM_MASTER_KEY"
    }
    watched.execute("UPDATE gateway_states SET nextAttemptAt = :t", t=NOW)  # due again now
    report = enforcer(watched, proxy).run_once()
    assert report.applied == 1  # carol, with the right key now
    answers = dict(watched.rows("SELECT target, answer FROM gateway_calls WHERE ok = :no", no=False))
    assert answers[f"key {'f' * 64}"] == "LiteLLM answered HTTP 404: Key not found."
    assert answers["key erins-alias"].startswith("not a LiteLLM key or key hash")
    assert blocked(proxy) == {known: True}


def test_a_nul_in_litellms_error_is_recorded_written_out(watched: Database, proxy: FakeLiteLLM) -> None:
    """A gateway's error message holding a NUL (which PostgreSQL cannot store) is recorded with it written
    out, and the push stays due: the enforcer's run goes on, on every database."""
    make_user(watched, "carol@example.com", 0, proxy.add_key("sk-carol-1"))
    proxy.failing = "database \x00 said no"
    report = enforcer(watched, proxy).run_once()
    assert (report.failed, report.failed_calls) == (1, 1)
    [(answer,)] = watched.rows("SELECT answer FROM gateway_calls WHERE ok = :no", no=False)
    assert answer == "LiteLLM answered HTTP 500: database \\u0000 said no"
    proxy.failing = None
    watched.execute("UPDATE gateway_states SET nextAttemptAt = :t", t=NOW)
    assert enforcer(watched, proxy).run_once().applied == 1


def test_reconcile_reads_each_keys_block_back(watched: Database, proxy: FakeLiteLLM) -> None:
    """A key unblocked by hand while its user is at zero is drift; one LiteLLM does not hold, or holds only
    as deleted, is a finding of its own (not drift: a fix could not change it)."""
    served, hand_unblocked = proxy.add_key("sk-frank-1"), proxy.add_key("sk-gina-1")
    gone = proxy.add_key("sk-frank-2")
    make_user(watched, "frank@example.com", 50, served, gone)
    make_user(watched, "gina@example.com", 0, hand_unblocked, "e" * 64)
    enforcer(watched, proxy).run_once()
    proxy.keys[hand_unblocked]["blocked"] = False
    proxy.delete_key(gone)
    client = LiteLLMClient(proxy.url, MASTER_KEY)
    found = {(d.finding.kind, d.finding.subject) for d in gateway_drift(watched.engine, client, LITELLM, 0)}
    assert found == {
        ("gateway_drift", f"key {hand_unblocked}"),
        ("gateway_unreadable", f"key {'e' * 64}"),
        ("gateway_unreadable", f"key {gone}"),
    }
    with pytest.raises(UpstreamError, match="HTTP 404: Key not found in database"):
        client.key_enabled("e" * 64)
    with pytest.raises(UpstreamError, match="deleted at LiteLLM"):
        client.key_enabled(gone)


def test_the_commands_enforce_and_reconcile_at_litellm(database: Database, proxy: FakeLiteLLM) -> None:
    """`creditrelay enforce` and `reconcile` as an operator runs them with GATEWAY_ENFORCEMENT=litellm; the
    mode without its two settings is refused by name."""
    key = proxy.add_key("sk-hana-1")
    env = {"GATEWAY_ENFORCEMENT": "litellm", "LITELLM_BASE_URL": proxy.url, "LITELLM_MASTER_KEY": MASTER_KEY}
    assert cli.run(database, "user", "create", "--email", "hana@example.com", env=env).returncode == 0
    assert cli.run(database, "key", "link", key, "--user", "hana@example.com", env=env).returncode == 0
    done = cli.run(database, "enforce", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["applied"] == 1
    assert blocked(proxy) == {key: True}  # no credits: suspended from the start
    proxy.keys[key]["blocked"] = False  # unblocked by hand at the proxy
    found = cli.run(database, "reconcile", "--json", env=env)
    assert found.returncode == 1, found.stderr
    assert [f["kind"] for f in json.loads(found.stdout)["findings"]] == ["gateway_drift"]
    assert json.loads(found.stdout)["accessChecked"] is True
    table = cli.run(database, "reconcile", env=env)
    assert "(gateway access checked)" in table.stdout.splitlines()[0]
    missing = cli.run(database, "enforce", env=env | {"LITELLM_MASTER_KEY": ""})
    assert missing.returncode == 2
    assert "GATEWAY_ENFORCEMENT=litellm needs LITELLM_BASE_URL and LITELLM_MASTER_KEY" in missing.stderr
