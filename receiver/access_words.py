"""What the admin pages say of a user's standing at the gateway — the truth of it, in each enforcement
state: "below the line" while enforcement is off (the gateway was never told anything), "suspended" only
once the gateway confirmed it, and a push not yet confirmed as pending, with what the gateway refused."""

from creditrelay.billing.access import Standing

SUSPEND = "suspend"
FLAG_TEXT = {  # a flag's words where its CSS name is not them
    "below-line": "below the line",
    "suspension-pending": "suspension pending",
    "suspension-failing": "suspension failing",
    "resumption-pending": "resumption pending",
}


def access_flag(enforcement: str, below_line: bool, standing: Standing | None) -> str | None:
    """The one flag of a user's standing at the gateway, or None (served, as far as anyone knows)."""
    if enforcement == "off" or standing is None:
        return "below-line" if below_line else None
    if standing.desired == SUSPEND:
        if not standing.pending:
            return "suspended"
        return "suspension-failing" if standing.last_error else "suspension-pending"
    if standing.pending:
        return "resumption-pending"
    return "below-line" if below_line else None


def access_sentence(
    enforcement: str, below_line: bool, suspend_at: int, standing: Standing | None, *, has_targets: bool
) -> str:
    """The user page's sentence about the gateway; ``has_targets``: the user has something the mode can
    switch off (a key in ``tokens``/``litellm`` mode, a gateway user id in ``users`` mode)."""
    line = f"at or below SUSPEND_AT_BALANCE ({suspend_at:,})"
    if enforcement == "off":
        if below_line:
            return (
                f"Below the line: the balance is {line}, but gateway enforcement is off (GATEWAY_ENFORCEMENT), so"
                " the gateway was never told to stop this user and still serves them."
            )
        return "Gateway enforcement is off (GATEWAY_ENFORCEMENT): the gateway is never told to stop this user."
    what = "no gateway user id is set" if enforcement == "users" else "no gateway key bills this user"
    if standing is None:
        if below_line:
            return (
                f"Below the line ({line}), but the gateway was never told: `creditrelay reconcile --fix` queues"
                " the suspension."
            )
        return "Served by the gateway: it was never told to stop this user."
    action = "Suspension" if standing.desired == SUSPEND else "Resumption"
    if standing.pending:
        if standing.last_error:
            return f"{action} pending — the gateway refused: {standing.last_error}"
        return f"{action} pending — waiting for the gateway to confirm it."
    if standing.desired != SUSPEND:
        return "Served by the gateway (its last resumption was confirmed)."
    if not has_targets:
        return f"Suspended, but nothing at the gateway was switched off: {what} yet (it is, once there is one)."
    return "Suspended at the gateway: the gateway confirmed it."
