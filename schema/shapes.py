"""Results as JSON, shaped in one place: what billing returns is typed (dataclasses with snake_case
fields); the API, the admin pages, the command line, a stored report and a log line give it in the wire's
camelCase, with times as ISO 8601 in UTC (``...Z``, ``iso``: the one time formatter)."""

import dataclasses
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any, overload


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@overload
def iso(moment: datetime, timespec: str = "auto") -> str: ...
@overload
def iso(moment: None, timespec: str = "auto") -> None: ...
@overload
def iso(moment: datetime | None, timespec: str = "auto") -> str | None: ...
def iso(moment: datetime | None, timespec: str = "auto") -> str | None:
    """A naive UTC time (as the tables keep them) in ISO 8601 with its ``Z``; an aware one in UTC."""
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec=timespec) + "Z"


def snake(name: str) -> str:
    return name


def to_json(value: Any, key: Callable[[str], str] = camel) -> Any:
    """``value`` as JSON-ready data: dataclasses become objects, their field names as ``key`` spells them
    (camelCase; the credit API keeps its snake_case), after the properties a dataclass names in its
    ``json_properties`` (its summary first), recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [*getattr(value, "json_properties", ()), *(field.name for field in dataclasses.fields(value))]
        return {key(name): to_json(getattr(value, name), key) for name in fields}
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {name: to_json(item, key) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item, key) for item in value]
    return value
