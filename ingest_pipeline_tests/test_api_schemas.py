"""The API streams' JSON Schemas and the pipeline's row rules come from one declaration: on any
record, the schema (what the API checks) and the bronze pass (what the pipeline checks in an
uploaded file) give the same verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest_pipeline.api.schemas import DIALECT, stream_schema
from ingest_pipeline.bronze import SourceFile, process_file
from ingest_pipeline.feeds import API_STREAMS, FeedSpec, configured
from ingest_pipeline_tests.helpers import T0

# Values on every rule's edge: blanks (what trim() removes and what it keeps), placeholders in
# any case, lengths around the identity limit, e-mail shapes, numbers around the Unix-seconds
# range and milliseconds, and every JSON type.
STRINGS = [
    "",
    " ",
    "\u00a0",
    "\u3000x\u3000",
    "\t",
    "x",
    " x ",
    "null",
    " NULL ",
    "Anonymous",
    "n/a",
    "[object Object]",
    "a@b.co",
    " a@b.co ",
    "a b@c.d",
    "a@b",
    "a\u00a0@b.co",
    "x" * 255,
    " " + "x" * 255 + " ",
    "x" * 256,
    "é" * 255,
    "é" * 256,
    "contact_event",
    "account",
]
OTHERS = [
    0,
    -1,
    1_700_000_000,
    1_700_000_000.5,
    9_999_999_999.5,
    10_000_000_000,
    1e11,
    1_700_000_000_000,
    1e300,
    True,
    False,
    None,
    {},
    {"a": 1, "b": [1, 2]},
    [],
    ["x"],
]
ABSENT = object()


def _verdicts_of_pipeline(feed: FeedSpec, records: list[dict[str, Any]], tmp: Path) -> list[bool]:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "f.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    source = SourceFile(
        uri=str(path),
        etag="e",
        key=f"{feed.landing_prefix}f.jsonl",
        landed_at=T0,
        size=path.stat().st_size,
        tenant_id="t",
    )
    report = process_file(path, source, feed, tmp / "work")
    assert report.rows_read == len(records)
    rejected = set(report.rejects["line_number"].to_pylist())
    return [i + 1 not in rejected for i in range(len(records))]


def _record_strategy(feed: FeedSpec) -> st.SearchStrategy[dict[str, Any]]:
    value = st.sampled_from([*STRINGS, *OTHERS, ABSENT])
    fields = st.fixed_dictionaries({f.name: value for f in feed.fields})
    extra = st.sampled_from([None, "colour", "type2"])

    def build(parts: tuple[dict[str, Any], str | None]) -> dict[str, Any]:
        values, key = parts
        record = {k: v for k, v in values.items() if v is not ABSENT}
        if key:
            record[key] = "red"
        return record

    return st.tuples(fields, extra).map(build)


def _valid_base(feed: FeedSpec) -> dict[str, Any]:
    return dict(feed.example)


@pytest.mark.parametrize("stream", list(API_STREAMS))
@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_schema_and_row_rules_agree_on_every_record(
    stream: str, data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    feed = API_STREAMS[stream]
    validator = jsonschema_rs.validator_for(stream_schema(stream))
    # mostly valid records with one field changed, and fully random ones
    base = _valid_base(feed)
    names = [f.name for f in feed.fields]
    one_change = st.tuples(
        st.sampled_from(names), st.sampled_from([*STRINGS, *OTHERS, ABSENT])
    ).map(
        lambda change: {k: v for k, v in {**base, change[0]: change[1]}.items() if v is not ABSENT}
    )
    records = data.draw(
        st.lists(st.one_of(one_change, _record_strategy(feed)), min_size=20, max_size=60)
    )
    by_pipeline = _verdicts_of_pipeline(feed, records, tmp_path_factory.mktemp("parity"))
    by_schema = [validator.is_valid(r) for r in records]
    disagreements = [
        (r, s, p) for r, s, p in zip(records, by_schema, by_pipeline, strict=True) if s != p
    ]
    assert not disagreements, disagreements[:5]


def test_every_edge_value_in_every_field_agrees(tmp_path: Path) -> None:
    """Deterministically: each edge value in each field of a valid record, every stream."""
    for stream, feed in API_STREAMS.items():
        validator = jsonschema_rs.validator_for(stream_schema(stream))
        records = [_valid_base(feed)]
        for f in feed.fields:
            for value in [*STRINGS, *OTHERS, ABSENT]:
                changed = {**_valid_base(feed), f.name: value}
                records.append({k: v for k, v in changed.items() if v is not ABSENT})
        records.append({**_valid_base(feed), "unknown": 1})
        by_pipeline = _verdicts_of_pipeline(feed, records, tmp_path / stream)
        by_schema = [validator.is_valid(r) for r in records]
        assert by_schema[0] and by_pipeline[0], stream  # the example is valid
        assert by_schema == by_pipeline, [
            (r, s) for r, s, p in zip(records, by_schema, by_pipeline, strict=True) if s != p
        ][:5]
        assert by_schema.count(False) > len(feed.fields)  # the edges do refuse things


def test_configured_placeholders_change_both_alike(tmp_path: Path) -> None:
    placeholders = ("unknown", "")
    feed = configured(API_STREAMS["contact"], placeholders)
    validator = jsonschema_rs.validator_for(stream_schema("contact", placeholders))
    records = [{"contact_id": v} for v in ("unknown", " UNKNOWN ", "anonymous", "null", "ok", " ")]
    by_schema = [validator.is_valid(r) for r in records]
    assert by_schema == [False, False, True, True, True, False]
    assert _verdicts_of_pipeline(feed, records, tmp_path) == by_schema


def test_schemas_are_draft_2020_12_and_their_examples_valid() -> None:
    for stream, feed in API_STREAMS.items():
        schema = stream_schema(stream)
        assert schema["$schema"] == DIALECT
        # a well-formed 2020-12 schema (its patterns use \p{..}, which Python's re, behind the
        # meta-schema's "regex" format, does not know)
        jsonschema.Draft202012Validator.check_schema(schema, format_checker=None)
        assert jsonschema_rs.validator_for(schema).is_valid(feed.example)
        assert set(schema["properties"]) == {f.name for f in feed.fields}
        assert schema["additionalProperties"] is False


def test_a_csv_file_for_a_stream_is_refused_whole(tmp_path: Path) -> None:
    feed = API_STREAMS["contact"]
    path = tmp_path / "f.csv"
    path.write_text("contact_id,email\nc1,a@b.co\n")
    source = SourceFile(
        uri=str(path), etag="e", key=f"{feed.landing_prefix}f.csv", landed_at=T0,
        size=path.stat().st_size, tenant_id="t",
    )  # fmt: skip
    report = process_file(path, source, feed, tmp_path / "work")
    assert report.status == "failed"
    assert "JSON lines" in (report.error or "")
