"""Configured imports from a client's S3 folder (the moto server, with IAM authentication on and
the import's own credentials): users (registered and anonymous) and events, every data type,
skipped columns, columns missing from the manifest or the file, a bad value of each type. The
warehouse must hold exactly what an independent expectation computed here says."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import boto3
import moto.settings
import pytest

from ingest_pipeline.feeds import DEFAULT_PLACEHOLDER_IDENTITIES
from ingest_pipeline_tests.import_setup import EVENTS_MANIFEST, ImportSetup, csv_file, make_setup

BUCKET = "client-exports"
EVENT = "MOE_APP_OPENED"
TRUE, FALSE = {"true", "yes", "1", "t", "y"}, {"false", "no", "0", "f", "n"}


@pytest.fixture
def client_s3(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The client's bucket, then IAM authentication switched on: only the IAM user's key (in
    CLIENT_KEY_ID / CLIENT_SECRET) is let in. Yields an S3 client with that key."""
    iam = boto3.client("iam")
    user = f"ingest-{datetime.now().timestamp():.0f}"
    iam.create_user(UserName=user)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:Get*", "s3:List*", "s3:Put*"], "Resource": "*"}
        ],
    }
    iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    s3 = boto3.client("s3")
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    for obj in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
    monkeypatch.setenv("CLIENT_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("CLIENT_SECRET", key["SecretAccessKey"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-key-moto-knows")  # ours: must not be used
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    yield boto3.client(
        "s3", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"]
    )


def _import(name: str, folder: str, **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "folder": f"s3://{BUCKET}/{folder}",
        "s3_access_key_env": "CLIENT_KEY_ID",
        "s3_secret_key_env": "CLIENT_SECRET",
        "s3_region": "us-east-1",
        "tenant": "acme",
        **kw,
    }


# --- the independent expectation ------------------------------------------------------------


def _blank(value: str) -> bool:
    return value.strip() == ""


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _boolean(value: str) -> bool | None:
    text = value.strip().lower()
    return True if text in TRUE else False if text in FALSE else None


def _time(value: str, fmt: str, zone: str = "UTC") -> datetime | None:
    try:
        parsed = datetime.strptime(value.strip(), fmt)
    except ValueError:
        return None
    return parsed.replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _identity(value: str) -> str | None:
    text = value.strip()
    if value.strip().lower() in DEFAULT_PLACEHOLDER_IDENTITIES or len(text) > 255:
        return None
    return text


def _convert(
    row: dict[str, str], types: dict[str, tuple[str, str, str | None]], zone: str
) -> dict[str, Any] | None:
    """attribute -> value for one CSV row, None when a value does not convert (the row is
    rejected). `types`: column -> (attribute, type, format)."""
    out: dict[str, Any] = {}
    for column, (attribute, kind, fmt) in types.items():
        if column not in row or _blank(row[column]):
            continue
        value = row[column]
        if kind == "number":
            converted: Any = _number(value)
        elif kind == "boolean":
            converted = _boolean(value)
        elif kind == "datetime":
            assert fmt is not None
            converted = _time(value, fmt, zone)
        else:
            converted = value.strip()
        if converted is None:
            return None
        out[attribute] = converted
    return out


def _types(manifest: dict[str, Any]) -> dict[str, tuple[str, str, str | None]]:
    return {
        column: (spec["attribute"], spec.get("type", "string"), spec.get("format"))
        for column, spec in manifest["columns"].items()
        if spec != "skip"
    }


# --- events ---------------------------------------------------------------------------------

HEADER = ["USER_ID", "EVENT_TS", "AMOUNT", "IS_PAID", "PAID_AT", "PLAN", "INTERNAL", "EXTRA"]
ROWS = [
    ["u1", "2026-01-01 10:00:00", "12.5", "yes", "03/01/2026", "pro", "x", "e1"],
    ["u2", "2026-01-01 11:00:00", "7", "NO", "", " basic ", "x", "e2"],
    ["u3", "2026-01-01 12:00:00", "", "True", "", "", "x", ""],
    ["u4", "2026-01-01 13:00:00", "1e3", "0", "31/12/2025", "pro", "x", ""],
    ["u1", "2026-01-01 10:00:00", "99", "no", "", "dup", "x", ""],  # duplicate of line 2
    ["u5", "2026-01-01 14:00:00", "abc", "yes", "", "", "x", ""],  # bad number
    ["u6", "2026-01-01 15:00:00", "NaN", "yes", "", "", "x", ""],  # not a finite number
    ["u7", "2026-01-01 16:00:00", "1", "maybe", "", "", "x", ""],  # bad boolean
    ["u8", "01/01/2026 16:00", "1", "1", "", "", "x", ""],  # event time not in its format
    ["u9", "2026-01-01 17:00:00", "1", "1", "2026-01-03", "", "x", ""],  # bad datetime
    ["", "2026-01-01 18:00:00", "1", "1", "", "", "x", ""],  # no user id
    ["guest", "2026-01-01 19:00:00", "1", "1", "", "", "x", ""],  # placeholder identity
    ["u10", "", "1", "1", "", "", "x", ""],  # no event time
]


def _expected_events(rows: list[list[str]], zone: str = "UTC") -> tuple[list[dict], set[int]]:
    types = _types(EVENTS_MANIFEST)
    kept: dict[tuple[str, datetime], dict[str, Any]] = {}
    rejected: set[int] = set()
    for line, values in enumerate(rows, start=2):
        row = dict(zip(HEADER, values, strict=True))
        converted = _convert(row, types, zone)
        user = _identity(row["USER_ID"])
        if converted is None or user is None or "event_time" not in converted:
            rejected.add(line)
            continue
        key = (user, converted["event_time"])
        if key in kept:
            continue  # within a file the first occurrence wins
        properties = {
            k: _iso(v) if isinstance(v, datetime) else v
            for k, v in converted.items()
            if k not in ("user_id", "event_time")
        }
        kept[key] = {
            "tenant_id": "acme",
            "contact_key": user,
            "event_text": EVENT,
            "event_timestamp": converted["event_time"],
            "properties": properties,
            "line_number": line,
        }
    return sorted(kept.values(), key=lambda r: r["line_number"]), rejected


def _events_setup(tmp_path: Path, **kw: Any) -> ImportSetup:
    return make_setup(
        tmp_path,
        [_import("opened", "exports/events", type="events", event_name=EVENT, **kw)],
        {"m.yaml": EVENTS_MANIFEST},
        tenants={"acme": {}},
    )


def _stored_events(setup: ImportSetup) -> list[dict[str, Any]]:
    rows = setup.query(
        "SELECT tenant_id, contact_key, event_text, event_timestamp, properties, line_number "
        "FROM events ORDER BY line_number"
    )
    for r in rows:
        r["properties"] = json.loads(r["properties"])
    return rows


def test_events_import_holds_exactly_the_expected_rows(tmp_path: Path, client_s3: Any) -> None:
    client_s3.put_object(
        Bucket=BUCKET, Key=f"exports/events/{EVENT}_20260101120000.csv", Body=csv_file(HEADER, ROWS)
    )
    setup = _events_setup(tmp_path, manifest="m.yaml")
    result = setup.run("opened")
    assert result.summary.error is None
    expected, rejected = _expected_events(ROWS)
    assert _stored_events(setup) == expected
    stored_rejects = setup.query("SELECT line_number, reason, raw FROM rejected_rows")
    assert {r["line_number"] for r in stored_rejects} == rejected
    reasons = {r["line_number"]: r["reason"] for r in stored_rejects}
    # each bad value's reason names the column, the value and the expected type
    assert "column 'AMOUNT' (attribute 'amount') must be a number, got 'abc'" in reasons[7]
    assert "column 'AMOUNT'" in reasons[8] and "'NaN'" in reasons[8]
    assert "column 'IS_PAID'" in reasons[9] and "got 'maybe'" in reasons[9]
    assert "true/false, yes/no or 1/0" in reasons[9]
    assert "format '%Y-%m-%d %H:%M:%S', got '01/01/2026 16:00'" in reasons[10]
    assert "column 'PAID_AT' (attribute 'paid_at')" in reasons[11]
    assert "format '%d/%m/%Y'" in reasons[11]
    assert "missing required column 'USER_ID'" in reasons[12]
    assert "placeholder identity" in reasons[13]
    assert "missing required column 'EVENT_TS'" in reasons[14]
    [ledger] = setup.query("SELECT * FROM ingested_files")
    assert ledger["feed"] == "import_opened" and ledger["tenant_id"] == "acme"
    assert ledger["status"] == "ingested"
    assert ledger["source_uri"] == f"s3://{BUCKET}/exports/events/{EVENT}_20260101120000.csv"
    assert ledger["rows_read"] == len(ROWS)
    assert ledger["rows_loaded"] == len(expected)
    assert ledger["rows_duplicate"] == 1
    assert ledger["rows_rejected"] == len(rejected)
    # INTERNAL is skipped, EXTRA is in no mapping: neither is imported, the report says so
    assert ledger["notes"] == "columns not imported (not mapped): INTERNAL, EXTRA"
    assert all(
        "INTERNAL" not in r["properties"] and "EXTRA" not in r["properties"] for r in expected
    )
    [line] = result.summary.files
    assert (line.status, line.rows_loaded, line.rows_rejected) == (
        "ingested",
        len(expected),
        len(rejected),
    )
    # events are identities of the graph, like every feed's
    identities = {r["contact_key"] for r in setup.query("SELECT contact_key FROM identities")}
    assert identities == {r["contact_key"] for r in expected}


def test_event_times_without_an_offset_are_in_the_imports_timezone(
    tmp_path: Path, client_s3: Any
) -> None:
    rows = [ROWS[0], ROWS[3]]
    client_s3.put_object(
        Bucket=BUCKET, Key=f"exports/events/{EVENT}_20260101120000.csv", Body=csv_file(HEADER, rows)
    )
    setup = _events_setup(tmp_path, manifest="m.yaml", timezone="America/New_York")
    setup.run("opened")
    expected, _ = _expected_events(rows, zone="America/New_York")
    stored = _stored_events(setup)
    assert stored == expected
    assert stored[0]["event_timestamp"] == datetime(2026, 1, 1, 15, 0, tzinfo=UTC)


def test_a_mandatory_column_missing_from_a_file_fails_that_file_alone(
    tmp_path: Path, client_s3: Any
) -> None:
    no_time = [h for h in HEADER if h != "EVENT_TS"]
    client_s3.put_object(
        Bucket=BUCKET,
        Key=f"exports/events/{EVENT}_20260101120000.csv",
        Body=csv_file(no_time, [["u1", "1", "yes", "", "pro", "x", ""]]),
    )
    client_s3.put_object(
        Bucket=BUCKET,
        Key=f"exports/events/{EVENT}_20260102120000.csv",
        Body=csv_file(HEADER, ROWS[:1]),
    )
    setup = _events_setup(tmp_path, manifest="m.yaml")
    result = setup.run("opened")
    status = {f.name: (f.status, f.error) for f in result.summary.files}
    assert status[f"{EVENT}_20260102120000.csv"][0] == "ingested"
    failed_status, error = status[f"{EVENT}_20260101120000.csv"]
    assert failed_status == "failed"
    assert error is not None and "no column 'EVENT_TS' (mapped to event_time)" in error
    assert len(_stored_events(setup)) == 1


def test_each_name_is_processed_once_and_other_names_are_listed_as_ignored(
    tmp_path: Path, client_s3: Any
) -> None:
    folder = "exports/events"
    first = f"{EVENT}_20260101120000.csv"
    client_s3.put_object(Bucket=BUCKET, Key=f"{folder}/{first}", Body=csv_file(HEADER, ROWS[:1]))
    client_s3.put_object(
        Bucket=BUCKET,
        Key=f"{folder}/archive/{EVENT}_20251231120000.csv",
        Body=csv_file(HEADER, ROWS[1:2]),
    )
    client_s3.put_object(Bucket=BUCKET, Key=f"{folder}/README.txt", Body=b"hello")
    client_s3.put_object(Bucket=BUCKET, Key=f"{folder}/{EVENT}_2026-01-01.csv", Body=b"a,b\n1,2\n")
    client_s3.put_object(Bucket=BUCKET, Key=f"{folder}/OTHER_20260101120000.csv", Body=b"a\n1\n")
    client_s3.put_object(  # another folder that begins with the same text
        Bucket=BUCKET, Key=f"{folder}-old/{EVENT}_20260101120000.csv", Body=csv_file(HEADER, ROWS)
    )
    setup = _events_setup(tmp_path, manifest="m.yaml")
    result = setup.run("opened")
    assert [f.name for f in result.summary.files] == [first]
    ignored = dict(result.summary.ignored)
    assert ignored["archive/"] == "in a sub-folder: imports never look inside sub-folders"
    assert "does not begin with 'MOE_APP_OPENED_'" in ignored["README.txt"]
    assert "does not begin with" in ignored["OTHER_20260101120000.csv"]
    assert (
        "'2026-01-01' does not match the file-name datetime format"
        in ignored[f"{EVENT}_2026-01-01.csv"]
    )
    assert len(ignored) == 4
    assert [r["contact_key"] for r in _stored_events(setup)] == ["u1"]

    # The same name uploaded again with other content is not processed again (vendor FAQ)...
    client_s3.put_object(Bucket=BUCKET, Key=f"{folder}/{first}", Body=csv_file(HEADER, ROWS[1:4]))
    second = f"{EVENT}_20260102120000.csv"
    client_s3.put_object(Bucket=BUCKET, Key=f"{folder}/{second}", Body=csv_file(HEADER, ROWS[3:4]))
    again = setup.run("opened")
    assert again.plan.already == [first]
    assert [f.name for f in again.summary.files] == [second]
    assert sorted(r["contact_key"] for r in _stored_events(setup)) == ["u1", "u4"]
    # ... unless an operator forces it (run config `files`)
    forced = setup.run("opened", names=[first])
    assert [f.name for f in forced.summary.files] == [first]
    assert sorted(r["contact_key"] for r in _stored_events(setup)) == ["u1", "u2", "u3", "u4"]
    # and a failed file is not taken again either
    client_s3.put_object(Bucket=BUCKET, Key=f"{folder}/{EVENT}_20260103120000.csv", Body=b"")
    third = setup.run("opened")
    assert [(f.name, f.status) for f in third.summary.files] == [
        (f"{EVENT}_20260103120000.csv", "failed")
    ]
    assert setup.run("opened").summary.files == ()


USERS_MANIFEST = {
    "columns": {
        "ID": {"attribute": "user_id", "type": "string"},
        "ANON": {"attribute": "anonymous_id", "type": "string"},
        "MAIL": {"attribute": "email", "type": "string"},
        "SIGNED_UP": {"attribute": "signed_up", "type": "datetime", "format": "%Y-%m-%d %H:%M"},
        "LTV": {"attribute": "ltv", "type": "number"},
        "VIP": {"attribute": "vip", "type": "boolean"},
        "CITY": {"attribute": "city", "type": "string"},
        "SECRET": "skip",
    }
}
USERS_HEADER = ["ID", "ANON", "MAIL", "SIGNED_UP", "LTV", "VIP", "CITY", "SECRET"]
USERS = [
    ["r1", "a1", "r1@example.com", "2026-01-01 10:00", "100", "yes", "Pune", "s"],
    ["r2", "a2", "", "2026-01-02 10:00", "", "no", "", "s"],
    ["r1", "a1", "", "", "250.5", "", "Delhi", "s"],  # later line: newer values, blanks kept
    ["r3", "a3", "", "2026-13-01 10:00", "1", "1", "", "s"],  # bad datetime
    ["r4", "a4", "", "", "lots", "", "", "s"],  # bad number
    ["r5", "a5", "", "", "", "si", "", "s"],  # bad boolean
    ["", "a6", "", "", "", "", "Goa", "s"],  # registered: no user id; anonymous: fine
]


def _expected_users(
    manifest: dict[str, Any], key_column: str, anonymous: bool, zone: str
) -> dict[str, dict[str, Any]]:
    """Per person the newest non-blank value of each mapped attribute (later lines are newer);
    the key's own attribute is the contact key, every other mapped column an attribute."""
    types = _types(manifest)
    mandatory = types[key_column][0]
    people: dict[str, dict[str, Any]] = {}
    for values in USERS:
        row = dict(zip(USERS_HEADER, values, strict=True))
        converted = _convert(row, types, zone)
        key = _identity(row[key_column])
        if converted is None or key is None:
            continue
        attributes = people.setdefault(key, {})
        for attribute, value in converted.items():
            if attribute != mandatory:
                attributes[attribute] = _iso(value) if isinstance(value, datetime) else value
        attributes["anonymous"] = anonymous
    return people


@pytest.mark.parametrize("kind", ["registered", "anonymous"])
def test_users_import_holds_exactly_the_expected_contacts(
    tmp_path: Path, client_s3: Any, kind: str
) -> None:
    prefix = f"{kind}_users"
    client_s3.put_object(
        Bucket=BUCKET,
        Key=f"crm/users/{prefix}_2026-01-05.csv.gz",
        Body=__import__("gzip").compress(csv_file(USERS_HEADER, USERS)),
    )
    manifest = json.loads(json.dumps(USERS_MANIFEST))
    if kind == "registered":
        del manifest["columns"]["ANON"]
    setup = make_setup(
        tmp_path,
        [
            _import(
                "people",
                "crm/users",
                type="users",
                user_kind=kind,
                manifest="users.yaml",
                datetime_format="%Y-%m-%d",
                timezone="Asia/Kolkata",
            )
        ],
        {"users.yaml": manifest},
        tenants={"acme": {}},
    )
    result = setup.run("people")
    [line] = result.summary.files
    assert line.status == "ingested", line.error
    key_column = "ID" if kind == "registered" else "ANON"
    expected = _expected_users(manifest, key_column, kind == "anonymous", "Asia/Kolkata")
    stored = {
        r["contact_key"]: r
        for r in setup.query("SELECT contact_key, tenant_id, email, attributes FROM contacts")
    }
    assert set(stored) == set(expected)
    for key, attributes in expected.items():
        row = stored[key]
        assert row["tenant_id"] == "acme"
        # `email` is the contacts column (as every feed's), the rest the attributes JSON
        assert row["email"] == attributes.pop("email", None)
        assert json.loads(row["attributes"]) == attributes
    if kind == "registered":
        assert expected["r1"] == {
            "signed_up": "2026-01-01T04:30:00Z",
            "ltv": 250.5,
            "vip": True,
            "city": "Delhi",
            "anonymous": False,
        }
    else:
        assert expected["a6"] == {"city": "Goa", "anonymous": True}
        assert expected["a1"]["user_id"] == "r1"  # a mapped column like any other
    rejected = {r["line_number"] for r in setup.query("SELECT line_number FROM rejected_rows")}
    assert rejected == ({5, 6, 7, 8} if kind == "registered" else {5, 6, 7})


def test_wrong_credentials_are_the_vendors_message_and_nothing_is_taken(
    tmp_path: Path, client_s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client_s3.put_object(
        Bucket=BUCKET, Key=f"exports/events/{EVENT}_20260101120000.csv", Body=csv_file(HEADER, ROWS)
    )
    monkeypatch.setenv("CLIENT_KEY_ID", "AKIANOTAREALKEY00000")
    setup = _events_setup(tmp_path, manifest="m.yaml")
    result = setup.run("opened")
    assert result.summary.error is not None
    assert result.summary.error.startswith("Given S3 access key is not valid")
    assert setup.query("SELECT * FROM ingested_files") == []
    wrong_folder = make_setup(
        tmp_path / "other",
        [_import("opened", "no/such/folder", type="events", event_name=EVENT, manifest="m.yaml")],
        {"m.yaml": EVENTS_MANIFEST},
        tenants={"acme": {}},
    )
    monkeypatch.setenv("CLIENT_KEY_ID", client_s3._request_signer._credentials.access_key)
    assert wrong_folder.run("opened").summary.files == ()
