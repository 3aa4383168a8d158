"""The declared row rules run once, in SQL, inside the bronze pass (issue #8); the pandera schema
built from the same declarations (`validation.row_rules_schema`) must fail exactly the rows the
bronze pass quarantines, with exactly the same reasons. Random records over tricky field values,
for every feed with row rules."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest_pipeline import validation
from ingest_pipeline.bronze import SourceFile, process_file
from ingest_pipeline.feeds import FEEDS
from ingest_pipeline.parsing import ident
from ingest_pipeline_tests.helpers import T0

# Field texts that sit on every rule's edge; None leaves the field out of the record.
VALUES = [
    None,
    "",
    "   ",
    "a@b.co",
    " padded@b.co ",
    "not an email",
    "x@y",
    "two@@b.co",
    "nb\u00a0sp@b.co",  # a Unicode space the email rule refuses
    "café@exämple.com",
    "1700000000",
    "1700000000.5",
    "1700000000000",  # milliseconds
    "-5",
    "20000000000",  # past 2286, not milliseconds
    "NaN",
    "inf",
    "2024-01-01T00:00:00Z",
    "2024-13-45",
    "true",
    "no",
    "12.5",
    "1e400",
    "null",  # placeholder identities
    " Anonymous ",
    "x" * 256,  # an identity longer than 255 characters
]


def _feeds_with_rules() -> list[str]:
    return [name for name, feed in FEEDS.items() if validation.row_rules(feed)]


@pytest.mark.parametrize("feed_name", _feeds_with_rules())
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_pandera_schema_fails_the_rows_the_bronze_pass_quarantines(
    feed_name: str, data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    feed = FEEDS[feed_name]
    names = [f.name for f in feed.fields]
    records = data.draw(
        st.lists(
            st.fixed_dictionaries({n: st.sampled_from(VALUES) for n in names}),
            min_size=1,
            max_size=30,
        )
    )
    tmp = tmp_path_factory.mktemp("rules")
    lines = [json.dumps({k: v for k, v in r.items() if v is not None}) for r in records]
    path = tmp / "f.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    source = SourceFile(
        uri=str(path),
        etag="e1",
        key=f"{feed.landing_prefix}f.jsonl",
        landed_at=T0,
        size=path.stat().st_size,
        tenant_id="t",
    )
    report = process_file(path, source, feed, tmp / "work")
    quarantined = {
        int(line): reason
        for line, reason in zip(
            report.rejects["line_number"].to_pylist(),
            report.rejects["reason"].to_pylist(),
            strict=True,
        )
    }

    # The same records as field texts (every value is a JSON string, so the text is the value),
    # with their extras (none), through the rules' input columns, into the pandera schema.
    texts = pa.table(
        {"line_number": list(range(1, len(records) + 1))}
        | {n: pa.array([r[n] for r in records], pa.string()) for n in names}
        | {feed.extras_column: pa.array(["{}"] * len(records), pa.string())}
        # strict-JSON feeds read the JSON types off the line itself
        | {"raw": pa.array(lines, pa.string()), "error": pa.nulls(len(records), pa.string())}
    )
    con = duckdb.connect()
    con.register("texts", texts)
    columns = ", ".join(validation.validation_columns_sql(feed))
    frame = con.execute(f"SELECT line_number, {columns} FROM texts ORDER BY line_number").df()
    con.close()
    by_schema = validation.failing_rows(feed, frame)

    assert by_schema == quarantined
    assert report.rows_read == len(records)
    assert report.rows_rejected == len(quarantined)


def test_the_schema_has_one_named_check_per_declared_rule() -> None:
    crm = FEEDS["crm"]
    schema = validation.row_rules_schema(crm)
    assert [c.name for c in schema.checks] == [r.name for r in validation.row_rules(crm)]
    assert "email:email" in [c.name for c in schema.checks]
    assert set(validation.validation_columns(crm)) | {"line_number"} == set(schema.columns)
    assert all(ident(c) for c in schema.columns)


def test_a_row_breaking_two_rules_gets_both_reasons_in_declaration_order(tmp_path: Path) -> None:
    crm = FEEDS["crm"]
    record = {
        "email": "nope",
        "account": "a",
        "created_at": "2024-01-01",
        "is_worked": "maybe",
        "is_converted": "true",
        "amount": "1",
    }
    path = tmp_path / "leads.jsonl"
    path.write_text(json.dumps(record) + "\n")
    source = SourceFile(
        uri=str(path),
        etag="e",
        key="crm/leads.jsonl",
        landed_at=T0,
        size=path.stat().st_size,
        tenant_id="t",
    )
    report = process_file(path, source, crm, tmp_path / "work")
    assert report.rejects["reason"].to_pylist() == [
        "field 'email' is not an email address, got 'nope'; "
        "field 'is_worked' must be true or false, got 'maybe'"
    ]
