"""Flow exports end to end on every target: a folder, S3 (moto's server on 127.0.0.1) and SFTP
(an asyncssh server on 127.0.0.1, password and key auth).

Each data file is read back by an independent reader (pandas) with the dialect the README
declares; names, paths, columns, hashing and the add/remove sequence are checked against what the
test itself expects from the members it put in the warehouse. Failures are injected between a data
file and its control file, before the commit, by killing the process, and by an unreachable
target; each retry must leave consumers exactly one complete pair per operation and the next
export's delta neither skipped nor repeated.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest

from ingest_pipeline import warehouse
from ingest_pipeline.config import FlowConfig, parse_config
from ingest_pipeline.exports import membership
from ingest_pipeline.exports.export import FlowExportResult, export_flow
from ingest_pipeline.exports.targets import ExportTargetError, FolderTarget
from ingest_pipeline_tests.sftp_server import SFTPServer

NOW1 = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)
NOW2 = datetime(2026, 3, 2, 23, 59, 59, tzinfo=UTC)
NOW3 = datetime(2026, 3, 3, 0, 0, 1, tzinfo=UTC)
ACTIONS = ["email_welcome", "sms_nudge"]
CONTEXTS = ["plan", "score"]
COLUMNS = [
    "identifier",
    "timestamp",
    "segment_name",
    "flow_name",
    "action",
    "variant",
    "operation",
    *CONTEXTS,
]
SEGMENT_SQL = """
    select contact_key as identifier,
           attributes->>'plan' as plan,
           cast(attributes->>'score' as integer) as score
    from contacts
    where cast(attributes->>'active' as boolean)
"""

# Identifiers every writer and reader must carry intact.
TRICKY = [
    "comma,inside@example.com",
    'quote"inside@example.com',
    "tab\tinside@example.com",
    "  Mixed.Case@Example.COM  ",
    "ünïcödé@exämple.com",
    "日本語@example.jp",
    "line\nbreak@example.com",
    "semi;colon'apostrophe@example.com",
    '"fully quoted"',
]


@dataclass(frozen=True)
class Member:
    identifier: str
    plan: str
    score: int


def _plan(i: int) -> str:
    return ["basic", 'pro, "annual"', "tab\tplan"][i % 3]


def initial_contacts() -> dict[str, tuple[bool, str, int]]:
    """contact_key -> (active, plan, score) for tenant acme."""
    contacts = {key: (True, _plan(i), i) for i, key in enumerate(TRICKY)}
    contacts |= {f"user{i}@example.com": (True, _plan(i), 100 + i) for i in range(12)}
    contacts |= {f"dormant{i}@example.com": (False, _plan(i), 200 + i) for i in range(3)}
    return contacts


def changed_contacts() -> dict[str, tuple[bool, str, int]]:
    contacts = initial_contacts()
    for key in ["user0@example.com", "user1@example.com", "user2@example.com", TRICKY[1]]:
        active, plan, score = contacts[key]
        contacts[key] = (False, plan, score)  # these leave
    for i in range(3):
        contacts[f"dormant{i}@example.com"] = (True, "returning", 300 + i)  # these enter
    contacts["late,comer@example.com"] = (True, "new", 400)
    # Still a member, with new contexts: no entry (membership did not change).
    contacts["user5@example.com"] = (True, "upgraded", 999)
    return contacts


def set_contacts(wh: Path, contacts: dict[str, tuple[bool, str, int]]) -> None:
    with warehouse.connect(wh) as con:
        con.execute("DELETE FROM contacts")
        rows = [
            (
                "acme",
                key,
                json.dumps({"active": active, "plan": plan, "score": score}),
            )
            for key, (active, plan, score) in contacts.items()
        ]
        # Another tenant, with some of the same keys, all active: never in acme's flow.
        rows += [
            ("other", "user0@example.com", json.dumps({"active": True, "plan": "X", "score": 1})),
            (
                "other",
                "only-other@example.com",
                json.dumps({"active": True, "plan": "X", "score": 2}),
            ),
        ]
        con.executemany(
            "INSERT INTO contacts (tenant_id, contact_key, attributes, first_seen_at, updated_at) "
            "VALUES (?, ?, ?, now(), now())",
            rows,
        )


def members(contacts: dict[str, tuple[bool, str, int]]) -> dict[str, Member]:
    return {k: Member(k, plan, score) for k, (active, plan, score) in contacts.items() if active}


def flow_config(target: dict[str, Any], **overrides: Any) -> FlowConfig:
    flow = {
        "id": 42,
        "name": "trial_signups",
        "client": "acme",
        "tenant": "acme",
        "segment": {"name": "active_contacts", "sql": SEGMENT_SQL},
        "actions": ACTIONS,
        "format": "csv",
        "hash_identity": False,
        "path": "feeds/acme",
        "custom_contexts": CONTEXTS,
        **target,
        **overrides,
    }
    config = parse_config({"tenants": {"acme": {}, "other": {}}, "flows": [flow]})
    return config.flows[0]


# --- targets under test ---------------------------------------------------------------------------


@dataclass
class TargetUnderTest:
    config: dict[str, Any]  # the flow's target keys
    root: Callable[[], dict[str, bytes]]  # every file under the target root: key -> bytes
    file_url: Callable[[str], str]
    bucket: str
    prefix: str  # root inside the bucket/host, part of the control file's "path"


def _walk(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def sftp_server(tmp_path: Path) -> Iterator[SFTPServer]:
    server = SFTPServer(tmp_path / "sftp_root")
    server.start()
    yield server
    server.close()


def make_target(
    kind: str,
    request: pytest.FixtureRequest | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: SFTPServer | None = None,
) -> TargetUnderTest:
    if kind == "folder":
        root = tmp_path / "exports"
        return TargetUnderTest(
            config={"target": str(root)},
            root=lambda: _walk(root),
            file_url=lambda key: (root / key).as_uri(),
            bucket=str(root),
            prefix="",
        )
    if kind == "s3":
        assert request is not None
        client, bucket = request.getfixturevalue("s3_bucket")

        def listing() -> dict[str, bytes]:
            out = {}
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for page in pages:
                for item in page.get("Contents", ()):
                    key = item["Key"]
                    assert key.startswith("outbound/"), key
                    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                    out[key.removeprefix("outbound/")] = body
            return out

        return TargetUnderTest(
            config={"target": f"s3://{bucket}/outbound"},
            root=listing,
            file_url=lambda key: f"s3://{bucket}/outbound/{key}",
            bucket=bucket,
            prefix="outbound",
        )
    if server is None:
        assert request is not None
        server = request.getfixturevalue("sftp_server")
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    config: dict[str, Any] = {
        "target": f"sftp://{server.username}@127.0.0.1:{server.port}/upload",
        "target_known_hosts": str(known_hosts),
    }
    if kind == "sftp_password":
        monkeypatch.setenv("TEST_SFTP_PASSWORD", server.password)
        config["target_password_env"] = "TEST_SFTP_PASSWORD"
    else:
        monkeypatch.setenv("TEST_SFTP_KEY", server.private_key_text())
        config["target_key_env"] = "TEST_SFTP_KEY"
    return TargetUnderTest(
        config=config,
        root=lambda: _walk(server.root / "upload"),
        file_url=lambda key: f"sftp://{server.username}@127.0.0.1:{server.port}/upload/{key}",
        bucket="127.0.0.1",
        prefix="/upload",
    )


# --- the independent reader -----------------------------------------------------------------------


def read_feed(body: bytes, file_format: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Parse a data file with the declared dialect (README "Flow exports"), with pandas."""
    if file_format == "jsonl":
        frame = pd.read_json(
            io.BytesIO(body),
            lines=True,
            dtype=False,
            convert_dates=False,
            keep_default_dates=False,
            encoding="utf-8",
        )
        frame = frame.astype(object).where(frame.notna(), None)
    else:
        frame = pd.read_csv(
            io.BytesIO(body),
            sep="," if file_format == "csv" else "\t",
            quotechar='"',
            doublequote=True,
            dtype=str,
            keep_default_na=False,
            encoding="utf-8",
        )
    return list(frame.columns), frame.to_dict(orient="records")


def sha(identifier: str) -> str:
    return hashlib.sha256(identifier.strip().lower().encode("utf-8")).hexdigest()


def expected_records(
    flow: FlowConfig, operation: str, people: list[Member], now: datetime
) -> list[dict[str, Any]]:
    text = flow.format != "jsonl"
    out = []
    for m in sorted(people, key=lambda m: m.identifier.encode("utf-8")):
        for action in ["data_feed", *flow.actions]:
            out.append(
                {
                    "identifier": sha(m.identifier) if flow.hash_identity else m.identifier,
                    "timestamp": now.strftime("%Y-%m-%d %H:%M:%S"),
                    "segment_name": flow.segment.name,
                    "flow_name": flow.name,
                    "action": action,
                    # csv/tsv: NULL is an empty field
                    "variant": flow.variant if flow.variant is not None else ("" if text else None),
                    "operation": operation,
                    "plan": m.plan,
                    "score": str(m.score) if text else m.score,
                }
            )
    return out


def check_export(
    target: TargetUnderTest,
    flow: FlowConfig,
    before: dict[str, bytes],
    result: FlowExportResult,
    expected: dict[str, list[Member]],
    now: datetime,
) -> dict[str, bytes]:
    """The files this export added match `expected` (operation -> members); returns all files."""
    after = target.root()
    assert not [k for k in after if posixpath.basename(k).startswith(".")], "temp file left"
    assert {k: v for k, v in after.items() if k in before} == before, "an earlier file changed"
    new = {k: v for k, v in after.items() if k not in before}
    controls = {k: v for k, v in new.items() if posixpath.basename(k).startswith("control_")}
    data = {k: v for k, v in new.items() if k not in controls}
    assert len(controls) == len(data) == len(expected), sorted(new)
    folder = f"feeds/acme/{now:%Y/%m/%d}"
    seen_ops = set()
    for control_key, body in controls.items():
        doc = json.loads(body)
        assert doc["delta"] is True and doc["file_count"] == 1 and len(doc["files"]) == 1
        entry = doc["files"][0]
        key_folder, control_name = posixpath.split(control_key)
        assert key_folder == folder
        data_name = control_name.removeprefix("control_").removesuffix(".json") + f".{flow.format}"
        match = re.fullmatch(
            rf"acme_trial_signups_(add|remove)_[0-9a-f]{{8}}_{now:%Y%m%d%H%M%S}\.{flow.format}",
            data_name,
        )
        assert match, data_name
        operation = match.group(1)
        seen_ops.add(operation)
        data_key = f"{folder}/{data_name}"
        assert data_key in data
        columns, records = read_feed(data[data_key], flow.format)
        assert columns == COLUMNS
        assert entry == {
            "bucket": target.bucket,
            "path": posixpath.join(target.prefix, "feeds/acme") if target.prefix else "feeds/acme",
            "file_type": flow.format,
            "file": target.file_url(data_key),
            "rows": len(records),
            "flow_ID": 42,
            "flow_name": "trial_signups",
        }
        assert records == expected_records(flow, operation, expected[operation], now)
    assert seen_ops == set(expected)
    assert result.rows_by_operation() == {
        op: len(expected.get(op, [])) * (1 + len(flow.actions)) for op in ("add", "remove")
    }
    return after


def membership_of(wh: Path, flow_id: int = 42) -> set[str]:
    with warehouse.connect(wh) as con:
        rows = con.execute(
            "SELECT identifier FROM flow_memberships WHERE flow_id = ?", [flow_id]
        ).fetchall()
    return {r[0] for r in rows}


def pending_count(wh: Path) -> int:
    with warehouse.connect(wh) as con:
        membership.ensure_tables(con)
        return con.execute("SELECT count(*) FROM flow_exports WHERE status = 'pending'").fetchone()[
            0
        ]


# --- three exports on every target ----------------------------------------------------------------

CASES = [
    # target, format, hash_identity, variant
    ("folder", "csv", False, None),
    ("folder", "tsv", True, None),
    ("folder", "jsonl", False, "B"),
    ("s3", "csv", True, "A"),
    ("s3", "tsv", False, None),
    ("s3", "jsonl", True, None),
    ("sftp_password", "csv", False, None),
    ("sftp_password", "tsv", False, "B"),
    ("sftp_password", "jsonl", True, None),
    ("sftp_key", "csv", True, None),
    ("sftp_key", "tsv", True, None),
    ("sftp_key", "jsonl", False, None),
]


@pytest.mark.parametrize(("kind", "file_format", "hash_identity", "variant"), CASES)
def test_three_exports_add_remove_then_nothing(
    kind: str,
    file_format: str,
    hash_identity: bool,
    variant: str | None,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = make_target(kind, request, tmp_path, monkeypatch)
    flow = flow_config(
        target.config, format=file_format, hash_identity=hash_identity, variant=variant
    )
    wh = tmp_path / "warehouse.duckdb"

    # 1. First export: everyone in the segment is added.
    set_contacts(wh, initial_contacts())
    first = export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW1)
    start = members(initial_contacts())
    files = check_export(target, flow, {}, first, {"add": list(start.values())}, NOW1)
    assert membership_of(wh) == set(start)

    # 2. Some enter, some leave (removes carry the contexts they entered with).
    set_contacts(wh, changed_contacts())
    second = export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW2)
    now_in = members(changed_contacts())
    entered = [m for k, m in now_in.items() if k not in start]
    left = [m for k, m in start.items() if k not in now_in]
    assert len(entered) == 4 and len(left) == 4
    files = check_export(target, flow, files, second, {"add": entered, "remove": left}, NOW2)
    assert membership_of(wh) == set(now_in)

    # 3. Nothing changed: no files, and the result says so.
    third = export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW3)
    assert not third.changed and third.files == []
    assert third.segment_members == len(now_in)
    assert target.root() == files
    assert pending_count(wh) == 0


def test_s3_target_uses_the_standard_aws_variables(s3_bucket, tmp_path: Path) -> None:
    """No client passed: boto3 finds the moto server through AWS_ENDPOINT_URL."""
    client, bucket = s3_bucket
    flow = flow_config({"target": f"s3://{bucket}"}, path="")
    wh = tmp_path / "warehouse.duckdb"
    set_contacts(wh, initial_contacts())
    result = export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW1)
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 2 and all(k.startswith("2026/03/01/") for k in keys)
    control = next(k for k in keys if "/control_" in k)
    doc = json.loads(client.get_object(Bucket=bucket, Key=control)["Body"].read())
    assert doc["files"][0]["path"] == "" and doc["files"][0]["bucket"] == bucket
    assert doc["files"][0]["file"] == result.files[0].data_url


def test_default_target_is_the_export_url(tmp_path: Path) -> None:
    flow = flow_config({})
    wh = tmp_path / "warehouse.duckdb"
    set_contacts(wh, initial_contacts())
    result = export_flow(flow, warehouse_path=wh, default_target_url=str(tmp_path / "default"))
    assert result.target_url == str(tmp_path / "default")
    assert len(list((tmp_path / "default" / "feeds" / "acme").rglob("control_*.json"))) == 1


# --- failures and retries -------------------------------------------------------------------------


def _folder_flow(tmp_path: Path) -> tuple[FlowConfig, TargetUnderTest, Path]:
    root = tmp_path / "exports"
    target = TargetUnderTest(
        config={"target": str(root)},
        root=lambda: _walk(root),
        file_url=lambda key: (root / key).as_uri(),
        bucket=str(root),
        prefix="",
    )
    return flow_config(target.config), target, tmp_path / "warehouse.duckdb"


def _one_more_change(wh: Path) -> tuple[dict[str, tuple[bool, str, int]], Member]:
    contacts = changed_contacts()
    active, plan, score = contacts["user7@example.com"]
    contacts["user7@example.com"] = (False, plan, score)
    return contacts, Member("user7@example.com", plan, score)


def test_failure_between_data_and_control_then_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow, target, wh = _folder_flow(tmp_path)
    set_contacts(wh, initial_contacts())
    first = export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW1)
    files = check_export(
        target, flow, {}, first, {"add": list(members(initial_contacts()).values())}, NOW1
    )

    # The second export dies after the remove data file, before its control file.
    set_contacts(wh, changed_contacts())
    real_put_bytes = FolderTarget.put_bytes
    failed: list[str] = []

    def flaky_put_bytes(self: FolderTarget, body: bytes, key: str) -> None:
        if "_remove_" in key and not failed:
            failed.append(key)
            raise ConnectionError("target unreachable")
        real_put_bytes(self, body, key)

    monkeypatch.setattr(FolderTarget, "put_bytes", flaky_put_bytes)
    with pytest.raises(ConnectionError):
        export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW2)
    partial = {k: v for k, v in target.root().items() if k not in files}
    names = sorted(posixpath.basename(k) for k in partial)
    assert [n.split("_")[0] for n in names] == ["acme", "acme", "control"]  # add pair + remove data
    assert membership_of(wh) == set(members(initial_contacts()))  # nothing recorded yet
    assert pending_count(wh) == 1

    # The retry (later, and with the failure gone) finishes the same export: same names,
    # same timestamp, same bytes; then finds nothing new.
    retry = export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW3)
    assert [e.resumed for e in retry.exports] == [True]
    assert retry.exports[0].exported_at == NOW2
    start, now_in = members(initial_contacts()), members(changed_contacts())
    files = check_export(
        target,
        flow,
        files,
        retry,
        {
            "add": [m for k, m in now_in.items() if k not in start],
            "remove": [m for k, m in start.items() if k not in now_in],
        },
        NOW2,
    )
    assert {k: v for k, v in files.items() if k in partial} == partial  # rewritten identically
    assert membership_of(wh) == set(now_in)
    assert pending_count(wh) == 0

    # The next change is exported once: neither the retried delta again nor anything skipped.
    contacts, leaver = _one_more_change(wh)
    set_contacts(wh, contacts)
    nxt = export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW3)
    files = check_export(target, flow, files, nxt, {"remove": [leaver]}, NOW3)
    last = export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW3)
    assert not last.changed and target.root() == files


def test_crash_after_files_before_commit_then_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow, target, wh = _folder_flow(tmp_path)
    set_contacts(wh, initial_contacts())
    real_commit = membership.commit_export
    calls: list[str] = []

    def crashing_commit(con: Any, export: Any) -> bool:
        if not calls:
            calls.append(export.export_id)
            raise RuntimeError("killed before commit")
        return real_commit(con, export)

    monkeypatch.setattr(membership, "commit_export", crashing_commit)
    with pytest.raises(RuntimeError):
        export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW1)
    written = target.root()
    assert len(written) == 2 and membership_of(wh) == set()

    retry = export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW2)
    assert retry.exports[0].export_id == calls[0] and retry.exports[0].resumed
    assert target.root() == written  # the same pair, rewritten with the same bytes
    assert membership_of(wh) == set(members(initial_contacts()))
    assert not export_flow(flow, warehouse_path=wh, default_target_url="unused").changed


_KILL_SCRIPT = """
import os, signal, sys
from datetime import datetime
from ingest_pipeline.config import FlowConfig
from ingest_pipeline.exports import targets
from ingest_pipeline.exports.export import export_flow

def die(self, body, key):
    os.kill(os.getpid(), signal.SIGKILL)  # between the data file and its control file

targets.FolderTarget.put_bytes = die
flow = FlowConfig.model_validate_json(sys.argv[1])
export_flow(flow, warehouse_path=sys.argv[2], default_target_url="unused",
            now=datetime.fromisoformat(sys.argv[3]))
"""


def test_killed_process_between_data_and_control_then_retry(tmp_path: Path) -> None:
    flow, target, wh = _folder_flow(tmp_path)
    set_contacts(wh, initial_contacts())
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, flow.model_dump_json(), str(wh), NOW1.isoformat()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    written = target.root()
    assert len(written) == 1 and not any("control_" in k for k in written)  # data file only

    retry = export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW2)
    assert retry.exports[0].resumed
    files = check_export(
        target, flow, {}, retry, {"add": list(members(initial_contacts()).values())}, NOW1
    )
    assert set(written) < set(files)
    assert not export_flow(flow, warehouse_path=wh, default_target_url="unused").changed


def test_unreachable_sftp_target_then_retry(
    sftp_server: SFTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = make_target("sftp_password", None, tmp_path, monkeypatch, server=sftp_server)
    flow = flow_config(target.config, format="tsv")
    wh = tmp_path / "warehouse.duckdb"
    set_contacts(wh, initial_contacts())
    port = sftp_server.port
    sftp_server.stop()
    with pytest.raises(OSError):
        export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW1)
    assert target.root() == {} and pending_count(wh) == 1 and membership_of(wh) == set()

    sftp_server.start(port)
    retry = export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW2)
    check_export(target, flow, {}, retry, {"add": list(members(initial_contacts()).values())}, NOW1)


def test_sftp_wrong_password_is_refused_without_echoing_it(
    sftp_server: SFTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    known_hosts = sftp_server.write_known_hosts(tmp_path / "known_hosts")
    monkeypatch.setenv("TEST_SFTP_PASSWORD", "not-the-password")
    flow = flow_config(
        {
            "target": f"sftp://feeds@127.0.0.1:{sftp_server.port}",
            "target_password_env": "TEST_SFTP_PASSWORD",
            "target_known_hosts": str(known_hosts),
        }
    )
    wh = tmp_path / "warehouse.duckdb"
    set_contacts(wh, initial_contacts())
    with pytest.raises(ExportTargetError) as error:
        export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW1)
    assert "login refused" in str(error.value) and "not-the-password" not in str(error.value)
    monkeypatch.delenv("TEST_SFTP_PASSWORD")
    with pytest.raises(ExportTargetError, match="TEST_SFTP_PASSWORD"):
        export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW1)


def test_sftp_unknown_host_key_is_refused(
    sftp_server: SFTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = SFTPServer(tmp_path / "other")  # a different host key for the same address
    (tmp_path / "known_hosts").write_text(
        f"[127.0.0.1]:{sftp_server.port} {other.host_key.export_public_key().decode()}"
    )
    other.close()
    monkeypatch.setenv("TEST_SFTP_PASSWORD", sftp_server.password)
    flow = flow_config(
        {
            "target": f"sftp://feeds@127.0.0.1:{sftp_server.port}",
            "target_password_env": "TEST_SFTP_PASSWORD",
            "target_known_hosts": str(tmp_path / "known_hosts"),
        }
    )
    wh = tmp_path / "warehouse.duckdb"
    set_contacts(wh, initial_contacts())
    with pytest.raises(ExportTargetError, match="host key not trusted"):
        export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW1)
    assert _walk(sftp_server.root) == {}


# --- segment scoping and membership details -------------------------------------------------------


def test_segment_sees_only_its_tenant(tmp_path: Path) -> None:
    sql = """
        select contact_key as identifier, 'x' as plan, 1 as score from contacts
        union all
        select c.contact_key, 'x', 1 from events e join contacts c using (contact_key)
    """
    flow = flow_config({"target": str(tmp_path / "out")}, segment={"name": "all", "sql": sql})
    wh = tmp_path / "warehouse.duckdb"
    set_contacts(wh, initial_contacts())
    result = export_flow(flow, warehouse_path=wh, default_target_url="unused")
    assert result.segment_members == len(initial_contacts())
    assert "only-other@example.com" not in membership_of(wh)


def test_duplicate_and_blank_identifiers_are_one_member_or_none(tmp_path: Path) -> None:
    sql = """
        select * from (values ('a@x.com', 'p2', 2), ('a@x.com', 'p1', 1), (null, 'p', 0),
                              ('   ', 'p', 0), ('b@x.com', null, null)) v(identifier, plan, score)
    """
    flow = flow_config(
        {"target": str(tmp_path / "out")}, segment={"name": "s", "sql": sql}, actions=[]
    )
    wh = tmp_path / "warehouse.duckdb"
    result = export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW1)
    assert result.segment_members == 2
    (data,) = [p for p in (tmp_path / "out").rglob("*.csv")]
    _, records = read_feed(data.read_bytes(), "csv")
    assert [(r["identifier"], r["plan"], r["score"]) for r in records] == [
        ("a@x.com", "p1", "1"),  # the smallest contexts win, whatever the row order
        ("b@x.com", "", ""),
    ]


def test_abandoned_pending_export_is_recomputed(tmp_path: Path) -> None:
    flow, target, wh = _folder_flow(tmp_path)
    set_contacts(wh, initial_contacts())
    with warehouse.connect(wh) as con:
        plan = membership.plan_export(con, flow, target.bucket, now=NOW1)
        assert plan.export is not None
        membership.abandon_export(con, plan.export.export_id)
    assert pending_count(wh) == 0
    result = export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW2)
    assert not result.exports[0].resumed and result.members_by_operation()["add"] == len(
        members(initial_contacts())
    )


def test_env_is_clean_of_secrets_in_results(
    sftp_server: SFTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    known_hosts = sftp_server.write_known_hosts(tmp_path / "known_hosts")
    monkeypatch.setenv("TEST_SFTP_PASSWORD", sftp_server.password)
    flow = flow_config(
        {
            "target": f"sftp://feeds@127.0.0.1:{sftp_server.port}/upload",
            "target_password_env": "TEST_SFTP_PASSWORD",
            "target_known_hosts": str(known_hosts),
        }
    )
    wh = tmp_path / "warehouse.duckdb"
    set_contacts(wh, initial_contacts())
    result = export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW1)
    assert sftp_server.password not in repr(result)
    with warehouse.connect(wh) as con:
        stored = con.execute("SELECT flow::VARCHAR, target_url FROM flow_exports").fetchall()
    assert sftp_server.password not in repr(stored)
    assert os.environ["TEST_SFTP_PASSWORD"] == sftp_server.password


def test_sftp_server_without_posix_rename_gets_remove_then_rename(
    sftp_server: SFTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files already at their final names (a retry) are replaced even without the extension."""
    import asyncssh

    renames: list[str] = []

    async def unsupported(self: Any, oldpath: Any, newpath: Any) -> None:
        renames.append(str(newpath))
        raise asyncssh.SFTPOpUnsupported("POSIX rename not supported")

    monkeypatch.setattr(asyncssh.SFTPClient, "posix_rename", unsupported)
    target = make_target("sftp_key", None, tmp_path, monkeypatch, server=sftp_server)
    flow = flow_config(target.config, format="csv")
    wh = tmp_path / "warehouse.duckdb"
    set_contacts(wh, initial_contacts())
    real_commit = membership.commit_export
    calls: list[str] = []

    def crashing_commit(con: Any, export: Any) -> bool:
        if not calls:
            calls.append(export.export_id)
            raise RuntimeError("killed before commit")
        return real_commit(con, export)

    monkeypatch.setattr(membership, "commit_export", crashing_commit)
    with pytest.raises(RuntimeError):
        export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW1)
    retry = export_flow(flow, warehouse_path=wh, default_target_url="unused", now=NOW2)
    assert len(renames) == 4  # two files, twice: each fell back to remove + rename
    check_export(target, flow, {}, retry, {"add": list(members(initial_contacts()).values())}, NOW1)
