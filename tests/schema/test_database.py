"""schema/database.py: the one conversion from Unix seconds to the stored datetime."""

from datetime import UTC, datetime

import pytest

from creditrelay.schema.database import utc


@pytest.mark.parametrize(
    "seconds", [0, 1, 1_767_225_600, 1_767_225_600.5, 1_767_225_600.123456, 1_767_225_600.1234565, 253_402_300_799]
)
def test_utc_is_the_zone_free_value_of_fromtimestamp(seconds: float) -> None:
    assert utc(seconds) == datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)
