"""ingest.yaml `imports:` and manifests: every problem is a load-time error naming its path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ingest_pipeline.config import ConfigError, parse_config
from ingest_pipeline.imports.naming import file_verdict

MANIFEST = {
    "columns": {
        "UID": {"attribute": "user_id"},
        "TS": {"attribute": "event_time", "type": "datetime", "format": "%Y-%m-%d"},
    }
}


def _load(tmp_path: Path, imports: list[dict[str, Any]], manifest: Any = MANIFEST) -> Any:
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return parse_config({"imports": imports}, base_dir=tmp_path)


def _events(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "opened",
        "type": "events",
        "event_name": "APP_OPENED",
        "folder": "s3://client/exports/events",
        "manifest": "m.yaml",
        **overrides,
    }


def _error(tmp_path: Path, imports: list[dict[str, Any]], manifest: Any = MANIFEST) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, imports, manifest)
    return str(info.value)


def test_a_valid_import_loads_with_its_manifest(tmp_path: Path) -> None:
    config = _load(tmp_path, [_events(notify=["a@example.com"], schedule="daily")])
    imp = config.import_config("opened")
    assert imp.schedule == "0 0 * * *"
    assert imp.file_prefix == "APP_OPENED"
    assert imp.job_name == "import_opened"
    manifest = config.manifest("opened")
    assert [(m.column, m.attribute, m.type) for m in manifest.mappings] == [
        ("UID", "user_id", "string"),
        ("TS", "event_time", "datetime"),
    ]


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("s3://client", "is the root of the bucket"),
        ("s3://client/", "no trailing '/'"),
        ("s3://client/exports/", "no trailing '/'"),
        ("sftp://feeds@127.0.0.1:2222", "is the root of the server"),
        ("ftp://host/path", "use s3://bucket/path"),
        ("/", "not the root"),
    ],
)
def test_folder_rules(tmp_path: Path, folder: str, expected: str) -> None:
    error = _error(tmp_path, [_events(folder=folder)])
    assert "imports[0].folder" in error
    assert expected in error


def test_sftp_folder_needs_a_secret_and_credentials_match_the_channel(tmp_path: Path) -> None:
    error = _error(tmp_path, [_events(folder="sftp://feeds@127.0.0.1:2222/out")])
    assert "sftp_password_env or sftp_key_env" in error
    error = _error(tmp_path, [_events(sftp_password_env="PASS")])
    assert "sftp_password_env only apply to sftp:// folders" in error
    error = _error(
        tmp_path,
        [_events(folder="sftp://feeds@h/out", sftp_password_env="P", s3_region="eu-west-1")],
    )
    assert "s3_region only apply to s3:// folders" in error
    error = _error(tmp_path, [_events(s3_access_key_env="KEY")])
    assert "s3_access_key_env and s3_secret_key_env go together" in error
    error = _error(tmp_path, [_events(s3_access_key_env="not a name", s3_secret_key_env="S")])
    assert "imports[0].s3_access_key_env" in error


def test_kind_settings(tmp_path: Path) -> None:
    assert "event_name is required" in _error(tmp_path, [_events(event_name=None)])
    users = _events(type="users", user_kind="registered")
    assert "event_name only applies to type events" in _error(tmp_path, [users])
    error = _error(tmp_path, [_events(user_kind="anonymous")])
    assert "user_kind only applies to type users" in error
    bad_type = _error(tmp_path, [_events(type="auxiliary")])
    assert "imports[0].type: must be one of users, events" in bad_type


def test_two_imports_of_the_same_type_sub_type_bucket_and_folder_name_both(
    tmp_path: Path,
) -> None:
    error = _error(
        tmp_path,
        [
            _events(name="first"),
            _events(name="second", event_name="OTHER"),  # another sub-type: allowed
            _events(name="third", folder="s3://CLIENT/exports/events"),
        ],
    )
    assert "imports[2] (third) duplicates imports[0] (first)" in error
    assert "second" not in error.split("duplicates")[1].split("\n")[0]
    users = {"type": "users", "event_name": None, "user_kind": "registered"}
    error = _error(
        tmp_path,
        [
            _events(name="a", **users),
            _events(name="b", **{**users, "user_kind": "anonymous"}),
            _events(name="c", **users),
        ],
        {"columns": {"UID": {"attribute": "user_id"}, "A": {"attribute": "anonymous_id"}}},
    )
    assert "imports[2] (c) duplicates imports[0] (a)" in error
    assert "(b)" not in error


def test_names_schedules_times_and_notify(tmp_path: Path) -> None:
    assert "imports[1].name" in _error(tmp_path, [_events(), _events(event_name="X")])
    assert "imports[0].name" in _error(tmp_path, [_events(name="has space")])
    assert "imports[0].schedule" in _error(tmp_path, [_events(schedule="fortnightly")])
    assert "imports[0].timezone" in _error(tmp_path, [_events(timezone="Mars/Olympus")])
    assert "imports[0].end_at" in _error(tmp_path, [_events(end_at="next tuesday")])
    assert "imports[0].start_at" in _error(tmp_path, [_events(start_at="soon")])
    assert "imports[0].end_after_runs" in _error(tmp_path, [_events(end_after_runs=0)])
    many = [f"ops{i}@example.com" for i in range(11)]
    assert "imports[0].notify" in _error(tmp_path, [_events(notify=many)])
    assert "is not an e-mail address" in _error(tmp_path, [_events(notify=["ops"])])
    assert "imports[0].datetime_format" in _error(tmp_path, [_events(datetime_format="date")])
    assert "imports[0].pgp.private_key_env" in _error(
        tmp_path, [_events(pgp={"private_key_env": "-----BEGIN PGP"})]
    )
    assert len(_load(tmp_path, [_events(notify=many[:10])]).imports[0].notify) == 10


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        ({"columns": {"TS": MANIFEST["columns"]["TS"]}}, "no column is mapped to 'user_id'"),
        ({"columns": {"UID": {"attribute": "user_id"}}}, "no column is mapped to 'event_time'"),
        (
            {"columns": {**MANIFEST["columns"], "X": {"attribute": "d", "type": "datetime"}}},
            "columns.X.format: a datetime column needs its format",
        ),
        (
            {"columns": {**MANIFEST["columns"], "X": {"attribute": "n", "format": "%Y"}}},
            "columns.X.format: only datetime columns take a format",
        ),
        (
            {"columns": {**MANIFEST["columns"], "X": {"attribute": "user_id"}}},
            "'user_id' is also the attribute of column 'UID'",
        ),
        (
            {"columns": {**MANIFEST["columns"], "X": {"attribute": "n", "type": "money"}}},
            "columns.X",
        ),
        (
            {"columns": {**MANIFEST["columns"], "X": {"attribute": "anonymous"}}},
            "'anonymous' is set by the import itself",
        ),
        (
            {
                "columns": {
                    "UID": {"attribute": "user_id", "type": "number"},
                    "TS": MANIFEST["columns"]["TS"],
                }
            },
            "'user_id' must be of type string",
        ),
        ("just text", "the top level must be a mapping"),
    ],
)
def test_manifest_problems_name_the_manifest_and_the_column(
    tmp_path: Path, manifest: Any, expected: str
) -> None:
    error = _error(tmp_path, [_events()], manifest)
    assert "imports[0].manifest" in error
    assert str(tmp_path / "m.yaml") in error
    assert expected in error


def test_mandatory_mappings_by_kind(tmp_path: Path) -> None:
    registered = _events(type="users", user_kind="registered", event_name=None)
    anonymous = {**registered, "name": "anon", "user_kind": "anonymous"}
    error = _error(tmp_path, [anonymous], {"columns": {"UID": {"attribute": "user_id"}}})
    assert "no column is mapped to 'anonymous_id', which anonymous users imports must map" in error
    config = _load(tmp_path, [registered], {"columns": {"UID": {"attribute": "user_id"}}})
    assert config.manifest("opened").mappings[0].attribute == "user_id"


def test_a_missing_manifest_is_a_load_error(tmp_path: Path) -> None:
    error = _error(tmp_path, [_events(manifest="nowhere.yaml")])
    assert "imports[0].manifest" in error and "nowhere.yaml does not exist" in error


@pytest.mark.parametrize(
    ("name", "fmt", "matches", "why"),
    [
        ("APP_OPENED_20260101120000.csv", "%Y%m%d%H%M%S", True, ""),
        ("APP_OPENED_20260101120000.csv.gz", "%Y%m%d%H%M%S", True, ""),
        ("APP_OPENED_20260101120000.csv.gz.pgp", "%Y%m%d%H%M%S", True, ""),
        ("APP_OPENED_20260101120000.CSV.GPG", "%Y%m%d%H%M%S", True, ""),
        ("APP_OPENED_2026-01-01_12-00-00.csv", "%Y-%m-%d_%H-%M-%S", True, ""),
        ("APP_OPENED_01.02.2026 13:14.csv", "%d.%m.%Y %H:%M", True, ""),
        ("APP_OPENED_2026-01-01.csv", "%Y%m%d%H%M%S", False, "does not match the file-name"),
        ("APP_OPENED_20261301120000.csv", "%Y%m%d%H%M%S", False, "does not match"),
        ("APP_OPENED_20260101120000.json", "%Y%m%d%H%M%S", False, "does not end with .csv"),
        ("APP_OPENED_20260101120000.csv.zip", "%Y%m%d%H%M%S", False, "does not end with .csv"),
        ("OTHER_20260101120000.csv", "%Y%m%d%H%M%S", False, "does not begin with 'APP_OPENED_'"),
        ("APP_OPENED20260101120000.csv", "%Y%m%d%H%M%S", False, "does not begin with"),
    ],
)
def test_file_names(name: str, fmt: str, matches: bool, why: str) -> None:
    verdict = file_verdict(name, "APP_OPENED", fmt)
    assert verdict.matches is matches
    assert why in verdict.reason
    if matches:
        assert verdict.stamp is not None
        assert verdict.encrypted is name.lower().endswith((".pgp", ".gpg"))


def test_which_files_a_run_takes_by_what_the_ledger_says(tmp_path: Path) -> None:
    """New names and names a dead run left unfinished are taken; final ones never again;
    a transient failure only when its retry is due; parsed ones wait for the merge."""
    from datetime import UTC, datetime, timedelta

    import duckdb

    from ingest_pipeline import warehouse
    from ingest_pipeline.imports.run import plan_import
    from ingest_pipeline.landing import FolderListing, LandedObject

    config = _load(tmp_path, [_events(retries=2)])
    imp = config.import_config("opened")
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    statuses = {
        "new": None,
        "ingested": ("ingested", None, "now"),
        "failed": ("failed", None, "now"),
        "vanished": ("vanished", None, "now"),
        "parsing": ("parsing", None, "now"),
        "queued": ("queued", None, "now"),
        "parsed": ("parsed", None, "now"),
        "due": ("retrying", now - timedelta(minutes=1), "now"),
        "later": ("retrying", now + timedelta(minutes=5), "now"),
        # uploaded again while its run was reading the earlier version, which died
        "replaced": ("parsing", None, "before"),
    }
    files = {}
    for i, label in enumerate(statuses):
        name = f"APP_OPENED_202601{i + 1:02d}120000.csv"
        files[label] = LandedObject(name, "etag-now", 10, now, f"s3://client/exports/events/{name}")
    gone_uri = "s3://client/exports/events/APP_OPENED_20251231120000.csv"  # deleted since
    path = tmp_path / "w.duckdb"
    with warehouse.connect(path) as con:
        rows = [(files[k].uri, state) for k, state in statuses.items() if state is not None]
        rows.append((gone_uri, ("parsing", None, "now")))
        for uri, (status, retry_at, version) in rows:
            con.execute(
                "INSERT INTO ingested_files (source_uri, etag, tenant_id, feed, status, retry_at)"
                " VALUES (?, ?, 'default', 'import_opened', ?, ?)",
                [uri, f"etag-{version}", status, retry_at],
            )
    listing = FolderListing(files=list(files.values()), subfolders=["old"])
    with duckdb.connect(str(path)) as con:
        plan = plan_import(con, imp, listing, at=now)
        forced = plan_import(con, imp, listing, names=[files["ingested"].key], at=now)
    label_of = {f.key: label for label, f in files.items()}
    assert sorted(label_of[f.key] for f in plan.take) == [
        "due",
        "new",
        "parsing",
        "queued",
        "replaced",
    ]
    assert sorted(label_of[k] for k in plan.already) == ["failed", "ingested", "vanished"]
    assert [label_of[k] for k in plan.waiting] == ["later"]
    assert plan.ignored == [("old/", "in a sub-folder: imports never look inside sub-folders")]
    # the versions no run can take again: the deleted file, the replaced version
    assert sorted((f.source_uri, f.etag) for f in plan.gone) == sorted(
        [(gone_uri, "etag-now"), (files["replaced"].uri, "etag-before")]
    )
    assert [label_of[f.key] for f in forced.take] == ["ingested"]
