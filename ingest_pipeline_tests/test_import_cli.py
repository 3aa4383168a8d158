"""`ingest-pipeline imports check|preview NAME` (cli.py, imports/preview.py): an import's set-up
tried with its own credentials, and its most recent file as read and as mapped.

S3 runs against moto's server on loopback with IAM authentication turned on: the import's
credentials are a real IAM user's access key, checked by moto's request signature verification,
and a made-up key id is refused as S3 refuses it. Authentication is on only inside a test
(monkeypatch puts moto's setting back after it), so the session's other S3 tests are unaffected.
Local folders (relative to ingest.yaml) are the other channel tried here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import moto.settings
import pytest
from botocore.exceptions import ClientError
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from ingest_pipeline.cli import main
from ingest_pipeline_tests.import_setup import EVENTS_MANIFEST, ImportSetup, csv_file, make_setup

pytestmark = pytest.mark.timeout(60)

# The vendor's words, written out here (not imported): a changed message must fail these tests.
INVALID_ACCESS_KEY = "Given S3 access key is not valid"
CHECK_FOLDER = "Please check the folder path and try again"
ZERO_ROWS = "Found zero data rows in the file"

NAME = "app_opened"
EVENT = "MOE_APP_OPENED"
HEADER = ["USER_ID", "EVENT_TS", "AMOUNT", "IS_PAID", "PAID_AT", "PLAN", "INTERNAL", "EXTRA"]
ROWS = [
    ["u1", "2026-05-01 10:00:00", "12.5", "true", "01/05/2026", "gold", "x1", "e1"],
    ["u2", "2026-05-01 11:00:00", "3", "no", "", "silver", "x2", "e2"],
    ["u3", "2026-05-01 12:00:00", "not-a-number", "yes", "", "gold", "x3", "e3"],
    ["u4", "2026-05-01 13:00:00", "0.25", "FALSE", "", "", "x4", "e4"],
    ["u5", "2026-05-01 14:00:00", "7", "1", "", "bronze", "x5", "e5"],
    ["u6", "2026-05-01 15:00:00", "8", "0", "", "gold", "x6", "e6"],
    ["u7", "2026-05-01 16:00:00", "9", "true", "", "gold", "x7", "e7"],
]
# The most recent file by the datetime in its name, which is not the one uploaded last.
NEWEST = f"{EVENT}_20260502080000.csv"
OLDER = f"{EVENT}_20260501080000.csv"
OLDER_ROW = ["old-user", "2026-04-30 09:00:00", "1", "true", "", "old-plan", "x", "e"]
NOTES = "notes.txt"  # not named by the convention
SUBFOLDER = "archive"  # with a matching name inside: never looked into


def _import(folder: str, name: str = NAME, event: str = EVENT, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "events",
        "event_name": event,
        "folder": folder,
        "manifest": "events.yaml",
        **extra,
    }


def _setup(root: Path, *imports: dict[str, Any]) -> ImportSetup:
    return make_setup(root, list(imports), {"events.yaml": EVENTS_MANIFEST})


def _cli(
    setup: ImportSetup,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *argv: str,
) -> tuple[int, str]:
    """`ingest-pipeline imports ARGV` on the set-up's ingest.yaml: (exit code, stdout)."""
    monkeypatch.setenv("INGEST_CONFIG", str(setup.config_path))
    # Where the pipeline would write if it did: the set-up's own lake and warehouse.
    monkeypatch.setenv("INGEST_LAKE_URL", str(setup.root / "lake"))
    monkeypatch.setenv("INGEST_WAREHOUSE_PATH", str(setup.warehouse_path))
    monkeypatch.setenv("INGEST_LANDING_URL", str(setup.root / "landing"))
    capsys.readouterr()
    code = main(["imports", *argv])
    return code, capsys.readouterr().out


def _lines(out: str, prefix: str) -> list[str]:
    return [line[len(prefix) :] for line in out.splitlines() if line.startswith(prefix)]


def _tree(root: Path) -> dict[str, str]:
    """Every file under `root` -> a digest of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- S3 with the import's own IAM credentials -------------------------------------------------


@dataclass
class ClientBucket:
    """A client's bucket on moto with IAM authentication on, and its IAM user's access key."""

    admin: Any  # boto3 S3 client with the default (test) credentials: refused once auth is on
    bucket: str
    key_id: str
    secret: str

    def keys(self) -> list[str]:
        """Every key of the bucket, read with the IAM user's key."""
        s3 = boto3.client("s3", aws_access_key_id=self.key_id, aws_secret_access_key=self.secret)
        return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=self.bucket).get("Contents", []))


def _iam_user_key() -> tuple[str, str]:
    """A fresh IAM user allowed s3:* on every resource: (access key id, secret)."""
    iam = boto3.client("iam")
    user = f"client-{uuid.uuid4().hex[:12]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(
        UserName=user,
        PolicyName="s3-all",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def _client_bucket(
    s3_bucket: tuple[Any, str],
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, bytes],
    *,
    backdate: tuple[str, ...] = (),
) -> ClientBucket:
    """Upload `files` (key -> body), make an IAM user, then turn IAM authentication on.
    `backdate`: keys whose LastModified is set a year back (uploaded "first")."""
    admin, bucket = s3_bucket
    key_id, secret = _iam_user_key()
    for key, body in files.items():
        admin.put_object(Bucket=bucket, Key=key, Body=body)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for key in backdate:
        obj = backend.get_object(bucket, key)
        assert obj is not None
        obj.last_modified = obj.last_modified - dt.timedelta(days=365)
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    # Authentication is really on: the default test credentials are no IAM user's.
    with pytest.raises(ClientError) as refused:
        admin.list_objects_v2(Bucket=bucket)
    assert refused.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    return ClientBucket(admin, bucket, key_id, secret)


def _s3_import(bucket: str, prefix: str = "clients/moe", **extra: Any) -> dict[str, Any]:
    return _import(
        f"s3://{bucket}/{prefix}",
        s3_access_key_env="CLIENT_S3_KEY",
        s3_secret_key_env="CLIENT_S3_SECRET",
        s3_region="us-east-1",
        **extra,
    )


def _client_keys(monkeypatch: pytest.MonkeyPatch, key_id: str, secret: str) -> None:
    monkeypatch.setenv("CLIENT_S3_KEY", key_id)
    monkeypatch.setenv("CLIENT_S3_SECRET", secret)


def _standard_files(prefix: str = "clients/moe") -> dict[str, bytes]:
    return {
        f"{prefix}/{NEWEST}": csv_file(HEADER, ROWS),
        f"{prefix}/{OLDER}": csv_file(HEADER, [OLDER_ROW]),
        f"{prefix}/{NOTES}": b"not an import file\n",
        f"{prefix}/{SUBFOLDER}/{EVENT}_20270101000000.csv": csv_file(HEADER, [OLDER_ROW]),
    }


def test_s3_check_and_preview_with_the_imports_own_iam_key(
    s3_bucket: tuple[Any, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = _client_bucket(
        s3_bucket, monkeypatch, _standard_files(), backdate=(f"clients/moe/{NEWEST}",)
    )
    listed = {
        o["Key"]: o["LastModified"]
        for o in boto3.client(
            "s3", aws_access_key_id=client.key_id, aws_secret_access_key=client.secret
        ).list_objects_v2(Bucket=client.bucket)["Contents"]
    }
    # The newest by name was uploaded (last modified) before the older one.
    assert listed[f"clients/moe/{NEWEST}"] < listed[f"clients/moe/{OLDER}"]
    setup = _setup(tmp_path, _s3_import(client.bucket))
    _client_keys(monkeypatch, client.key_id, client.secret)

    code, out = _cli(setup, monkeypatch, capsys, "check", NAME)
    assert code == 0, out
    assert out.splitlines()[-1] == f"import {NAME}: ready"
    assert _lines(out, "problem: ") == []
    ok = _lines(out, "ok: ")
    assert f"connected to s3://{client.bucket}/clients/moe and listed it" in ok
    assert f"2 matching file(s); the most recent is {NEWEST}" in ok
    assert f"{NEWEST}: header and data rows read" in ok
    notes = _lines(out, "note: ")
    assert f"ignored {SUBFOLDER}/: in a sub-folder: imports never look inside sub-folders" in notes
    assert any(
        n.startswith(f"ignored {NOTES}: the name does not begin with '{EVENT}_'") for n in notes
    )
    assert f"columns of {NEWEST} not in the manifest (not imported): EXTRA" in notes

    code, out = _cli(setup, monkeypatch, capsys, "preview", NAME)
    assert code == 0, out
    assert f"import {NAME}: most recent file {NEWEST}" in out
    lines = out.splitlines()
    assert lines[lines.index("header:") + 1] == "  " + ",".join(HEADER)
    start = lines.index("top 5 rows as read:") + 1
    as_read = lines[start : lines.index("", start)]
    assert as_read == [f"  line {n + 2}: {','.join(row)}" for n, row in enumerate(ROWS[:5])]
    assert "u6" not in out and "u7" not in out  # 7 data rows, the default shows 5
    assert "old-user" not in out  # the older file is not the one previewed
    assert "  USER_ID -> user_id: string" in lines
    assert "  EVENT_TS -> event_time: datetime (%Y-%m-%d %H:%M:%S)" in lines
    assert "  AMOUNT -> amount: number" in lines
    assert "  IS_PAID -> is_paid: boolean" in lines
    assert "  PAID_AT -> paid_at: datetime (%d/%m/%Y)" in lines
    assert "  skipped (skip in the manifest): INTERNAL" in lines
    assert "  not imported (not in the manifest): EXTRA" in lines
    assert not any(
        line.startswith("  INTERNAL ->") or line.startswith("  EXTRA ->") for line in lines
    )

    after = lines[lines.index("the same rows after the mapping:") + 1 :]
    mapped = [line for line in after if line.startswith("  line ")]
    assert len(mapped) == 5
    assert mapped[0] == (
        f"  line 2: user_id=u1, event_time=2026-05-01 10:00:00+00:00, event_text={EVENT}, "
        "amount=12.5, is_paid=True, paid_at=2026-05-01 00:00:00+00:00, plan=gold, never_there="
    )
    assert "amount=3.0, is_paid=False," in mapped[1]  # "3" a float, "no" False
    assert "amount=0.25, is_paid=False," in mapped[3]  # "FALSE"
    assert "amount=7.0, is_paid=True," in mapped[4]  # "1"
    assert all(f"event_text={EVENT}," in line for line in mapped)
    rejected = [i for i, line in enumerate(after) if line.startswith("      would be rejected: ")]
    assert len(rejected) == 1
    # told right under its row (line 4), naming the column and the value
    assert after[rejected[0] - 1].startswith("  line 4: user_id=u3,")
    assert "'AMOUNT'" in after[rejected[0]] and "'not-a-number'" in after[rejected[0]]

    code, out = _cli(setup, monkeypatch, capsys, "preview", NAME, "--rows", "2")
    assert code == 0, out
    assert "top 2 rows as read:" in out
    assert len([line for line in out.splitlines() if line.startswith("  line ")]) == 4

    # nothing written to the client's bucket either
    assert client.keys() == sorted(_standard_files())


@pytest.mark.parametrize("bad", ["unknown key id", "wrong secret"])
def test_s3_bad_access_key_is_told_in_the_vendors_words(
    bad: str,
    s3_bucket: tuple[Any, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = _client_bucket(s3_bucket, monkeypatch, _standard_files())
    setup = _setup(tmp_path, _s3_import(client.bucket))
    if bad == "unknown key id":
        _client_keys(monkeypatch, "AKIAZZZZZZZZZZZZZZZZ", client.secret)
    else:
        _client_keys(monkeypatch, client.key_id, "not-the-secret-" + client.secret[:10])

    code, out = _cli(setup, monkeypatch, capsys, "check", NAME)
    assert code == 1, out
    problems = _lines(out, "problem: ")
    assert len(problems) == 1 and problems[0].startswith(INVALID_ACCESS_KEY), out
    assert out.splitlines()[-1] == f"import {NAME}: NOT ready"
    assert client.secret not in out

    code, out = _cli(setup, monkeypatch, capsys, "preview", NAME)
    assert code == 1, out
    assert _lines(out, "problem: ")[0].startswith(INVALID_ACCESS_KEY), out
    assert "header:" not in out


@pytest.mark.parametrize("where", ["empty prefix", "no such bucket"])
def test_s3_wrong_folder_path(
    where: str,
    s3_bucket: tuple[Any, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = _client_bucket(s3_bucket, monkeypatch, _standard_files())
    if where == "empty prefix":
        imp = _s3_import(client.bucket, "clients/typo")
    else:
        imp = _s3_import(f"missing-{uuid.uuid4().hex[:16]}")
    setup = _setup(tmp_path, imp)
    _client_keys(monkeypatch, client.key_id, client.secret)

    for action in ("check", "preview"):
        code, out = _cli(setup, monkeypatch, capsys, action, NAME)
        assert code == 1, out
        problems = _lines(out, "problem: ")
        assert len(problems) == 1 and problems[0].startswith(CHECK_FOLDER), out
        assert INVALID_ACCESS_KEY not in out


def test_s3_header_only_newest_file(
    s3_bucket: tuple[Any, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = {
        f"clients/moe/{NEWEST}": csv_file(HEADER, []),
        f"clients/moe/{OLDER}": csv_file(HEADER, ROWS),  # has rows, but is not the newest
    }
    client = _client_bucket(s3_bucket, monkeypatch, files)
    setup = _setup(tmp_path, _s3_import(client.bucket))
    _client_keys(monkeypatch, client.key_id, client.secret)

    code, out = _cli(setup, monkeypatch, capsys, "check", NAME)
    assert code == 1, out
    problems = _lines(out, "problem: ")
    assert len(problems) == 1 and problems[0].startswith(ZERO_ROWS), out
    assert NEWEST in problems[0]

    code, out = _cli(setup, monkeypatch, capsys, "preview", NAME)
    assert code == 1, out
    assert _lines(out, "problem: ") == [ZERO_ROWS]


def test_s3_mandatory_column_missing_from_the_newest_file(
    s3_bucket: tuple[Any, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    without = HEADER.index("EVENT_TS")
    header = [c for i, c in enumerate(HEADER) if i != without]
    rows = [[v for i, v in enumerate(row) if i != without] for row in ROWS]
    files = {
        f"clients/moe/{NEWEST}": csv_file(header, rows),
        f"clients/moe/{OLDER}": csv_file(HEADER, ROWS),  # complete, but older
    }
    client = _client_bucket(s3_bucket, monkeypatch, files)
    setup = _setup(tmp_path, _s3_import(client.bucket))
    _client_keys(monkeypatch, client.key_id, client.secret)

    for action in ("check", "preview"):
        code, out = _cli(setup, monkeypatch, capsys, action, NAME)
        assert code == 1, out
        problems = _lines(out, "problem: ")
        assert problems and any("EVENT_TS" in p for p in problems), out


# --- local folders ----------------------------------------------------------------------------


def _local_client(root: Path, rows: list[list[str]] = ROWS) -> Path:
    """A client's local folder beside ingest.yaml (as `clients/moe`), with the standard files."""
    folder = root / "clients" / "moe"
    (folder / SUBFOLDER).mkdir(parents=True)
    (folder / NEWEST).write_bytes(csv_file(HEADER, rows))
    (folder / OLDER).write_bytes(csv_file(HEADER, [OLDER_ROW]))
    (folder / NOTES).write_text("not an import file\n")
    (folder / SUBFOLDER / f"{EVENT}_20270101000000.csv").write_bytes(csv_file(HEADER, [OLDER_ROW]))
    return folder


def test_local_folder_relative_to_ingest_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "deploy"
    folder = _local_client(root)
    setup = _setup(root, _import("clients/moe"))
    monkeypatch.chdir(tmp_path)  # the folder is relative to ingest.yaml, not the working dir

    code, out = _cli(setup, monkeypatch, capsys, "check", NAME)
    assert code == 0, out
    assert "connected to clients/moe and listed it" in _lines(out, "ok: ")
    assert f"2 matching file(s); the most recent is {NEWEST}" in _lines(out, "ok: ")
    assert out.splitlines()[-1] == f"import {NAME}: ready"
    assert f"ignored {SUBFOLDER}/: in a sub-folder: imports never look inside sub-folders" in (
        _lines(out, "note: ")
    )

    code, out = _cli(setup, monkeypatch, capsys, "preview", NAME)
    assert code == 0, out
    assert f"import {NAME}: most recent file {NEWEST}" in out
    assert "  line 2: " + ",".join(ROWS[0]) in out.splitlines()
    assert folder.is_dir()


def test_missing_local_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = _setup(tmp_path, _import("clients/not-there"))
    for action in ("check", "preview"):
        code, out = _cli(setup, monkeypatch, capsys, action, NAME)
        assert code == 1, out
        problems = _lines(out, "problem: ")
        assert len(problems) == 1 and problems[0].startswith(CHECK_FOLDER), out
    assert not (tmp_path / "clients").exists()  # not created by looking


# --- the name, writing nothing, notifications -------------------------------------------------


def test_unknown_import_name_lists_the_configured_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = _setup(
        tmp_path,
        _import("clients/moe"),
        _import("clients/moe", name="purchases", event="MOE_PURCHASE"),
    )
    for action in ("check", "preview"):
        code, out = _cli(setup, monkeypatch, capsys, action, "app_openned")
        assert code == 1, out
        assert "app_openned" in out
        assert "imports: app_opened, purchases" in out
        assert "ok:" not in out


def test_check_and_preview_write_nothing(
    s3_bucket: tuple[Any, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = _client_bucket(s3_bucket, monkeypatch, _standard_files())
    local = tmp_path / "setup"
    _local_client(local)
    setup = _setup(
        local,
        _import("clients/moe"),
        _s3_import(client.bucket, name="s3_opened"),
    )
    _client_keys(monkeypatch, client.key_id, client.secret)
    before = _tree(tmp_path)

    for name in (NAME, "s3_opened"):
        for action in ("check", "preview"):
            code, out = _cli(setup, monkeypatch, capsys, action, name)
            assert code == 0, (name, action, out)
            assert f"most recent {'is ' if action == 'check' else 'file '}{NEWEST}" in out

    assert setup.query("SELECT count(*) AS n FROM ingested_files") == [{"n": 0}]
    assert [p for p in (local / "lake").rglob("*")] == []
    assert not (local / "landing").exists()
    assert _tree(tmp_path) == before  # not a byte changed, no file added (warehouse included)
    assert client.keys() == sorted(_standard_files())


def test_notify_without_smtp_host_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _local_client(tmp_path)
    setup = _setup(tmp_path, _import("clients/moe", notify=["ops@client.example"]))
    monkeypatch.delenv("INGEST_SMTP_HOST", raising=False)

    code, out = _cli(setup, monkeypatch, capsys, "check", NAME)
    assert code == 1, out
    problems = _lines(out, "problem: ")
    assert len(problems) == 1, out
    assert "INGEST_SMTP_HOST is not set" in problems[0]
    assert "no e-mail would be sent" in problems[0]
    assert out.splitlines()[-1] == f"import {NAME}: NOT ready"

    # any host will do: check sends nothing (this one does not even resolve)
    monkeypatch.setenv("INGEST_SMTP_HOST", "smtp.invalid")
    code, out = _cli(setup, monkeypatch, capsys, "check", NAME)
    assert code == 0, out
    assert _lines(out, "problem: ") == []
    assert "e-mail to 1 address(es) through INGEST_SMTP_HOST" in _lines(out, "ok: ")
