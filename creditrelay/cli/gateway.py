"""``gateway check``: whether the configured gateway is set up as creditrelay needs it, one line per
check (``billing.gateways.check``); ``enforce`` and ``serve`` run it too, so that a gateway nobody can
reach is said, not taken for "nothing to do"."""

import argparse
import json
from typing import TYPE_CHECKING, Any

from creditrelay.cli.base import command
from creditrelay.schema.errors import SettingsError
from creditrelay.schema.shapes import to_json
from creditrelay.settings import Settings

if TYPE_CHECKING:
    from creditrelay.billing.gateways.check import CheckReport

NO_GATEWAY = (
    "no gateway is configured: set NEW_API_BASE_URL, NEW_API_ADMIN_TOKEN and NEW_API_USER_ID (new-api), or"
    " LITELLM_BASE_URL and LITELLM_MASTER_KEY (LiteLLM)"
)


def configured(settings: Settings) -> bool:
    return settings.new_api_base_url is not None or settings.litellm_base_url is not None


def check_gateways(settings: Settings, *, litellm_only: bool = False, new_api_only: bool = False) -> "CheckReport":
    """Every configured gateway's checks (or only the one named), new-api first."""
    from dataclasses import replace

    from creditrelay.billing.gateways.check import CheckReport, check_litellm, check_newapi

    checks = []
    new_api = (settings.new_api_base_url, settings.new_api_admin_token, settings.new_api_user_id)
    if not litellm_only and new_api[0] and new_api[1] and new_api[2]:
        found = check_newapi(
            new_api[0], new_api[1], new_api[2], settings.gateway_enforcement, settings.poll_quota_per_credit
        )
        checks += [replace(c, name=f"new-api {c.name}") for c in found]
    if not new_api_only and settings.litellm_base_url and settings.litellm_master_key:
        found = check_litellm(settings.litellm_base_url, settings.litellm_master_key)
        checks += [replace(c, name=f"LiteLLM {c.name}") for c in found]
    return CheckReport(checks)


def render(report: "CheckReport") -> str:
    marks = {True: "ok  ", False: "FAIL", None: "skip"}
    lines = [f"{marks[c.ok]}  {c.name:<18} {c.detail}" for c in report.checks]
    lines.append("all checks passed" if report.ok else "the gateway is not set up as creditrelay needs it")
    return "\n".join(lines)


def cmd_gateway_check(args: argparse.Namespace, settings: Settings) -> int:
    if not configured(settings):
        raise SettingsError(NO_GATEWAY)
    report = check_gateways(settings)
    print(json.dumps(to_json(report)) if args.json else render(report))
    return 0 if report.ok else 1


def enforcement_gateway(settings: Settings) -> "CheckReport":
    """The checks of the gateway the enforcement mode tells to stop and resume."""
    litellm = settings.gateway_enforcement == "litellm"
    return check_gateways(settings, litellm_only=litellm, new_api_only=not litellm)


def register(commands: Any) -> None:
    gateway = command(commands, "gateway", cmd_gateway_check, "the gateway creditrelay talks to").add_subparsers(
        required=True, metavar="ACTION"
    )
    check = command(gateway, "check", cmd_gateway_check, "check the configured gateway's address, token and APIs")
    check.add_argument("--json", action="store_true", help="one JSON object instead of one line per check")
