"""The same import read from an SFTP folder (a real SFTP server on 127.0.0.1) and from a local
folder, and the e-mail each run sends (a real SMTP server on 127.0.0.1)."""

from __future__ import annotations

import email
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from ingest_pipeline.defs.imports.definitions import defs as import_defs
from ingest_pipeline_tests.import_setup import EVENTS_MANIFEST, ImportSetup, csv_file, make_setup
from ingest_pipeline_tests.sftp_server import SFTPServer

EVENT = "SIGNED_UP"
HEADER = ["USER_ID", "EVENT_TS", "AMOUNT", "IS_PAID", "PAID_AT", "PLAN", "INTERNAL"]
ROWS = [
    ["u1", "2026-01-01 10:00:00", "12.5", "yes", "03/01/2026", "pro", "x"],
    ["u2", "2026-01-01 11:00:00", "abc", "no", "", "basic", "x"],
    ["u3", "2026-01-01 12:00:00", "1", "0", "", "", "x"],
]


def _events_import(folder: str, **kw: Any) -> dict[str, Any]:
    return {
        "name": "signups",
        "type": "events",
        "event_name": EVENT,
        "folder": folder,
        "manifest": "m.yaml",
        "datetime_format": "%Y-%m-%d_%H%M",
        **kw,
    }


def _events(setup: ImportSetup) -> list[tuple[str, str]]:
    return [
        (r["contact_key"], r["properties"])
        for r in setup.query("SELECT contact_key, properties FROM events ORDER BY contact_key")
    ]


@pytest.fixture
def sftp(tmp_path: Path) -> Iterator[SFTPServer]:
    server = SFTPServer(tmp_path / "sftp_root")
    server.start()
    yield server
    server.close()


def test_the_same_import_from_an_sftp_folder_and_a_local_folder(
    tmp_path: Path, sftp: SFTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = csv_file(HEADER, ROWS)
    name = f"{EVENT}_2026-01-02_0930.csv"
    (sftp.root / "outbox" / "old").mkdir(parents=True)
    (sftp.root / "outbox" / name).write_bytes(body)
    (sftp.root / "outbox" / "old" / name).write_bytes(body)  # a sub-folder: never read
    (sftp.root / "outbox" / "notes.txt").write_text("not an import file")
    known_hosts = sftp.write_known_hosts(tmp_path / "known_hosts")
    monkeypatch.setenv("CLIENT_SFTP_PASSWORD", sftp.password)
    url = f"sftp://{sftp.username}@127.0.0.1:{sftp.port}/outbox"
    over_sftp = make_setup(
        tmp_path / "sftp",
        [
            _events_import(
                url, sftp_password_env="CLIENT_SFTP_PASSWORD", sftp_known_hosts=str(known_hosts)
            )
        ],
        {"m.yaml": EVENTS_MANIFEST},
    )
    result = over_sftp.run("signups")
    assert result.summary.error is None
    [line] = result.summary.files
    assert (line.name, line.status, line.rows_loaded, line.rows_rejected) == (
        name,
        "ingested",
        2,
        1,
    )
    assert dict(result.summary.ignored) == {
        "old/": "in a sub-folder: imports never look inside sub-folders",
        "notes.txt": dict(result.summary.ignored)["notes.txt"],
    }
    [ledger] = over_sftp.query("SELECT source_uri, status FROM ingested_files")
    assert ledger["source_uri"] == f"{url}/{name}"
    assert sftp.password not in str(over_sftp.query("SELECT * FROM ingested_files"))

    # The same file from a local folder gives the same warehouse rows.
    local = tmp_path / "local"
    (local / "client").mkdir(parents=True)
    (local / "client" / name).write_bytes(body)
    from_folder = make_setup(local, [_events_import("client")], {"m.yaml": EVENTS_MANIFEST})
    from_folder.run("signups")
    assert _events(from_folder) == _events(over_sftp)
    assert [k for k, _ in _events(over_sftp)] == ["u1", "u3"]
    # processed once: the next run takes nothing
    assert over_sftp.run("signups").summary.files == ()


def test_sftp_login_refused_fails_the_run_with_why(
    tmp_path: Path, sftp: SFTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    (sftp.root / "outbox").mkdir()
    known_hosts = sftp.write_known_hosts(tmp_path / "known_hosts")
    monkeypatch.setenv("CLIENT_SFTP_PASSWORD", "wrong password")
    url = f"sftp://{sftp.username}@127.0.0.1:{sftp.port}/outbox"
    setup = make_setup(
        tmp_path / "s",
        [
            _events_import(
                url, sftp_password_env="CLIENT_SFTP_PASSWORD", sftp_known_hosts=str(known_hosts)
            )
        ],
        {"m.yaml": EVENTS_MANIFEST},
    )
    error = setup.run("signups").summary.error
    assert error is not None and "login refused" in error
    assert "wrong password" not in error
    missing = make_setup(
        tmp_path / "m",
        [
            _events_import(
                f"{url}/nowhere",
                sftp_password_env="CLIENT_SFTP_PASSWORD",
                sftp_known_hosts=str(known_hosts),
            )
        ],
        {"m.yaml": EVENTS_MANIFEST},
    )
    monkeypatch.setenv("CLIENT_SFTP_PASSWORD", sftp.password)
    error = missing.run("signups").summary.error
    assert error is not None and "Please check the folder path and try again" in error


# --- e-mail -------------------------------------------------------------------------------------


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(
            (list(envelope.rcpt_tos), email.message_from_bytes(envelope.original_content))
        )
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def inbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Inbox]:
    handler = _Inbox()
    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("INGEST_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("INGEST_SMTP_PORT", str(port))
    monkeypatch.setenv("INGEST_SMTP_TLS", "none")
    monkeypatch.setenv("INGEST_SMTP_FROM", "imports@ingest.test")
    yield handler
    controller.stop()


def _run_job(setup: ImportSetup, monkeypatch: pytest.MonkeyPatch, instance: Any = None) -> Any:
    """A manual run of the import's Dagster job, as the UI starts it."""
    import dagster as dg
    from dagster_aws.s3 import S3Resource

    from ingest_pipeline.defs.warehouse.resources import IngestResource

    monkeypatch.setenv("INGEST_CONFIG", str(setup.config_path))
    ingest = IngestResource(
        s3=S3Resource(), warehouse_path=str(setup.warehouse_path), lake_url=setup.lake.url
    )
    location = dg.Definitions.merge(import_defs(), dg.Definitions(resources={"ingest": ingest}))
    job = location.resolve_job_def("import_signups")
    return job.execute_in_process(
        instance=instance or dg.DagsterInstance.ephemeral(), raise_on_error=False
    )


def _body(message: email.message.Message) -> str:
    part = message.get_body(preferencelist=("plain",)) if hasattr(message, "get_body") else None
    if part is None:
        for p in message.walk():
            if p.get_content_type() == "text/plain":
                part = p
                break
    assert part is not None
    return part.get_payload(decode=True).decode()


def test_each_run_mails_its_outcome_to_the_imports_addresses(
    tmp_path: Path, inbox: _Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "client"
    folder.mkdir()
    recipients = ["ops@example.com", "data@example.com"]
    setup = make_setup(
        tmp_path, [_events_import("client", notify=recipients)], {"m.yaml": EVENTS_MANIFEST}
    )
    name = f"{EVENT}_2026-01-02_0930.csv"
    (folder / name).write_bytes(csv_file(HEADER, ROWS))
    assert _run_job(setup, monkeypatch).success
    [(to, message)] = inbox.messages
    assert sorted(to) == sorted(recipients)
    assert message["From"] == "imports@ingest.test"
    assert "import signups succeeded" in message["Subject"]
    body = _body(message)
    assert name in body and "ingested" in body
    assert "column 'AMOUNT' (attribute 'amount') must be a number, got 'abc'" in body

    # A failed file: one more message, saying it failed and why.
    bad = f"{EVENT}_2026-01-03_0930.csv"
    (folder / bad).write_bytes(b"USER_ID,EVENT_TS\n")
    assert not _run_job(setup, monkeypatch).success
    assert len(inbox.messages) == 2
    _, failure = inbox.messages[1]
    assert "import signups failed" in failure["Subject"]
    assert "found zero data rows in the file" in _body(failure)
    # No new file: a run that did nothing still reports (success, no files).
    assert _run_job(setup, monkeypatch).success
    assert len(inbox.messages) == 3


def test_a_mail_server_that_is_down_does_not_fail_the_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INGEST_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("INGEST_SMTP_PORT", str(_free_port()))  # nothing listens there
    monkeypatch.setenv("INGEST_SMTP_TLS", "none")
    folder = tmp_path / "client"
    folder.mkdir()
    setup = make_setup(
        tmp_path,
        [_events_import("client", notify=["ops@example.com"])],
        {"m.yaml": EVENTS_MANIFEST},
    )
    (folder / f"{EVENT}_2026-01-02_0930.csv").write_bytes(csv_file(HEADER, ROWS))
    import dagster as dg

    instance = dg.DagsterInstance.ephemeral()
    result = _run_job(setup, monkeypatch, instance)
    assert result.success
    assert len(setup.query("SELECT * FROM events")) == 2
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    failed_sends = [m for m in logs if "127.0.0.1" in m and "ConnectionRefusedError" in m]
    assert len(failed_sends) == 1, logs


def test_dagster_job_execute_runs_an_import_from_the_command_line(tmp_path: Path) -> None:
    """`dagster job execute -m ingest_pipeline.definitions -j import_<name>`: the code location
    builds the import's job from ingest.yaml, and a manual run takes the folder's new files."""
    import os
    import subprocess
    import sys

    folder = tmp_path / "client"
    folder.mkdir()
    setup = make_setup(tmp_path, [_events_import("client")], {"m.yaml": EVENTS_MANIFEST})
    (folder / f"{EVENT}_2026-01-02_0930.csv").write_bytes(csv_file(HEADER, ROWS))
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "INGEST_CONFIG": str(setup.config_path),
        "INGEST_WAREHOUSE_PATH": str(setup.warehouse_path),
        "INGEST_LAKE_URL": setup.lake.url,
    }
    dagster = str(Path(sys.executable).with_name("dagster"))
    done = subprocess.run(
        [dagster, "job", "execute", "-m", "ingest_pipeline.definitions", "-j", "import_signups"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["contact_key"] for r in setup.query("SELECT contact_key FROM events ORDER BY 1")] == [
        "u1",
        "u3",
    ]
    [ledger] = setup.query("SELECT feed, status, run_id FROM ingested_files")
    assert ledger["feed"] == "import_signups" and ledger["status"] == "ingested"
    assert ledger["run_id"]


def test_files_a_dead_run_left_end_vanished_or_are_named_by_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed while reading leaves a file `parsing`. The import's next run takes it again
    if it is still in the folder, and ends it `vanished` with why if it is not; until then the
    import's asset check names it."""
    from datetime import UTC, datetime, timedelta

    import duckdb
    from dagster_aws.s3 import S3Resource

    from ingest_pipeline.defs.imports.definitions import build_import_asset, build_import_check
    from ingest_pipeline.defs.warehouse.resources import IngestResource
    from ingest_pipeline.imports.run import GONE

    folder = tmp_path / "client"
    folder.mkdir()
    setup = make_setup(tmp_path, [_events_import("client")], {"m.yaml": EVENTS_MANIFEST})
    long_ago = datetime.now(UTC) - timedelta(hours=3)
    kept = f"{EVENT}_2026-01-02_0930.csv"
    (folder / kept).write_bytes(csv_file(HEADER, ROWS))
    with duckdb.connect(str(setup.warehouse_path)) as con:
        for name in ("gone.csv", kept):
            con.execute(
                "INSERT INTO ingested_files (source_uri, etag, tenant_id, feed, landing_key, "
                "landed_at, size_bytes, status, started_at) VALUES (?, 'e', 'default', "
                "'import_signups', ?, ?, 10, 'parsing', ?)",
                [str(folder / name), name, long_ago, long_ago],
            )
    imp = setup.config.import_config("signups")
    check = build_import_check(imp, build_import_asset(imp))
    ingest = IngestResource(
        s3=S3Resource(), warehouse_path=str(setup.warehouse_path), lake_url=setup.lake.url
    )
    stuck = check(ingest=ingest)
    assert not stuck.passed
    assert "2 file(s) not final" in (stuck.description or "")

    result = _run_job(setup, monkeypatch)
    assert result.success
    [after] = result.get_asset_check_evaluations()
    assert after.passed
    statuses = {
        r["landing_key"]: (r["status"], r["error"])
        for r in setup.query("SELECT landing_key, status, error FROM ingested_files")
    }
    assert statuses["gone.csv"] == ("vanished", GONE)
    assert statuses[kept] == ("ingested", None)
    assert check.check_key.name == "files_reach_a_final_status"
