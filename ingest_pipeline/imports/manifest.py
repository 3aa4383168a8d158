"""An import's manifest: each CSV column mapped to an attribute with a data type, or skipped.

    columns:
      USER_ID:   {attribute: user_id, type: string}
      EVENT_TS:  {attribute: event_time, type: datetime, format: "%Y-%m-%d %H:%M:%S"}
      AMOUNT:    {attribute: amount, type: number}
      IS_PAID:   {attribute: is_paid, type: boolean}   # true/false, yes/no, 1/0, any case
      INTERNAL:  skip

Read and checked when ingest.yaml loads (config.py), so a manifest without a mandatory mapping
is a configuration error naming its file, never a failed import at night.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

AttributeType = Literal["string", "number", "boolean", "datetime"]
ImportKind = Literal["registered", "anonymous", "events"]

# The attributes each kind of import must map (vendor: "mandatory mappings").
MANDATORY: dict[ImportKind, dict[str, AttributeType]] = {
    "registered": {"user_id": "string"},
    "anonymous": {"anonymous_id": "string"},
    "events": {"user_id": "string", "event_time": "datetime"},
}
# Attributes the import sets itself (a user's `anonymous` mark, an event's name).
RESERVED = ("anonymous", "event_text")
ATTRIBUTE_NAME = r"[A-Za-z_][A-Za-z0-9_.-]{0,127}"


class ManifestError(ValueError):
    """The manifest is invalid; the message lists every problem with its path."""


class _Column(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    attribute: str = Field(min_length=1)
    type: AttributeType = "string"
    format: str | None = None  # datetime: strftime directives, e.g. "%Y-%m-%d %H:%M:%S"

    @field_validator("attribute")
    @classmethod
    def _attribute(cls, value: str) -> str:
        if not re.fullmatch(ATTRIBUTE_NAME, value):
            raise ValueError(
                f"{value!r}: an attribute name is letters, digits, '_', '.' or '-', starting "
                "with a letter or '_'"
            )
        return value


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: dict[str, _Column | Literal["skip"]]


@dataclass(frozen=True)
class ColumnMapping:
    column: str  # as the CSV header has it
    attribute: str
    type: AttributeType
    format: str | None = None


@dataclass(frozen=True)
class Manifest:
    mappings: tuple[ColumnMapping, ...]
    skipped: tuple[str, ...] = ()
    source: str = ""

    def mapping(self, attribute: str) -> ColumnMapping:
        return next(m for m in self.mappings if m.attribute == attribute)


def check_datetime_format(value: str) -> str | None:
    """Why a strftime format cannot read datetimes, or None."""
    if not re.search(r"%[a-zA-Z]", value):
        return f"{value!r} has no strftime directive (e.g. %Y%m%d%H%M%S)"
    try:
        datetime.now().strftime(value)
    except ValueError as exc:
        return f"{value!r} is not a strftime format ({exc})"
    return None


def parse_manifest(data: Any, kind: ImportKind, *, source: str) -> Manifest:
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: the top level must be a mapping with `columns:`")
    try:
        parsed = _Manifest.model_validate(data)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            path = ".".join(str(p) for p in e["loc"] if p not in ("_Column", "literal['skip']"))
            message = str(e["msg"]).removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                message = "unknown key"
            lines.append(f"{path}: {message}")
        raise ManifestError(
            f"{source} is invalid:\n    " + "\n    ".join(sorted(set(lines)))
        ) from None
    problems = []
    mappings, skipped = [], []
    by_attribute: dict[str, str] = {}
    for column, spec in parsed.columns.items():
        if spec == "skip":
            skipped.append(column)
            continue
        assert isinstance(spec, _Column)
        where = f"columns.{column}"
        if spec.type == "datetime":
            if spec.format is None:
                problems.append(f"{where}.format: a datetime column needs its format")
            elif (why := check_datetime_format(spec.format)) is not None:
                problems.append(f"{where}.format: {why}")
        elif spec.format is not None:
            problems.append(f"{where}.format: only datetime columns take a format")
        if spec.attribute in RESERVED:
            problems.append(f"{where}.attribute: {spec.attribute!r} is set by the import itself")
        if spec.attribute in by_attribute:
            problems.append(
                f"{where}.attribute: {spec.attribute!r} is also the attribute of column "
                f"{by_attribute[spec.attribute]!r}"
            )
        by_attribute.setdefault(spec.attribute, column)
        mappings.append(ColumnMapping(column, spec.attribute, spec.type, spec.format))
    for attribute, wanted in MANDATORY[kind].items():
        found = next((m for m in mappings if m.attribute == attribute), None)
        if found is None:
            what = "events" if kind == "events" else f"{kind} users"
            problems.append(
                f"columns: no column is mapped to {attribute!r}, which {what} imports must map"
            )
        elif found.type != wanted:
            problems.append(f"columns.{found.column}.type: {attribute!r} must be of type {wanted}")
    if problems:
        raise ManifestError(f"{source} is invalid:\n    " + "\n    ".join(problems))
    return Manifest(tuple(mappings), tuple(skipped), source)


def load_manifest(path: Path, kind: ImportKind) -> Manifest:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ManifestError(f"{path} cannot be read as YAML: {exc}") from None
    return parse_manifest(data, kind, source=str(path))
