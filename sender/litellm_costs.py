"""A LiteLLM call's worst-case cost in credits, before it is made: its input tokens (``litellm.token_counter``)
at the model's input price, plus ``max_tokens`` (or ``max_completion_tokens``, else the model's maximum
output) at its output price, from LiteLLM's own cost map, times ``CREDITS_PER_USD``, rounded up. ``None``
when the call cannot be priced so (a model the map does not know, no messages, no price): the pre-call
hook then asks the allowance instead of holding."""

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import litellm

from creditrelay.schema.money import MAX_AMOUNT


def _price(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return Decimal(repr(value))


def _tokens(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def worst_case_credits(data: Mapping[str, Any], credits_per_usd: Decimal) -> int | None:
    """The most the call in ``data`` (the proxy's request body) can cost, in credits; None if unpriceable."""
    model, messages = data.get("model"), data.get("messages")
    if not isinstance(model, str) or not isinstance(messages, list) or not messages:
        return None
    try:
        info = litellm.get_model_info(model)
        prompt = int(litellm.token_counter(model=model, messages=messages))
    except Exception:  # noqa: BLE001 - a model LiteLLM cannot price or count: no hold, the allowance decides
        return None
    input_price, output_price = _price(info.get("input_cost_per_token")), _price(info.get("output_cost_per_token"))
    output = _tokens(data.get("max_tokens")) or _tokens(data.get("max_completion_tokens"))
    output = output or _tokens(info.get("max_output_tokens")) or _tokens(info.get("max_tokens"))
    if input_price is None or output_price is None or output is None:
        return None
    credits = math.ceil((input_price * prompt + output_price * output) * credits_per_usd)
    # past the bound of an amount, held at the bound (which no balance covers): a caller's huge max_tokens
    # must not turn a hold into the allowance check
    return min(credits, MAX_AMOUNT) if credits > 0 else None
