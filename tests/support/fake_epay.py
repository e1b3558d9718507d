"""A stand-in for an EPay (易支付) gateway, following its wire format: ``GET /submit.php`` with the signed
order (``pid``, ``type``, ``out_trade_no``, ``notify_url``, ``return_url``, ``name``, ``money``, ``sign``,
``sign_type=MD5``) refuses a bad signature or merchant, else "pays" at once: it sends the merchant's
``notify_url`` the signed notify (``pid``, ``trade_no``, ``out_trade_no``, ``type``, ``name``, ``money``,
``trade_status=TRADE_SUCCESS``), as EPay does, until the merchant answers ``success`` (a few tries), and
sends the member's browser on to ``return_url``. It signs with its own implementation of the scheme."""

import hashlib
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.support.server import serving


def epay_signature(params: dict[str, str], key: str) -> str:
    """EPay's MD5 signature, as the gateways' documentation gives it."""
    text = "&".join(f"{k}={params[k]}" for k in sorted(params) if params[k] and k not in ("sign", "sign_type"))
    return hashlib.md5((text + key).encode()).hexdigest()  # noqa: S324 - the provider's scheme


@dataclass
class FakeEpay:
    pid: str
    key: str
    url: str = ""
    answers: list[str] = field(default_factory=list)  # what the merchant answered each notify
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(2026120600001))

    @property
    def submit(self) -> str:
        return f"{self.url}/submit.php"

    def notify(self, order: dict[str, str]) -> None:
        params = {
            "pid": self.pid, "trade_no": str(next(self._numbers)), "out_trade_no": order["out_trade_no"],
            "type": order["type"], "name": order["name"], "money": order["money"], "trade_status": "TRADE_SUCCESS",
        }  # fmt: skip
        params |= {"sign": epay_signature(params, self.key), "sign_type": "MD5"}
        for _ in range(3):
            answer = httpx.get(order["notify_url"], params=params, timeout=10).text
            self.answers.append(answer)
            if answer == "success":
                return

    async def pay(self, request: Request) -> Response:
        order = dict(request.query_params)
        if order.get("pid") != self.pid or order.get("sign") != epay_signature(order, self.key):
            return PlainTextResponse("签名错误 (bad signature)", status_code=400)
        await run_in_threadpool(self.notify, order)
        return RedirectResponse(order["return_url"], status_code=302)


@contextmanager
def fake_epay(pid: str, key: str) -> Iterator[FakeEpay]:
    gateway = FakeEpay(pid, key)
    with serving(Starlette(routes=[Route("/submit.php", gateway.pay, methods=["GET"])])) as url:
        gateway.url = url
        yield gateway
