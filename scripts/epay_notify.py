"""Send creditrelay the notify an EPay (易支付) gateway sends once an order is paid: to try an EPay set-up
without paying (docs/payments.md).

    python scripts/epay_notify.py http://localhost:4000/api/payments/epay --out-trade-no N --money 10.00

The parameters are signed with ``--key`` (default: ``EPAY_KEY``) exactly as the gateway signs them and
sent as a GET, as most gateways do (``--post``: as a form). Prints the HTTP status and creditrelay's answer
(``success`` when the order is paid, or was already); exits 1 for any other answer.
"""

import argparse
import os
import sys

import httpx

from creditrelay.schema.epay import TRADE_SUCCESS, epay_sign


def main() -> int:
    parser = argparse.ArgumentParser(description="Send creditrelay a signed EPay notify.")
    parser.add_argument("url", help="creditrelay's notify URL: PUBLIC_BASE_URL + /api/payments/epay")
    parser.add_argument("--out-trade-no", required=True, help="the order's outTradeNo")
    parser.add_argument("--money", required=True, help="the amount paid, two decimals (10.00)")
    parser.add_argument("--pid", default=os.environ.get("EPAY_PID", ""), help="the merchant id (default: EPAY_PID)")
    parser.add_argument("--key", default=os.environ.get("EPAY_KEY", ""), help="the merchant key (default: EPAY_KEY)")
    parser.add_argument("--trade-no", default="2026000000000001", help="EPay's own number for the payment")
    parser.add_argument("--status", default=TRADE_SUCCESS, help=f"trade_status (default: {TRADE_SUCCESS})")
    parser.add_argument("--type", default="alipay", help="the pay type (default: alipay)")
    parser.add_argument("--name", default="", help="the order's name (creditrelay sends the package's)")
    parser.add_argument("--post", action="store_true", help="send a POST form instead of a GET")
    args = parser.parse_args()
    if not args.key:
        parser.error("--key (or EPAY_KEY) is needed to sign the notify")
    params = {
        "pid": args.pid, "trade_no": args.trade_no, "out_trade_no": args.out_trade_no, "type": args.type,
        "name": args.name, "money": args.money, "trade_status": args.status,
    }  # fmt: skip
    params = {name: value for name, value in params.items() if value}
    params |= {"sign": epay_sign(params, args.key), "sign_type": "MD5"}
    if args.post:
        answer = httpx.post(args.url, data=params, timeout=30)
    else:
        answer = httpx.get(args.url, params=params, timeout=30)
    print(answer.status_code, answer.text)
    return 0 if answer.text == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
