"""The EPay (易支付) wire format (docs/payments.md): the signed submit URL a member is sent to, and the
check of the notify EPay sends back.

``sign`` is the lower-case hex MD5 of the non-empty parameters other than ``sign`` and ``sign_type``,
sorted by name and joined ``k=v&k=v``, followed directly by the merchant key; ``sign_type`` is ``MD5``.
The notify carries ``pid``, ``trade_no`` (EPay's), ``out_trade_no`` (ours), ``type``, ``name``, ``money``
(two decimals) and ``trade_status`` (``TRADE_SUCCESS`` once paid), signed the same way; the merchant
answers the plain text ``success``, or EPay sends it again.
"""

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

TRADE_SUCCESS = "TRADE_SUCCESS"
ANSWER_OK, ANSWER_RETRY = "success", "fail"
PAY_TYPES = re.compile(r"[a-z0-9_]{1,16}")  # alipay, wxpay, qqpay, bank, … as the gateway names them
DEFAULT_TYPE = "alipay"
_MONEY = re.compile(r"[0-9]{1,10}(\.[0-9]{1,2})?")  # ASCII digits only, not every Unicode digit


def epay_sign(params: Mapping[str, str], key: str) -> str:
    """The MD5 signature of ``params`` with the merchant ``key``."""
    signed = sorted((k, v) for k, v in params.items() if v != "" and k not in ("sign", "sign_type"))
    text = "&".join(f"{k}={v}" for k, v in signed) + key
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - EPay's scheme is MD5, not our choice


def verify_sign(params: Mapping[str, str], key: str) -> bool:
    given = params.get("sign", "")
    return bool(given) and hmac.compare_digest(given.lower().encode(), epay_sign(params, key).encode())


@dataclass(frozen=True, slots=True)
class EpayOrder:
    pid: str
    pay_type: str
    out_trade_no: str
    notify_url: str
    return_url: str
    name: str
    money: str  # two decimals


def submit_url(submit: str, order: EpayOrder, key: str) -> str:
    """The gateway's submit URL with the order's signed parameters: where the member is sent to pay."""
    params = {
        "pid": order.pid, "type": order.pay_type, "out_trade_no": order.out_trade_no,
        "notify_url": order.notify_url, "return_url": order.return_url, "name": order.name, "money": order.money,
    }  # fmt: skip
    signed = params | {"sign": epay_sign(params, key), "sign_type": "MD5"}
    return f"{submit}{'&' if '?' in submit else '?'}{urlencode(signed)}"


def money_minor(text: str) -> int | None:
    """A notify's ``money`` (``10.00``) in fen; ``None`` when it is not an amount."""
    if not _MONEY.fullmatch(text):
        return None
    whole, _, cents = text.partition(".")
    return int(whole) * 100 + int(cents.ljust(2, "0"))
