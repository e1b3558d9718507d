"""What a gateway's answer means, said the same way by every command (``poll``, ``reconcile``,
``enforce``, ``gateway check``, ``serve``): the gateway, the URL it was reached at and the setting to fix.

A refused connection, a name that does not resolve, a 401/403 and a 404 are ``GatewaySetupError``s: the
set-up is wrong, and retrying does not help, so they are never retried. Anything else (a timeout, a 5xx,
a refusal in the body) is an ``UpstreamError`` that may pass.
"""

from dataclasses import dataclass

import httpx

from creditrelay.schema.errors import GatewaySetupError, UpstreamError


@dataclass(frozen=True)
class Gateway:
    """Who is called, and the settings that say where and as whom."""

    name: str  # new-api, LiteLLM
    url_setting: str  # NEW_API_BASE_URL
    credential_settings: str  # NEW_API_ADMIN_TOKEN and NEW_API_USER_ID


NEW_API = Gateway("new-api", "NEW_API_BASE_URL", "NEW_API_ADMIN_TOKEN and NEW_API_USER_ID")
LITELLM = Gateway("LiteLLM", "LITELLM_BASE_URL", "LITELLM_MASTER_KEY")


def unreachable(gateway: Gateway, url: httpx.URL, error: httpx.TransportError) -> UpstreamError:
    """No answer at ``url``: said with the cause (refused, unknown name, timeout) and the setting."""
    where = f"{url.scheme}://{url.netloc.decode()}"
    said = str(error) or type(error).__name__
    if isinstance(error, httpx.TimeoutException):
        return UpstreamError(f"{gateway.name} at {where} did not answer in time ({type(error).__name__})")
    lowered = said.lower()
    if "name or service not known" in lowered or "nodename nor servname" in lowered or "errno -2" in lowered:
        cause = "its host name does not resolve"
    elif "refused" in lowered:
        cause = "nothing listens there (connection refused)"
    elif isinstance(error, httpx.ConnectError):
        cause = f"cannot connect ({said[:120]})"
    else:
        return UpstreamError(f"{gateway.name} at {where} unreachable: {said[:160]}")
    return GatewaySetupError(f"{gateway.name} at {where}: {cause} — check {gateway.url_setting}")


def refused(gateway: Gateway, response: httpx.Response, message: str | None = None) -> UpstreamError:
    """An HTTP status that is not 200, as what it means for the set-up."""
    status, url = response.status_code, response.request.url
    said = f": {message[:160]}" if message else ""
    if status in (401, 403):
        return GatewaySetupError(
            f"{gateway.name} refused the credentials (HTTP {status}{said}) — check {gateway.credential_settings}"
        )
    if status == 404:
        return GatewaySetupError(
            f"{gateway.name} has no {url.path} at {url.scheme}://{url.netloc.decode()} (HTTP 404) — check"
            f" {gateway.url_setting} (the gateway's own address, without /api)"
        )
    return UpstreamError(f"{gateway.name} answered HTTP {status}{said}")
