"""Numbers and times from a request's path and query: each is what it says or a 400 naming it.

Integers are ASCII digits within bounds (``str.isdigit`` alone lets "²" through, and a value past BIGINT
overflows a column); times are Unix seconds or ISO-8601, turned into the naive UTC the tables store, and
refused when they fall outside what a datetime can hold once moved to UTC.
"""

from datetime import UTC, date, datetime, timedelta

from starlette.requests import Request

from creditrelay.receiver.errors import ApiError
from creditrelay.schema.wire import BIGINT_MAX, MAX_TIMESTAMP, plain_int


def positive_int(text: str, name: str, maximum: int = BIGINT_MAX) -> int:
    value = plain_int(text, maximum)
    if value is None or value == 0:
        raise ApiError(400, f"{name}: must be a positive integer up to {maximum}")
    return value


def query_int(request: Request, name: str, default: int, *, maximum: int = BIGINT_MAX) -> int:
    text = request.query_params.get(name)
    return default if text is None else positive_int(text, name, maximum)


def query_optional_int(request: Request, name: str, *, maximum: int = BIGINT_MAX) -> int | None:
    text = request.query_params.get(name)
    return None if text is None else positive_int(text, name, maximum)


def path_int(request: Request, name: str) -> int:
    return positive_int(str(request.path_params[name]), name)


def moment(text: str, name: str) -> datetime:
    """Unix seconds or an ISO-8601 time (UTC unless it says otherwise) as naive UTC."""
    try:
        seconds = plain_int(text, MAX_TIMESTAMP)
        if seconds is not None:
            return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)
        if text.isascii() and text.isdigit():
            raise ValueError("past year 9999")
        parsed = datetime.fromisoformat(text)
        return parsed if parsed.tzinfo is None else parsed.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):
        raise ApiError(400, f"{name}: Unix seconds or an ISO-8601 time between years 1 and 9999 (UTC)") from None


def query_moment(request: Request, name: str) -> datetime | None:
    text = request.query_params.get(name)
    return None if text is None else moment(text, name)


FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(9998, 12, 31)


def query_day(request: Request, name: str, default: date) -> date:
    text = request.query_params.get(name)
    if not text:
        return default
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"{name}: a day as YYYY-MM-DD") from None
    if not FIRST_DAY <= day <= LAST_DAY:  # a range is counted from it in days: room on both sides
        raise ApiError(400, f"{name}: a day from {FIRST_DAY} to {LAST_DAY}")
    return day


def day_range(request: Request, today: date, default_days: int, most_days: int) -> tuple[date, date]:
    """``from`` and ``to`` (days, UTC, both included): the last ``default_days`` days unless given; a 400
    naming them when ``from`` is after ``to`` or they span more than ``most_days`` days."""
    end = query_day(request, "to", today)
    start = query_day(request, "from", end - timedelta(days=default_days - 1))
    if end < start or (end - start).days >= most_days:
        raise ApiError(400, f"from, to: from on or before to, at most {most_days} days apart")
    return start, end
