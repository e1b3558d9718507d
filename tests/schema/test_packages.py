"""schema/packages.py: CREDIT_PACKAGES read into packages with prices in minor units, bonuses and their
expiry; anything else refused with the package and the reason."""

import pytest

from creditrelay.schema.packages import CreditPackage, PackageError, format_money, parse_packages


def test_packages_are_read_with_prices_in_minor_units_and_optional_bonuses() -> None:
    """The CONTRACT's example, a bonus for every purchase, a first-purchase bonus with an expiry, a yen price."""
    text = "starter=1000:10.00:CNY, pro=6000:50.5:cny:+1000first:30d,big=5000:40:USD:+500,jp=100:500:JPY"
    assert parse_packages(text) == (
        CreditPackage("starter", 1000, 1000, "CNY"),
        CreditPackage("pro", 6000, 5050, "CNY", 1000, True, 30),
        CreditPackage("big", 5000, 4000, "USD", 500),
        CreditPackage("jp", 100, 500, "JPY"),
    )
    assert [format_money(p.amount, p.currency) for p in parse_packages(text)] == ["10.00", "50.50", "40.00", "500"]
    assert parse_packages("") == ()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("starter=1000:10.001:CNY", "at most two decimals"),
        ("starter=1000:-1:CNY", "at most two decimals"),
        ("starter=1000:0.00:CNY", "above zero"),
        ("starter=0:10:CNY", "positive integer"),
        ("starter=1000:10", "credits:price:currency"),
        ("Starter=1000:10:CNY", "lower-case"),
        ("starter=1000:10:YUAN", "three-letter"),
        ("jp=100:5.50:JPY", "no minor unit"),
        ("a=1:1:CNY,a=2:2:CNY", "defined twice"),
        ("a=1:1:CNY:30d", "bonus is a positive"),
        ("a=1:1:CNY:+5:+6", "neither a bonus"),
        ("a=1:1:CNY:+5:9999d", "1 to 3650 days"),
    ],
)
def test_a_bad_package_is_refused_with_the_reason(text: str, reason: str) -> None:
    """Each mistake an operator may make is named."""
    with pytest.raises(PackageError, match=reason):
        parse_packages(text)
