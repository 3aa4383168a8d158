"""An independent model of what the warehouse must hold, in plain Python (json, csv, dicts).

It shares no code with the pipeline: it re-implements the SPEC's rules (required fields, Unix
seconds, first-in-file / newest-landed-wins, per-attribute newest non-null) row by row, so a test
comparing the warehouse with it fails when the pipeline's SQL is wrong.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

REQUIRED = {
    "track": ("event_text", "event_timestamp", "contact_key"),
    "identify": ("contact_key", "email"),
    "group": ("contact_key", "account_key"),
    "crm": ("email", "account", "created_at", "is_worked", "is_converted", "amount"),
}
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class LandedFile:
    uri: str
    key: str
    landed_at: datetime
    body: bytes


def records(key: str, body: bytes) -> list[dict | None]:
    """The file's records in order; None for a record that is not a JSON object."""
    if key.endswith((".gz", ".gzip")):
        body = gzip.decompress(body)
        key = key.rsplit(".", 1)[0]
    text = body.decode("utf-8-sig")
    if key.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
        return [{k: (v if v != "" else None) for k, v in r.items()} for r in rows]
    out: list[dict | None] = []
    for line in text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"):
        try:
            value = json.loads(line)
        except ValueError:
            out.append(None)
            continue
        out.append(value if isinstance(value, dict) else None)
    return out


def first_line(key: str) -> int:
    """Line number of a file's first record: CSV records are numbered after the header."""
    return 2 if ".csv" in key else 1


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip() or None


def is_valid(feed: str, row: dict | None) -> bool:
    if row is None:
        return False
    if any(_text(row.get(f)) is None for f in REQUIRED[feed]):
        return False
    if feed == "track":
        try:
            seconds = float(_text(row["event_timestamp"]))  # type: ignore[arg-type]
        except ValueError:
            return False
        return 0 <= seconds < 1e10
    if feed in ("identify", "crm"):
        return bool(EMAIL.match(_text(row["email"]) or ""))
    return True


def _rank(f: LandedFile, line: int, first_in_file: bool) -> tuple:
    return (f.landed_at, f.uri, -line if first_in_file else line)


def expected_events(files: list[LandedFile], tenant: str = "default") -> dict[tuple, dict]:
    best: dict[tuple, tuple[tuple, dict]] = {}
    for f in files:
        for line, row in enumerate(records(f.key, f.body), start=first_line(f.key)):
            if not is_valid("track", row):
                continue
            assert row is not None
            ts = datetime.fromtimestamp(float(_text(row["event_timestamp"])), UTC)  # type: ignore[arg-type]
            key = (tenant, _text(row["contact_key"]), _text(row["event_text"]), ts)
            props = {k: v for k, v in row.items() if k not in REQUIRED["track"]}
            rank = _rank(f, line, first_in_file=True)
            if key not in best or rank > best[key][0]:
                best[key] = (rank, {"properties": props, "source_uri": f.uri, "line_number": line})
    return {k: v for k, (_, v) in best.items()}


def expected_attributes(
    files: list[LandedFile], feed: str, key_field: str, tenant: str = "default"
) -> dict[tuple, dict]:
    """Per entity key: attribute -> newest landed non-null value (later line newer)."""
    best: dict[tuple, dict[str, tuple[tuple, object]]] = {}
    for f in files:
        for line, row in enumerate(records(f.key, f.body), start=first_line(f.key)):
            if not is_valid(feed, row):
                continue
            assert row is not None
            entity = best.setdefault((tenant, _text(row[key_field])), {})
            for attr, value in row.items():
                if attr in REQUIRED[feed] and attr != "email" or value is None:
                    continue
                rank = _rank(f, line, first_in_file=False)
                if attr not in entity or rank > entity[attr][0]:
                    entity[attr] = (rank, value)
    return {k: {a: v for a, (_, v) in attrs.items()} for k, attrs in best.items()}


def expected_contact_accounts(files: list[LandedFile], tenant: str = "default") -> dict[tuple, str]:
    best: dict[tuple, tuple[tuple, str]] = {}
    for f in files:
        for line, row in enumerate(records(f.key, f.body), start=first_line(f.key)):
            if not is_valid("group", row):
                continue
            assert row is not None
            key = (tenant, _text(row["contact_key"]))
            rank = _rank(f, line, first_in_file=False)
            if key not in best or rank > best[key][0]:
                best[key] = (rank, _text(row["account_key"]))  # type: ignore[arg-type]
    return {k: v for k, (_, v) in best.items()}


def expected_crm_emails(files: list[LandedFile], tenant: str = "default") -> dict[tuple, str]:
    """Per lead email: the winning row's account."""
    best: dict[tuple, tuple[tuple, str]] = {}
    for f in files:
        for line, row in enumerate(records(f.key, f.body), start=first_line(f.key)):
            if not is_valid("crm", row):
                continue
            assert row is not None
            key = (tenant, _text(row["email"]))
            rank = _rank(f, line, first_in_file=True)
            if key not in best or rank > best[key][0]:
                best[key] = (rank, _text(row["account"]))  # type: ignore[arg-type]
    return {k: v for k, (_, v) in best.items()}


def rows_read(key: str, body: bytes) -> int:
    return len(records(key, body))
