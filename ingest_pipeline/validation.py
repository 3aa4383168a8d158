"""Row rules of each feed, declared once, built from the feed declarations.

A rule is SQL: a predicate true for the rows that pass, and the reason shown for the rows that
fail it (an expression too, so it can quote the offending value). The bronze pass evaluates every
rule inside its one DuckDB query over the records (`rule_failures_sql`): a row's reason lists
every rule it breaks in declaration order, and no second pass over the data is needed (it was a
pandera pass over polars frames: 0.1-0.3 s per 1M rows plus 0.8 s of imports per process).

`row_rules_schema(feed)` exposes the same rules as a pandera DataFrameSchema, each rule one named
`Check` running its SQL on the frame through DuckDB; `failing_rows` validates a frame with it
(lazily: pandera's `failure_cases` give the failing row indexes). The tests check that the
schema and the bronze pass fail exactly the same rows with the same reasons.

DuckDB does the casting (`TRY_CAST`, NULL when a value does not convert - NaN and infinities,
which its casts take, count as not converting).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ingest_pipeline.feeds import MAX_IDENTITY_CHARS, FeedSpec, FieldSpec
from ingest_pipeline.parsing import ident, json_path, sql_str

if TYPE_CHECKING:
    import pandas
    import pandera.pandas as pandera

# Whitespace as Unicode's White_Space property has it (what the rule's regex meant in polars,
# whose \s is Unicode-aware; DuckDB's RE2 \s is ASCII only).
_SPACE = r"\t\n\x{0b}\f\r\x{85}\pZ"
EMAIL_PATTERN = rf"^[^@{_SPACE}]+@[^@{_SPACE}]+\.[^@{_SPACE}]+$"
# Unix seconds accepted: 1970-01-01 up to 2286-11-20. Values from 1e11 on look like milliseconds.
MAX_UNIX_SECONDS = 1e10
MILLISECONDS_FROM = 1e11

TYPE_NAMES = {
    "unix_seconds": "Unix seconds (a number)",
    "timestamp": "a timestamp (ISO 8601 or Unix seconds)",
    "datetime": "a datetime",
    "boolean": "true or false",
    "number": "a number",
}


def type_name(field: FieldSpec) -> str:
    """What a typed field's value must be, as a reason says it."""
    if field.kind == "datetime":
        return f"a datetime in the format '{field.format}'"
    if field.kind == "boolean" and field.column is not None:
        return "a boolean (true/false, yes/no or 1/0, any case)"
    return TYPE_NAMES[field.kind]


def has_offset(format: str) -> bool:
    """Whether a strftime format reads the time's UTC offset or zone itself."""
    return "%z" in format or "%Z" in format


def _finite(sql: str) -> str:
    """NULL for NaN and infinities, which DuckDB's casts accept ('NaN', 'inf', 'infinity'...)
    but are not numbers or times a row can hold."""
    return f"CASE WHEN isfinite({sql}) THEN {sql} END"


def typed_sql(field: FieldSpec) -> str:
    """SQL over a record's field text giving the typed value, NULL when it does not convert
    (NaN and infinite values do not)."""
    col = f"nullif(trim({ident(field.name)}), '')"
    if field.kind == "unix_seconds":
        return _finite(f"TRY_CAST({col} AS DOUBLE)")
    if field.kind == "timestamp":
        seconds = f"TRY_CAST({col} AS DOUBLE)"
        return (
            f"coalesce({_finite(f'TRY_CAST({col} AS TIMESTAMPTZ)')}, CASE WHEN {seconds} >= 0 "
            f"AND {seconds} < {MAX_UNIX_SECONDS} THEN to_timestamp({seconds}) END)"
        )
    if field.kind == "datetime":
        assert field.format is not None, f"{field.name}: a datetime field needs its format"
        parsed = f"try_strptime({col}, {sql_str(field.format)})"
        if has_offset(field.format):
            return f"{parsed}::TIMESTAMPTZ"
        # a wall-clock time in the field's time zone (ICU, built into DuckDB)
        return f"timezone({sql_str(field.timezone)}, {parsed})"
    if field.kind == "boolean":
        # DuckDB's cast: true/false, t/f, yes/no, y/n, 1/0, any case
        return f"TRY_CAST({col} AS BOOLEAN)"
    if field.kind == "number":
        return _finite(f"TRY_CAST({col} AS DOUBLE)")
    return ident(field.name)


def typed_column(field: FieldSpec) -> str:
    return f"{field.name}__typed"


@dataclass(frozen=True)
class RowRule:
    """One rule, in SQL over the validation columns (validation_columns_sql): `passes` is true
    for the rows that pass, `reason` the text shown for the rows that fail."""

    name: str
    passes: str
    reason: str


def _quoted(column: str) -> str:
    """The value as a reason quotes it: its first 80 characters between single quotes."""
    return f"'''' || coalesce(left({column}::VARCHAR, 80), '') || ''''"


def _says(*parts: str) -> str:
    """SQL concatenating literal texts and SQL expressions: parts alternate text, SQL, text..."""
    return " || ".join(sql_str(p) if i % 2 == 0 else p for i, p in enumerate(parts) if p)


def text_column(field: FieldSpec) -> str:
    """An identity (or constant) field's text as sent (untrimmed, empty kept): a blank identity
    is a placeholder, not an absent one."""
    return f"{field.name}__text"


def json_type_column(field: FieldSpec) -> str:
    """Strict-JSON feeds: the JSON type of the field's value (DuckDB's json_type: VARCHAR,
    BIGINT, UBIGINT, DOUBLE, BOOLEAN, OBJECT, ARRAY, 'NULL'; SQL NULL when absent)."""
    return f"{field.name}__json"


# Strict-JSON feeds: the JSON types of all the declared fields of a line, in field order.
JSON_TYPES_COLUMN = "__json_types"

# The JSON types each kind takes in a strict-JSON feed (api/schemas.py says the same in JSON
# Schema: string, number, boolean, object).
_NUMBER = ("UBIGINT", "BIGINT", "DOUBLE")
JSON_TYPES: dict[str, tuple[str, ...]] = {
    "string": ("VARCHAR",),
    "identity": ("VARCHAR",),
    "email": ("VARCHAR",),
    "unix_seconds": _NUMBER,
    "number": _NUMBER,
    "boolean": ("BOOLEAN",),
    "timestamp": ("VARCHAR", *_NUMBER),
    "datetime": ("VARCHAR",),
    "object": ("OBJECT",),
}
_JSON_TYPE_NAMES = {
    "string": "a string",
    "identity": "a string",
    "email": "a string",
    "unix_seconds": "a number",
    "number": "a number",
    "boolean": "true or false",
    "timestamp": "a string or a number",
    "datetime": "a string",
    "object": "an object",
}


def _json_type_rule(field: FieldSpec) -> RowRule:
    column = ident(json_type_column(field))
    allowed = ", ".join(sql_str(t) for t in (*JSON_TYPES[field.kind], "NULL"))
    return RowRule(
        f"{field.name}:json_type",
        f"{column} IS NULL OR {column} IN ({allowed})",
        _says(
            f"{field.label} must be {_JSON_TYPE_NAMES[field.kind]}, got ",
            f"CASE {column} WHEN 'VARCHAR' THEN 'a string' WHEN 'OBJECT' THEN 'an object' "
            f"WHEN 'ARRAY' THEN 'an array' WHEN 'BOOLEAN' THEN 'a boolean' ELSE 'a number' END",
        ),
    )


def _const_rule(field: FieldSpec) -> RowRule:
    assert field.const is not None
    text = ident(text_column(field))
    return RowRule(
        f"{field.name}:const",
        f"{text} IS NULL OR {text} = {sql_str(field.const)}",
        _says(f"{field.label} must be '{field.const}', got ", _quoted(text)),
    )


def _identity_rules(field: FieldSpec, placeholders: tuple[str, ...]) -> list[RowRule]:
    name = field.name
    text, trimmed = ident(text_column(field)), ident(name)
    rules = []
    if field.required:
        rules.append(
            RowRule(
                f"{name}:required",
                f"{text} IS NOT NULL",
                _says(f"missing required {field.label} (absent or null)"),
            )
        )
    blocked = ", ".join(sql_str(p) for p in placeholders) or "NULL"
    rules.append(
        RowRule(
            f"{name}:placeholder",
            f"{text} IS NULL OR lower(trim({text})) NOT IN ({blocked})",
            _says(
                f"{field.label} is a placeholder identity (",
                _quoted(text),
                "): it names nobody in particular, and merging people on it would fuse "
                "strangers; send the person's real identity or leave the line out",
            ),
        )
    )
    rules.append(
        RowRule(
            f"{name}:length",
            f"{trimmed} IS NULL OR length({trimmed}) <= {MAX_IDENTITY_CHARS}",
            _says(
                f"{field.label} is longer than {MAX_IDENTITY_CHARS} characters (",
                f"length({trimmed})::VARCHAR",
                f" characters): an identity is at most {MAX_IDENTITY_CHARS} characters",
            ),
        )
    )
    return rules


def _rules_for(field: FieldSpec, feed: FeedSpec) -> list[RowRule]:
    # A value of the wrong JSON type is told that alone: its text says nothing more.
    typed = [_json_type_rule(field)] if feed.strict_json else []
    if field.const is not None:
        typed.append(_const_rule(field))
    if feed.strict_json:
        json_ok = f"({typed[0].passes})"
        return typed + [
            RowRule(r.name, f"NOT {json_ok} OR ({r.passes})", r.reason)
            for r in _value_rules(field, feed)
        ]
    return typed + _value_rules(field, feed)


def _value_rules(field: FieldSpec, feed: FeedSpec) -> list[RowRule]:
    name = field.name
    if field.kind == "identity":
        return _identity_rules(field, feed.placeholder_identities)
    # Field text arrives trimmed, blank as NULL (see validation_columns_sql).
    raw, typed = ident(name), ident(typed_column(field))
    present = f"{raw} IS NOT NULL"
    value = _quoted(raw)
    rules: list[RowRule] = []
    if field.required:
        rules.append(
            RowRule(
                f"{name}:required",
                present,
                _says(f"missing required {field.label} (absent, null or empty)"),
            )
        )
    if field.kind in TYPE_NAMES:
        rules.append(
            RowRule(
                f"{name}:type",
                f"NOT ({present}) OR {typed} IS NOT NULL",
                _says(f"{field.label} must be {type_name(field)}, got ", value),
            )
        )
    if field.kind == "unix_seconds":
        rules.append(
            RowRule(
                f"{name}:milliseconds",
                f"NOT coalesce({typed} >= {MILLISECONDS_FROM}, false)",
                _says(f"{field.label} looks like milliseconds (", value, "): send Unix seconds"),
            )
        )
        rules.append(
            RowRule(
                f"{name}:range",
                f"NOT coalesce({typed} < 0 OR ({typed} >= {MAX_UNIX_SECONDS} AND "
                f"{typed} < {MILLISECONDS_FROM}), false)",
                _says(
                    f"{field.label} is out of range (",
                    value,
                    "): expected Unix seconds between 1970 and 2286",
                ),
            )
        )
    if field.kind == "email":
        matches = f"regexp_matches({raw}, {sql_str(EMAIL_PATTERN)})"
        rules.append(
            RowRule(
                f"{name}:email",
                f"NOT ({present}) OR coalesce({matches}, false)",
                _says(f"{field.label} is not an email address, got ", value),
            )
        )
    return rules


def row_rules(feed: FeedSpec) -> list[RowRule]:
    """The field rules in declaration order, then the record rules."""
    rules = [rule for field in feed.fields for rule in _rules_for(field, feed)]
    # A record rule speaks only for records whose fields pass: a line whose `_p` is missing
    # is told that, not also that it says nothing.
    fields_pass = " AND ".join(f"({r.passes})" for r in rules) or "true"
    for rule in feed.record_rules:
        rules.append(
            RowRule(rule.name, f"NOT ({fields_pass}) OR ({rule.passes})", _says(rule.reason))
        )
    return rules


def rule_failures_sql(feed: FeedSpec) -> str:
    """SQL over the validation columns: every rule the row breaks, reasons joined with '; ' in
    declaration order; NULL when the row passes them all."""
    rules = row_rules(feed)
    if not rules:
        return "NULL::VARCHAR"
    failing = ", ".join(f"CASE WHEN NOT ({r.passes}) THEN {r.reason} END" for r in rules)
    return f"nullif(concat_ws('; ', {failing}), '')"


def _validation_columns(feed: FeedSpec) -> dict[str, str]:
    """What the rules look at, by column name: each field trimmed (blank as NULL) and, for
    typed fields, its typed value (SQL over a record's field texts)."""
    columns: dict[str, str] = {}
    json_paths: list[str] = []
    if feed.strict_json:
        # One json_type call for every field: one parse of the line, not one per field (2.3x
        # faster over 2M lines of five fields). `raw` is the line's JSON text (a stream takes
        # JSON lines only: parsing.open_records refuses CSV); filled in below.
        columns[JSON_TYPES_COLUMN] = ""
    for field in feed.fields:
        columns[field.name] = f"nullif(trim({ident(field.name)}), '')"
        if field.kind in TYPE_NAMES:
            columns[typed_column(field)] = typed_sql(field)
        if field.kind == "identity" or field.const is not None:
            columns[text_column(field)] = ident(field.name)
        if feed.strict_json:
            # an item of the one list of JSON types (below), by DuckDB's lateral column alias
            columns[json_type_column(field)] = f"{ident(JSON_TYPES_COLUMN)}[{len(json_paths) + 1}]"
            json_paths.append(sql_str(json_path(field.name)))
    if json_paths:
        columns[JSON_TYPES_COLUMN] = (
            f"CASE WHEN error IS NULL THEN json_type(raw, [{', '.join(json_paths)}]) END"
        )
    if feed.record_rules:  # they may look at the extras
        columns[feed.extras_column] = ident(feed.extras_column)
    return columns


def validation_columns_sql(feed: FeedSpec) -> list[str]:
    """SELECT items giving the columns the rules read."""
    return [f"{sql} AS {ident(name)}" for name, sql in _validation_columns(feed).items()]


def validation_columns(feed: FeedSpec) -> list[str]:
    return list(_validation_columns(feed))


# --- the same rules as a pandera schema --------------------------------------------------------


def _rule_check(rule: RowRule) -> pandera.Check:
    import duckdb
    import pandera.pandas as pandera

    def check(frame: pandas.DataFrame) -> pandas.Series:
        con = duckdb.connect()
        try:
            con.register("frame", frame)
            return con.execute(f"SELECT ({rule.passes}) AS ok FROM frame").df()["ok"]
        finally:
            con.close()

    return pandera.Check(check, name=rule.name, error=rule.name)


def row_rules_schema(feed: FeedSpec) -> pandera.DataFrameSchema:
    """The feed's rules as a pandera schema over a frame of validation columns
    (validation_columns): one named check per rule, each running the rule's SQL."""
    import pandera.pandas as pandera

    columns = {"line_number": pandera.Column(int)}
    for name in validation_columns(feed):
        columns[name] = pandera.Column(nullable=True)
    checks = [_rule_check(rule) for rule in row_rules(feed)]
    return pandera.DataFrameSchema(columns, checks=checks, name=f"{feed.name}_rows")


def failing_rows(feed: FeedSpec, frame: pandas.DataFrame) -> dict[int, str]:
    """line_number -> reason for the frame's rows that break a rule, by the pandera schema
    (lazy validation; reasons in declaration order, joined like the bronze pass's)."""
    import duckdb
    import pandera.pandas as pandera

    try:
        row_rules_schema(feed).validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    else:
        return {}
    rules = {r.name: r for r in row_rules(feed)}
    failing: dict[int, list[str]] = {}
    cases = cases[cases["index"].notna() & cases["check"].isin(list(rules))]
    con = duckdb.connect()
    try:
        con.register("frame", frame)
        lines = frame["line_number"].tolist()
        for name in rules:  # declaration order
            indexes = sorted({int(i) for i in cases.loc[cases["check"] == name, "index"]})
            if not indexes:
                continue
            reasons = con.execute(f"SELECT {rules[name].reason} FROM frame").fetchall()
            for i in indexes:
                failing.setdefault(lines[i], []).append(reasons[i][0])
    finally:
        con.close()
    return {line: "; ".join(reasons) for line, reasons in sorted(failing.items())}
