"""The JSON Schema (draft 2020-12) of each API stream, generated from its feed declaration.

The API checks uploads with these schemas; the pipeline checks the lines of uploaded files with
the row rules of the same declaration (validation.py, strict JSON). Both are derived from the
same FieldSpecs, so they cannot drift: `ingest_pipeline_tests/test_api_schemas.py` checks that
they give the same verdict on generated records.

How each rule of validation.py reads in JSON Schema:
  * "blank" is what DuckDB's trim() removes: Unicode space separators (`\\p{Zs}`); a required
    string must have another character, an optional one may be blank.
  * identity: at most MAX_IDENTITY_CHARS characters once trimmed, and not a placeholder
    (trimmed, case-folded).
  * unix_seconds: a number from 0 up to (not including) 1e10.
  * every record is an object without keys the stream does not declare.
Patterns use `\\p{..}` classes (ECMA-262 with the `u` flag, Rust's regex): validators that
speak Python's `re` cannot compile them; the service validates with jsonschema-rs.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from ingest_pipeline.feeds import API_STREAMS, MAX_IDENTITY_CHARS, FeedSpec, FieldSpec, configured
from ingest_pipeline.validation import MAX_UNIX_SECONDS

DIALECT = "https://json-schema.org/draft/2020-12/schema"
# What trim() removes (validation.py's "blank"), and the whitespace of its email pattern.
_ZS = r"\p{Zs}"
_EMAIL_SPACE = r"\t\n\u000B\f\r\u0085\p{Z}"
_EMAIL = rf"^{_ZS}*[^@{_EMAIL_SPACE}]+@[^@{_EMAIL_SPACE}]+\.[^@{_EMAIL_SPACE}]+{_ZS}*$"
_BLANK = rf"^{_ZS}*$"
_NOT_BLANK = rf"[^{_ZS}]"


def _case_free(text: str) -> str:
    """A regex matching `text` in any letter case (ECMA-262 has no inline `(?i)`)."""
    return "".join(
        f"[{c.lower()}{c.upper()}]" if c.isascii() and c.isalpha() else re.escape(c) for c in text
    )


def _identity(field: FieldSpec, feed: FeedSpec) -> dict[str, Any]:
    placeholders = "|".join(_case_free(p) for p in feed.placeholder_identities if p)
    refused = [{"pattern": _BLANK}]
    if placeholders:
        refused.append({"pattern": rf"^{_ZS}*(?:{placeholders}){_ZS}*$"})
    return {
        "type": "string",
        # trimmed length: the shortest middle between leading and trailing spaces
        "pattern": rf"^{_ZS}*[\s\S]{{0,{MAX_IDENTITY_CHARS}}}{_ZS}*$",
        "not": {"anyOf": refused},
    }


def _field_schema(field: FieldSpec, feed: FeedSpec) -> dict[str, Any]:
    kind = field.kind
    if field.const is not None:
        schema: dict[str, Any] = {"const": field.const}
    elif kind == "identity":
        schema = _identity(field, feed)
    elif kind == "string":
        schema = {"type": "string"}
        if field.required:
            schema["pattern"] = _NOT_BLANK
    elif kind == "email":
        schema = {"type": "string", "pattern": _EMAIL}
        if not field.required:
            schema = {"type": "string", "anyOf": [{"pattern": _BLANK}, {"pattern": _EMAIL}]}
    elif kind == "unix_seconds":
        schema = {"type": "number", "minimum": 0, "exclusiveMaximum": MAX_UNIX_SECONDS}
    elif kind == "object":
        schema = {"type": "object"}
    elif kind == "number":
        schema = {"type": "number"}
    elif kind == "boolean":
        schema = {"type": "boolean"}
    else:
        raise ValueError(f"{feed.name}.{field.name}: no JSON Schema for kind {kind!r}")
    if field.description:
        schema = {"description": field.description, **schema}
    if not field.required:
        schema = {"anyOf": [{"type": "null"}, schema]}
    return schema


@functools.cache
def stream_schema(name: str, placeholders: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The JSON Schema of one record of the API stream `name` (placeholder identities as
    `ingest.yaml` sets them: IngestConfig.identity.placeholders)."""
    feed = configured(API_STREAMS[name], placeholders)
    return {
        "$schema": DIALECT,
        "$id": f"/ingestion/schemas/{name}",
        "title": name,
        "description": feed.description,
        "type": "object",
        "properties": {f.name: _field_schema(f, feed) for f in feed.fields},
        "required": [f.name for f in feed.fields if f.required],
        "additionalProperties": False,
        "examples": [feed.example],
    }


def all_schemas(placeholders: tuple[str, ...] | None = None) -> dict[str, dict[str, Any]]:
    return {name: stream_schema(name, placeholders) for name in API_STREAMS}
