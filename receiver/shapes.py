"""Billing's results as JSON, shaped once at the edge: what billing returns is typed (dataclasses with
snake_case fields); the API, the admin pages and the command line answer in the wire's camelCase, with
times as ISO 8601 in UTC (``...Z``)."""

import dataclasses
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import Enum
from typing import Any


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def iso(moment: datetime | None) -> str | None:
    """A naive UTC time (as the tables keep them) in ISO 8601 with its ``Z``."""
    return None if moment is None else moment.isoformat() + "Z"


def snake(name: str) -> str:
    return name


def to_json(value: Any, key: Callable[[str], str] = camel) -> Any:
    """``value`` as JSON-ready data: dataclasses become objects, their field names as ``key`` spells them
    (camelCase; the credit API keeps its snake_case), recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {key(field.name): to_json(getattr(value, field.name), key) for field in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {name: to_json(item, key) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item, key) for item in value]
    return value
