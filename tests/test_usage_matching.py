"""Seed 004's set-up end to end: the patched new-api sends webhooks without a request id and keeps its log,
`creditrelay poll` reads the log, and every usage is charged once — through the real server and the real
`poll` and `reconcile` commands, against a stand-in new-api that follows its wire format, on every
database."""

import json
import os
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from scripts.processes import CREDITRELAY
from tests.support.database import Database
from tests.support.fake_newapi import ADMIN_TOKEN, ADMIN_USER, FakeNewApi, fake_newapi
from tests.support.ledger import assert_ledger_consistent
from tests.support.receiver import Receiver, add_user
from tests.support.signing import SECRET, encode, seed_headers

OPENING = 100_000
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet")


@dataclass
class Usage:
    """One usage at the gateway: its log row, and the webhook the patched new-api sends for it (or not)."""

    name: str
    token: int
    model: str
    prompt: int
    completion: int
    at: int
    cost: int
    request_id: str  # "" for rows from before new-api had request ids
    webhook: str  # "early", "racing", "late" or "lost"
    skew: int  # seconds the webhook's timestamp is after the log row's

    def event(self) -> bytes:
        data = {"remoteKeyId": self.token, "model": self.model, "promptTokens": self.prompt,
                "completionTokens": self.completion, "totalTokens": self.prompt + self.completion,
                "creditCost": self.cost}  # fmt: skip
        return encode({"eventId": f"evt-{self.name}", "eventType": "usage", "timestamp": self.at + self.skew,
                       "data": data})  # fmt: skip


def plan(now: int) -> list[Usage]:
    rng = random.Random(16)
    usages = []
    for i in range(48):
        usages.append(
            Usage(
                f"u{i}",
                rng.choice((5, 6)),
                rng.choice(MODELS),
                100 + i,
                rng.randint(1, 400),
                now - 900 + i * 12,
                rng.randint(1, 90),
                f"req-{i}" if i % 2 else "",
                ("early", "racing", "late", "lost")[i % 4],
                rng.randint(0, 3),
            )
        )
    # two identical usages in the same second, both ways; three identical in the log with one webhook
    twin = Usage("twin-a", 5, "gpt-4o", 10, 10, now - 200, 5, "", "early", 0)
    usages += [twin, Usage(**{**twin.__dict__, "name": "twin-b"})]
    triple = Usage("triple-a", 6, "gpt-4o", 20, 20, now - 150, 8, "", "early", 1)
    usages += [triple] + [Usage(**{**triple.__dict__, "name": f"triple-{c}", "webhook": "lost"}) for c in "bc"]
    return usages


@dataclass
class Gateway:
    receiver: Receiver
    api: FakeNewApi
    database: Database

    def send(self, usage: Usage) -> httpx.Response:
        body = usage.event()
        return self.receiver.client.post("/api/webhooks/events", content=body, headers=seed_headers(body))

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        process = self.start(*args)
        stdout, stderr = process.communicate(timeout=120)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def start(self, *args: str) -> "subprocess.Popen[str]":
        env = {
            "DATABASE_URL": self.database.url.render_as_string(hide_password=False),
            "NEW_API_BASE_URL": self.api.url,
            "NEW_API_ADMIN_TOKEN": ADMIN_TOKEN,
            "NEW_API_USER_ID": ADMIN_USER,
            "WEBHOOK_SECRET": SECRET,
        }
        return subprocess.Popen(
            [CREDITRELAY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | env
        )

    def balance(self, email: str) -> int:
        return int(self.database.scalar("SELECT balance FROM users WHERE email = :e", e=email))


@pytest.fixture
def gateway(receiver: Receiver, database: Database) -> Iterator[Gateway]:
    add_user(database.engine, "five@example.com", credits=OPENING, key="5")
    add_user(database.engine, "six@example.com", credits=OPENING, key="6")
    with fake_newapi() as api:
        yield Gateway(receiver, api, database)


def test_every_usage_is_charged_once_however_it_arrives(gateway: Gateway) -> None:
    """Webhooks before the poll, racing it and hours after it, lost ones, request ids on half the log rows,
    webhooks 0-3 s after their rows, twins and triples: each usage charged exactly once, at its price, and
    `reconcile` finds nothing to say."""
    now = int(time.time())
    usages = plan(now)
    for usage in usages:
        gateway.api.add(usage.at, token_id=usage.token, quota=usage.cost, request_id=usage.request_id,
                        model=usage.model, prompt_tokens=usage.prompt, completion_tokens=usage.completion)  # fmt: skip
    for usage in usages:
        if usage.webhook == "early":
            assert gateway.send(usage).json()["duplicate"] is False

    racing = [u for u in usages if u.webhook == "racing"]
    poll = gateway.start("poll", "--since", str(now - 3600))
    for usage in racing:  # while the poll reads and bills the log
        assert gateway.send(usage).status_code == 200
        time.sleep(0.05)
    _, stderr = poll.communicate(timeout=120)
    assert poll.returncode == 0, stderr

    for usage in usages:
        if usage.webhook == "late":  # the sender retried for hours: the log row was charged meanwhile
            assert gateway.send(usage).json()["duplicate"] is True
    again = gateway.command("poll", "--since", str(now - 3600))
    assert again.returncode == 0, again.stderr

    for email, token in (("five@example.com", 5), ("six@example.com", 6)):
        spent = sum(u.cost for u in usages if u.token == token)
        assert gateway.balance(email) == OPENING - spent, email
    assert gateway.database.count("usage_records") == len(usages)
    assert_ledger_consistent(gateway.database)
    reconciled = gateway.command("reconcile", "--since", str(now - 3600))
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    assert "OK: no discrepancies" in reconciled.stdout


def test_reconcile_names_what_is_missing_extra_or_priced_differently(gateway: Gateway) -> None:
    """Before --fix: a log row with no usage here is missing, a webhook usage without a request id that no
    log row pairs with is extra, and a log row whose webhook usage is charged but not yet paired is neither.
    --fix charges the missing row once and pairs the other; the pair, priced 40 by its webhook and 45 by the
    log, is one usage charged 40, and a price mismatch."""
    now = int(time.time())
    priced = Usage("priced", 5, "gpt-4o", 40, 10, now - 300, 40, "", "early", 1)
    assert gateway.send(priced).status_code == 200
    gateway.api.add(priced.at, token_id=5, quota=45, model="gpt-4o", prompt_tokens=40, completion_tokens=10)
    gateway.api.add(now - 200, token_id=6, quota=11, request_id="never-sent", model="gpt-4o-mini")
    assert gateway.send(Usage("stray", 6, "gpt-4o", 1, 1, now - 100, 3, "", "early", 0)).status_code == 200

    def findings(*args: str) -> set[tuple[str, str, str | None]]:
        result = gateway.command("reconcile", "--since", str(now - 3600), "--json", *args)
        assert result.returncode == 1, result.stdout + result.stderr
        return {(f["kind"], f["subject"], f["user"]) for f in json.loads(result.stdout)["findings"]}

    assert findings() == {
        ("missing", "req:never-sent", "six@example.com"),
        ("extra", "evt:evt-stray", "six@example.com"),
    }
    assert findings("--fix") == {
        ("price_mismatch", "evt:evt-priced", "five@example.com"),
        ("extra", "evt:evt-stray", "six@example.com"),
    }
    assert gateway.balance("five@example.com") == OPENING - 40
    assert gateway.balance("six@example.com") == OPENING - 11 - 3
    assert_ledger_consistent(gateway.database)
