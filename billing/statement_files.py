"""Statements as files (docs/portal.md): CSV and JSON, written a line at a time as the rows are read, so
a month of a million transactions never sits in memory. Times are UTC (``…Z``).

A spreadsheet runs a cell that begins with ``=``, ``+``, ``-`` or ``@`` as a formula: a text field that
does (a reference, a model name, a reason) is written with a leading ``'``, as OWASP advises; numbers
are written as numbers.
"""

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Connection

from creditrelay.billing.statements import Line, Month, SummaryRow, lines, opening, summary
from creditrelay.schema.shapes import iso

LINE_COLUMNS = ("time", "type", "amount", "balance", "reference", "model", "promptTokens", "completionTokens",
                "totalTokens", "reason")  # fmt: skip
SUMMARY_COLUMNS = ("userId", "email", "opening", "creditsIn", "usage", "corrections", "closing")


def _text(value: str | None) -> str:
    if value is None:
        return ""
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


BATCH = 1000  # rows written per piece yielded: a piece is one write to the terminal or the socket


def _csv(row: Iterable[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(row)
    return out.getvalue()


def _batched(rows: Iterable[Iterable[Any]]) -> Iterator[str]:
    """``rows`` as CSV, ``BATCH`` rows a piece."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for count, row in enumerate(rows, 1):
        writer.writerow(row)
        if count % BATCH == 0:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    if out.tell():
        yield out.getvalue()


def _line_json(line: Line) -> dict[str, Any]:
    found: dict[str, Any] = {
        "id": line.id, "time": iso(line.time), "type": line.type, "amount": line.amount, "balance": line.balance,
        "reference": line.reference, "reason": line.reason,
    }  # fmt: skip
    if line.model is not None:
        found |= {"model": line.model, "promptTokens": line.prompt_tokens, "completionTokens": line.completion_tokens,
                  "totalTokens": line.total_tokens}  # fmt: skip
    return found


def user_csv(connection: Connection, user_id: int, month: Month) -> Iterator[str]:
    """The member's month: a header, an ``opening balance`` row, each transaction, a ``closing balance`` row."""
    balance = opening(connection, user_id, month)
    yield _csv(LINE_COLUMNS)
    yield _csv([iso(month.start), "opening balance", "", balance, "", "", "", "", "", ""])
    last = [balance]

    def rows() -> Iterator[list[Any]]:
        for line in lines(connection, user_id, month):
            last[0] = line.balance
            yield [
                iso(line.time), line.type, line.amount, line.balance, _text(line.reference), _text(line.model),
                *(("" if n is None else n) for n in (line.prompt_tokens, line.completion_tokens, line.total_tokens)),
                _text(line.reason),
            ]  # fmt: skip

    yield from _batched(rows())
    yield _csv([iso(month.end), "closing balance", "", last[0], "", "", "", "", "", ""])


def user_json(connection: Connection, user_id: int, email: str, month: Month) -> Iterator[str]:
    """The member's month as one JSON object: ``opening``, ``transactions``, ``closing``."""
    balance = opening(connection, user_id, month)
    head = {"userId": user_id, "email": email, "month": month.name, "opening": balance}
    yield json.dumps(head)[:-1] + ', "transactions": ['
    for index, line in enumerate(lines(connection, user_id, month)):
        balance = line.balance
        yield ("" if index == 0 else ", ") + json.dumps(_line_json(line))
    yield f'], "closing": {balance}}}\n'


def _summary_values(row: SummaryRow) -> list[Any]:
    return [row.user_id, _text(row.email), row.opening, row.credits_in, row.usage, row.corrections, row.closing]


def summary_csv(connection: Connection, month: Month) -> Iterator[str]:
    """One row per user, then a ``totals`` row."""
    totals = [0] * 5
    yield _csv(SUMMARY_COLUMNS)

    def rows() -> Iterator[list[Any]]:
        nonlocal totals
        for row in summary(connection, month):
            values = _summary_values(row)
            totals = [a + b for a, b in zip(totals, values[2:], strict=True)]
            yield values

    yield from _batched(rows())
    yield _csv(["totals", "", *totals])


def summary_json(connection: Connection, month: Month) -> Iterator[str]:
    """``{"month", "users": [...], "totals"}``."""
    totals = [0] * 5
    yield json.dumps({"month": month.name})[:-1] + ', "users": ['
    for index, row in enumerate(summary(connection, month)):
        values = _summary_values(row)
        totals = [a + b for a, b in zip(totals, values[2:], strict=True)]
        yield ("" if index == 0 else ", ") + json.dumps(
            dict(zip(SUMMARY_COLUMNS, [row.user_id, row.email, *values[2:]], strict=True))
        )
    yield '], "totals": ' + json.dumps(dict(zip(SUMMARY_COLUMNS[2:], totals, strict=True))) + "}\n"
