"""``creditrelay gateway check``: is the configured gateway set up as creditrelay needs it? One line per
check, in a few seconds (short timeouts, no retries: ``billing.gateways.answers`` says what a refusal
means and which setting to fix). A check that cannot run because an earlier one failed is skipped.

new-api: it answers at ``NEW_API_BASE_URL`` (``/api/status``); the access token authenticates
(``/api/user/self``) and its account has the role the mode needs (admin, 10, or root, 100: the log API and
``users`` mode are admin-only); that account is ``NEW_API_USER_ID``; the consume log reads
(``/api/log/``). LiteLLM: the proxy answers at ``LITELLM_BASE_URL`` and the master key reads its keys.
"""

from collections.abc import Callable
from dataclasses import dataclass

from creditrelay.billing.gateways.litellm import LiteLLMClient
from creditrelay.billing.gateways.newapi import CONSUME, NewApiClient
from creditrelay.schema.errors import UpstreamError

ADMIN_ROLE = 10  # new-api: 1 common user, 10 admin, 100 root
TIMEOUT = 3.0  # seconds per call: the whole check stays within a few seconds


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: skipped, an earlier check failed
    detail: str


@dataclass(frozen=True)
class CheckReport:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    json_properties = ("ok",)


def _run(checks: list[Check], name: str, step: Callable[[], str]) -> bool:
    """Run one check unless an earlier one failed; whether it passed."""
    if checks and not all(c.ok for c in checks):
        checks.append(Check(name, None, "skipped: an earlier check failed"))
        return False
    try:
        checks.append(Check(name, True, step()))
    except UpstreamError as error:
        checks.append(Check(name, False, str(error)))
        return False
    return True


def check_newapi(base_url: str, token: str, user_id: str, mode: str, quota_per_credit: int) -> list[Check]:
    """The new-api checks, with the enforcement ``mode`` (off, tokens, users) and the poll's rate."""
    client = NewApiClient(base_url, token, user_id, timeout=TIMEOUT)
    checks: list[Check] = []
    account: dict[str, object] = {}

    def answers() -> str:
        status = client.status()
        version = status.get("version") or "version not said"
        per_unit = status.get("quota_per_unit")
        rate = ""
        if isinstance(per_unit, int | float) and per_unit > 0:
            rate = f"; QuotaPerUnit {per_unit:g}: POLL_QUOTA_PER_CREDIT={quota_per_credit} makes 1 USD"
            rate += f" {per_unit / quota_per_credit:g} credits"
        return f"new-api answers at {base_url} ({version}{rate})"

    def authenticates() -> str:
        account.update(client.own_account())
        role = account.get("role")
        needed = "admin (10) or root (100): the consume log"
        needed += " and POST /api/user/manage are" if mode == "users" else " is"
        needed += " admin-only"
        if not isinstance(role, int) or role < ADMIN_ROLE:
            raise UpstreamError(
                f"NEW_API_ADMIN_TOKEN belongs to {account.get('username')!r}, role {role}: it needs {needed}"
                " (use an admin's access token)"
            )
        return f"NEW_API_ADMIN_TOKEN authenticates as {account.get('username')!r} (id {account['id']}, role {role})"

    def is_the_account() -> str:
        if str(account.get("id")) != user_id:
            raise UpstreamError(
                f"NEW_API_USER_ID is {user_id}, but the access token is account {account.get('id')}'s:"
                f" set NEW_API_USER_ID={account.get('id')}"
            )
        suffix = " (its own tokens are what tokens mode can disable)" if mode == "tokens" else ""
        return f"NEW_API_USER_ID {user_id} is the token's account{suffix}"

    def log_reads() -> str:
        page = client.consume_logs(0, 0, 1, 1)
        return f"the consume log reads (type {CONSUME}: {page.total} rows)"

    try:
        _run(checks, "reach", answers)
        _run(checks, "token", authenticates)
        _run(checks, "account", is_the_account)
        _run(checks, "log", log_reads)
    finally:
        client.close()
    return checks


def check_litellm(base_url: str, master_key: str) -> list[Check]:
    client = LiteLLMClient(base_url, master_key, timeout=TIMEOUT)
    checks: list[Check] = []

    def answers() -> str:
        client.alive()
        return f"LiteLLM answers at {base_url}"

    def reads_keys() -> str:
        return f"LITELLM_MASTER_KEY reads the proxy's keys ({client.can_read_keys()} keys)"

    try:
        _run(checks, "reach", answers)
        _run(checks, "master key", reads_keys)
    finally:
        client.close()
    return checks
