"""Row rules of each feed as pandera schemas, built from the feed declarations.

DuckDB does the casting (`TRY_CAST`, NULL when a value does not convert); the pandera schema holds
the rules a row must satisfy (required fields present and non-empty, values of the declared type,
emails that look like emails, timestamps in Unix seconds) and names the failing rows. Only the
declared fields travel to pandas, in bounded chunks, so memory does not grow with the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow

from ingest_pipeline.feeds import FeedSpec, FieldSpec
from ingest_pipeline.parsing import ident

EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
# Unix seconds accepted: 1970-01-01 up to 2286-11-20. Values from 1e11 on look like milliseconds.
MAX_UNIX_SECONDS = 1e10
MILLISECONDS_FROM = 1e11

TYPE_NAMES = {
    "unix_seconds": "Unix seconds (a number)",
    "timestamp": "a timestamp (ISO 8601 or Unix seconds)",
    "boolean": "true or false",
    "number": "a number",
}

CHUNK_ROWS = 200_000


def typed_sql(field: FieldSpec) -> str:
    """SQL over the staged text column giving the typed value, NULL when it does not convert."""
    col = f"nullif(trim({ident(field.name)}), '')"
    if field.kind == "unix_seconds":
        return f"TRY_CAST({col} AS DOUBLE)"
    if field.kind == "timestamp":
        seconds = f"TRY_CAST({col} AS DOUBLE)"
        return (
            f"coalesce(TRY_CAST({col} AS TIMESTAMPTZ), CASE WHEN {seconds} >= 0 AND {seconds} < "
            f"{MAX_UNIX_SECONDS} THEN to_timestamp({seconds}) END)"
        )
    if field.kind == "boolean":
        return f"TRY_CAST({col} AS BOOLEAN)"
    if field.kind == "number":
        return f"TRY_CAST({col} AS DOUBLE)"
    return ident(field.name)


def typed_column(field: FieldSpec) -> str:
    return f"{field.name}__typed"


@dataclass(frozen=True)
class RowRule:
    """One rule: a vectorised test over a chunk and the reason shown for the rows that fail it."""

    name: str
    passes: Callable[[pd.DataFrame], pd.Series]
    reason: Callable[[pd.DataFrame], pd.Series]


def _quoted(values: pd.Series) -> pd.Series:
    text = values.astype("string").str.slice(0, 80)
    return "'" + text.fillna("") + "'"


def _rules_for(field: FieldSpec) -> list[RowRule]:
    raw, typed = field.name, typed_column(field)
    # Field text arrives trimmed, blank as null (see validate_staged).
    present = lambda df: df[raw].notna()  # noqa: E731
    rules: list[RowRule] = []
    if field.required:
        rules.append(
            RowRule(
                f"{raw}:required",
                lambda df: present(df).fillna(False),
                lambda df: pd.Series(
                    f"missing required field '{raw}' (absent, null or empty)", index=df.index
                ),
            )
        )
    if field.kind in TYPE_NAMES:
        rules.append(
            RowRule(
                f"{raw}:type",
                lambda df: (~present(df).fillna(False)) | df[typed].notna(),
                lambda df: (
                    f"field '{raw}' must be {TYPE_NAMES[field.kind]}, got " + _quoted(df[raw])
                ),
            )
        )
    if field.kind == "unix_seconds":
        rules.append(
            RowRule(
                f"{raw}:milliseconds",
                lambda df: ~(df[typed] >= MILLISECONDS_FROM).fillna(False),
                lambda df: (
                    f"field '{raw}' looks like milliseconds ("
                    + _quoted(df[raw])
                    + "): send Unix seconds"
                ),
            )
        )
        rules.append(
            RowRule(
                f"{raw}:range",
                lambda df: (
                    ~(
                        (df[typed] < 0)
                        | ((df[typed] >= MAX_UNIX_SECONDS) & (df[typed] < MILLISECONDS_FROM))
                    ).fillna(False)
                ),
                lambda df: (
                    f"field '{raw}' is out of range ("
                    + _quoted(df[raw])
                    + "): expected Unix seconds between 1970 and 2286"
                ),
            )
        )
    if field.kind == "email":
        rules.append(
            RowRule(
                f"{raw}:email",
                lambda df: (
                    ~present(df).fillna(False) | df[raw].str.match(EMAIL_PATTERN).fillna(False)
                ),
                lambda df: f"field '{raw}' is not an email address, got " + _quoted(df[raw]),
            )
        )
    return rules


def row_rules(feed: FeedSpec) -> list[RowRule]:
    return [rule for field in feed.fields for rule in _rules_for(field)]


def row_rules_schema(feed: FeedSpec) -> pa.DataFrameSchema:
    """The feed's pandera schema: declared columns plus one named check per row rule."""
    columns: dict[str, pa.Column] = {"line_number": pa.Column("int64", nullable=False)}
    for field in feed.fields:
        columns[field.name] = pa.Column(nullable=True)
        if field.kind in TYPE_NAMES:
            columns[typed_column(field)] = pa.Column(nullable=True)
    checks = [pa.Check(rule.passes, name=rule.name, error=rule.name) for rule in row_rules(feed)]
    return pa.DataFrameSchema(columns, checks=checks, name=f"{feed.name}_rows")


def _failing_rows(
    schema: pa.DataFrameSchema, rules: dict[str, RowRule], chunk: pd.DataFrame
) -> pd.DataFrame:
    try:
        schema.validate(chunk, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    else:
        return pd.DataFrame(
            {"line_number": pd.Series(dtype="int64"), "reason": pd.Series(dtype="string")}
        )
    cases = cases[cases["index"].notna() & cases["check"].isin(rules)]
    reasons = []
    for check_name, group in cases.groupby("check", sort=False):
        index = pd.Index(group["index"].astype("int64").unique())
        failing = chunk.loc[index]
        reasons.append(
            pd.DataFrame(
                {
                    "line_number": failing["line_number"].astype("int64").to_numpy(),
                    "reason": rules[check_name].reason(failing).astype("string").to_numpy(),
                    "rule_order": list(rules).index(check_name),
                }
            )
        )
    if not reasons:
        return pd.DataFrame(
            {"line_number": pd.Series(dtype="int64"), "reason": pd.Series(dtype="string")}
        )
    joined = pd.concat(reasons).sort_values(["line_number", "rule_order"])
    # One reason per row: every rule it breaks, in declaration order.
    reason = joined.groupby("line_number", sort=True)["reason"].agg("; ".join)
    return pd.DataFrame({"line_number": reason.index.to_numpy(), "reason": reason.to_numpy()})


def validate_staged(con: duckdb.DuckDBPyConnection, feed: FeedSpec) -> pa_arrow.Table:
    """Check every readable staged row; return (line_number, reason) of those that fail."""
    schema = row_rules_schema(feed)
    rules = {rule.name: rule for rule in row_rules(feed)}
    select = ["line_number"]
    for field in feed.fields:
        select.append(f"nullif(trim({ident(field.name)}), '') AS {ident(field.name)}")
        if field.kind in TYPE_NAMES:
            select.append(f"{typed_sql(field)} AS {ident(typed_column(field))}")
    reader = con.sql(f"SELECT {', '.join(select)} FROM staged WHERE error IS NULL").to_arrow_reader(
        CHUNK_ROWS
    )
    failures: list[pd.DataFrame] = []
    for batch in reader:
        # Arrow-backed columns: no copy into Python strings, vectorised string checks.
        chunk = batch.to_pandas(types_mapper=pd.ArrowDtype)
        if len(chunk):
            failures.append(_failing_rows(schema, rules, chunk))
    if not failures:
        return pa_arrow.table(
            {
                "line_number": pa_arrow.array([], pa_arrow.int64()),
                "reason": pa_arrow.array([], pa_arrow.string()),
            }
        )
    frame = pd.concat(failures, ignore_index=True)
    return pa_arrow.Table.from_pandas(
        frame.astype({"line_number": "int64", "reason": "string"}), preserve_index=False
    ).cast(pa_arrow.schema([("line_number", pa_arrow.int64()), ("reason", pa_arrow.string())]))
