"""Credit packages: what members can buy (``CREDIT_PACKAGES``, docs/payments.md).

``name=credits:price:currency`` entries, comma-separated, each optionally followed by a bonus
``:+N`` (every purchase) or ``:+Nfirst`` (the member's first purchase only) and a bonus expiry ``:Nd``
(days after payment), e.g. ``starter=1000:10.00:CNY,pro=6000:50.00:CNY:+1000first:30d``. A price has at
most two decimals and is kept in the currency's minor units (cents, fen); a zero-decimal currency (JPY,
KRW, … as Stripe lists them) takes a whole price.
"""

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

from creditrelay.schema.money import MAX_AMOUNT

MAX_PRICE = 10**10  # minor units of one package (a hundred million in a two-decimal currency)
MAX_BONUS_DAYS = 3650
ZERO_DECIMAL = frozenset(
    ["BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"]
)  # Stripe's zero-decimal currencies: a price in them is whole units
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_BONUS = re.compile(r"\+(\d{1,13})(first)?")
_DAYS = re.compile(r"(\d{1,4})d")


class PackageError(ValueError):
    """A package definition cannot be read; the message says which and why."""


@dataclass(frozen=True, slots=True)
class CreditPackage:
    name: str
    credits: int
    amount: int  # the price in minor units
    currency: str  # ISO 4217, upper case
    bonus: int = 0
    bonus_first_only: bool = False
    bonus_days: int | None = None  # the bonus is a promo grant expiring this many days after payment

    @property
    def price(self) -> str:
        """The price as a decimal string (``10.00``; whole units in a zero-decimal currency)."""
        return format_money(self.amount, self.currency)


def minor_units(text: str, currency: str) -> int:
    """A decimal price in the currency's minor units; ``PackageError`` for anything else."""
    if not re.fullmatch(r"\d{1,10}(\.\d{1,2})?", text):
        raise PackageError(f"price {text[:20]!r} must be a number with at most two decimals, like 10.00")
    value = Decimal(text)
    if currency in ZERO_DECIMAL:
        if value != value.to_integral_value():
            raise PackageError(f"price {text!r}: {currency} has no minor unit, give a whole price")
        return int(value)
    try:
        return int(value * 100)
    except InvalidOperation:  # pragma: no cover - the pattern admits only plain decimals
        raise PackageError(f"price {text!r} is not a number") from None


def format_money(amount: int, currency: str) -> str:
    """Minor units as the decimal string a provider takes (``1000`` CNY → ``10.00``)."""
    if currency in ZERO_DECIMAL:
        return str(amount)
    return f"{amount // 100}.{amount % 100:02d}"


def parse_package(entry: str) -> CreditPackage:
    name, equals, terms = entry.strip().partition("=")
    name = name.strip()
    if not equals or not _NAME.fullmatch(name):
        raise PackageError(
            f"{entry.strip()[:40]!r}: each package is name=credits:price:currency, the name 1 to 32 lower-case"
            " letters, digits, - or _"
        )
    parts = [part.strip() for part in terms.split(":")]
    if len(parts) < 3:
        raise PackageError(f"{name}: give credits:price:currency")
    credits_text, price, currency, *extras = parts
    if not credits_text.isascii() or not credits_text.isdigit() or not 0 < int(credits_text) <= MAX_AMOUNT:
        raise PackageError(f"{name}: credits must be a positive integer up to {MAX_AMOUNT}")
    currency = currency.upper()
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise PackageError(f"{name}: currency must be a three-letter code like CNY or USD")
    try:
        amount = minor_units(price, currency)
    except PackageError as error:
        raise PackageError(f"{name}: {error}") from None
    if not 0 < amount <= MAX_PRICE:
        raise PackageError(f"{name}: the price must be above zero and at most {MAX_PRICE} minor units")
    bonus, first, days = 0, False, None
    for extra in extras:
        if (found := _BONUS.fullmatch(extra)) and not bonus:
            bonus, first = int(found[1]), found[2] is not None
        elif (found := _DAYS.fullmatch(extra)) and days is None:
            days = int(found[1])
        else:
            raise PackageError(f"{name}: {extra[:20]!r} is neither a bonus (+N or +Nfirst) nor its expiry (Nd)")
    if extras and not 0 < bonus <= MAX_AMOUNT:
        raise PackageError(f"{name}: a bonus is a positive number of credits up to {MAX_AMOUNT}")
    if days is not None and not 0 < days <= MAX_BONUS_DAYS:
        raise PackageError(f"{name}: a bonus expiry is 1 to {MAX_BONUS_DAYS} days")
    return CreditPackage(name, int(credits_text), amount, currency, bonus, first, days)


def parse_packages(text: str) -> tuple[CreditPackage, ...]:
    """Every package of ``CREDIT_PACKAGES``, in the order given; names are unique."""
    packages = tuple(parse_package(entry) for entry in text.split(",") if entry.strip())
    names = [package.name for package in packages]
    if duplicated := sorted({name for name in names if names.count(name) > 1}):
        raise PackageError(f"package {duplicated[0]} is defined twice")
    return packages


class OrderBody(BaseModel):
    """``POST /api/portal/orders``: ``{"package", "provider": "stripe" | "epay", "type"?}``"""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    package: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    provider: Literal["stripe", "epay"]
    type: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,16}$")] | None = None  # EPay's pay type
