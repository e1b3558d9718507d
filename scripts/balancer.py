"""A load balancer with retries, as the cluster chaos runs put one in front of several `creditrelay serve`
instances: each usage is posted to two instances at once, and until some instance answers 200, again to
the next instances in turn. Every answer is counted by status, so a 500 anywhere is seen.

The usages are half with ``requestId`` and half seed 004's payload without, each with token counts of its
own (so that a usage without a request id matches exactly one row of the gateway's log), and can be
written as the gateway's consume log (``scripts.gateway_log``) to recover what a failover lost.
"""

import asyncio
import hashlib
import hmac
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from scripts.benchkit import USERS
from scripts.gateway_log import consume_log_row

MODEL = "gpt-4o-mini"


@dataclass
class Usage:
    number: int
    event_id: str
    request_id: str | None
    key: int  # the gateway key (new-api's token id), and the benchmark user it bills: bench<key>@example.com
    cost: int
    prompt_tokens: int  # unique per usage: it tells the usage apart in the ledger and in the gateway's log
    completion_tokens: int = 40
    timestamp: int = 0  # set when it is first sent

    def body(self) -> bytes:
        data: dict[str, Any] = {
            "remoteKeyId": self.key, "model": MODEL, "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens, "totalTokens": self.prompt_tokens + self.completion_tokens,
            "creditCost": self.cost,
        }  # fmt: skip
        if self.request_id is not None:
            data["requestId"] = self.request_id
        event = {"eventId": self.event_id, "eventType": "usage", "timestamp": self.timestamp, "data": data}
        return json.dumps(event, separators=(",", ":")).encode()

    def log_row(self, row_id: int) -> dict[str, Any]:
        """The gateway's consume log row of this usage (1 quota unit per credit)."""
        return consume_log_row(row_id, self.timestamp, self.key, self.cost, self.request_id or "", model=MODEL,
                               prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)  # fmt: skip


def make_usages(prefix: str, count: int, first: int = 0) -> list[Usage]:
    """``count`` usages; even numbers carry a ``requestId``, odd ones are seed 004's payload without. Keys
    run from 1 (new-api's token ids do: a log row of token 0 is no token's)."""
    numbers = range(first, first + count)
    request_ids = [f"{prefix}-req-{n}" if n % 2 == 0 else None for n in numbers]
    return [
        Usage(n, f"{prefix}-{n}", request_id, 1 + n % (USERS - 1), 1 + n % 9, 100 + n)
        for n, request_id in zip(numbers, request_ids, strict=True)
    ]


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)  # every answer: "200", "503", "500", "refused", …
    answered: list[Usage] = field(default_factory=list)  # usages some instance answered 200
    retried: int = 0  # usages that needed a third request or more
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def done(self) -> int:
        with self.lock:
            return len(self.answered)


def signed(secret: str, body: bytes) -> dict[str, str]:
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Webhook-Signature": signature}


async def _post(client: httpx.AsyncClient, url: str, usage: Usage, secret: str, tally: Tally) -> bool:
    body = usage.body()
    try:
        reply = await client.post(f"{url}/api/webhooks/events", content=body, headers=signed(secret, body))
        status = str(reply.status_code)
    except httpx.TimeoutException:
        status = "timeout"
    except httpx.TransportError:
        status = "refused"
    with tally.lock:
        tally.statuses[status] += 1
    return status == "200"


async def deliver(
    client: httpx.AsyncClient, instances: Sequence[str], usage: Usage, secret: str, tally: Tally, rng: random.Random
) -> None:
    """Post ``usage`` to two instances at once, then to the others in turn until one answers 200."""
    usage.timestamp = usage.timestamp or int(time.time())
    order = rng.sample(range(len(instances)), len(instances))
    first = await asyncio.gather(*(_post(client, instances[i], usage, secret, tally) for i in order[:2]))
    turn, deadline = 2, time.monotonic() + 600
    while not any(first):
        if time.monotonic() > deadline:
            raise SystemExit(f"no instance answered 200 for {usage.event_id} in 10 minutes")
        if turn == 2:
            with tally.lock:
                tally.retried += 1
        if await _post(client, instances[order[turn % len(order)]], usage, secret, tally):
            break
        turn += 1
        await asyncio.sleep(min(0.05 * turn, 1.0))
    with tally.lock:
        tally.answered.append(usage)


def run_load(instances: Sequence[str], usages: Sequence[Usage], secret: str, tally: Tally, concurrency: int) -> None:
    """Deliver every usage, ``concurrency`` at a time (blocks until all are answered 200)."""

    async def main() -> None:
        rng = random.Random(30)
        limit = asyncio.Semaphore(concurrency)
        timeout = httpx.Timeout(30.0, connect=5.0)
        async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=4 * concurrency)) as client:

            async def one(usage: Usage) -> None:
                async with limit:
                    await deliver(client, instances, usage, secret, tally, rng)

            await asyncio.gather(*(one(usage) for usage in usages))

    asyncio.run(main())


def in_background(instances: Sequence[str], usages: Sequence[Usage], secret: str, tally: Tally,
                  concurrency: int) -> threading.Thread:  # fmt: skip
    thread = threading.Thread(target=run_load, args=(instances, usages, secret, tally, concurrency), daemon=True)
    thread.start()
    return thread


def wait_for(tally: Tally, answered: int, thread: threading.Thread) -> None:
    """Until ``answered`` usages were answered 200 (or the load ended)."""
    while tally.done < answered and thread.is_alive():
        time.sleep(0.05)
