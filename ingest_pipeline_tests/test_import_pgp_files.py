"""PGP-encrypted files through a configured import: decrypted in a private keyring per run (keys
from the environment variables ingest.yaml names), the signature checked against the client's
signing key, each failure a file's own reason in the ledger; no secret anywhere after the run."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path
from typing import Any

import pytest

from ingest_pipeline_tests.import_setup import EVENTS_MANIFEST, ImportSetup, csv_file, make_setup
from ingest_pipeline_tests.test_import_pgp import (  # noqa: F401 - `pki` is a fixture
    CORRUPT,
    PASSPHRASE,
    SIGNATURE_MISMATCH,
    WRONG_PASSPHRASE,
    Pki,
    encrypt,
    pki,
)

EVENT = "PURCHASE"
HEADER = ["USER_ID", "EVENT_TS", "AMOUNT", "IS_PAID", "PAID_AT", "PLAN", "INTERNAL"]


def _rows(user: str) -> bytes:
    return csv_file(HEADER, [[user, "2026-01-01 10:00:00", "5", "yes", "", "pro", "x"]])


def _setup(root: Path, signer: bool = True) -> ImportSetup:
    pgp: dict[str, Any] = {"private_key_env": "OUR_PGP_KEY", "passphrase_env": "OUR_PGP_PASS"}
    if signer:
        pgp["signer_public_key_env"] = "CLIENT_SIGNING_KEY"
    return make_setup(
        root,
        [
            {
                "name": "purchases",
                "type": "events",
                "event_name": EVENT,
                "folder": "client",
                "manifest": "m.yaml",
                "pgp": pgp,
            }
        ],
        {"m.yaml": EVENTS_MANIFEST},
    )


def _private_homes() -> set[Path]:
    """The private GnuPG homes in the system temp dirs the keyring may fall back to (a deep
    TMPDIR cannot hold gpg-agent's socket)."""
    return {
        p for parent in {Path("/tmp"), Path(tempfile.gettempdir())} for p in parent.glob("gnupg-*")
    }


@pytest.fixture
def pgp_env(pki: Pki, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:  # noqa: F811
    monkeypatch.setenv("OUR_PGP_KEY", pki.private_key)
    monkeypatch.setenv("OUR_PGP_PASS", PASSPHRASE)
    monkeypatch.setenv("CLIENT_SIGNING_KEY", pki.client_public)
    # the run's temporary files (downloads, decrypted copies, the keyring) go here
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def _statuses(setup: ImportSetup) -> dict[str, tuple[str, str | None]]:
    return {
        r["landing_key"]: (r["status"], r["error"])
        for r in setup.query("SELECT landing_key, status, error FROM ingested_files")
    }


def test_encrypted_and_signed_files_import_and_every_failure_says_why(
    tmp_path: Path,
    pki: Pki,  # noqa: F811
    pgp_env: Path,
) -> None:
    setup = _setup(tmp_path)
    folder = tmp_path / "client"
    folder.mkdir()
    client = "client@example.com"
    good = {
        f"{EVENT}_20260101000000.csv.gz.pgp": dict(data=gzip.compress(_rows("u1")), signer=client),
        f"{EVENT}_20260102000000.csv.pgp": dict(data=_rows("u2"), signer=client, armor=True),
        f"{EVENT}_20260102100000.csv.GPG": dict(data=_rows("u3"), signer=client),
    }
    for name, spec in good.items():
        encrypt(pki, folder, name=name, **spec)
    encrypt(pki, folder, _rows("x1"), f"{EVENT}_20260103000000.csv.gpg", signer="other@example.com")
    encrypt(pki, folder, _rows("x2"), f"{EVENT}_20260104000000.csv.pgp")  # not signed
    encrypt(
        pki,
        folder,
        _rows("x3"),
        f"{EVENT}_20260105000000.csv.pgp",
        to="other@example.com",
        signer=client,
    )
    damaged = encrypt(pki, folder, _rows("x4"), f"{EVENT}_20260106000000.csv.pgp", signer=client)
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    (folder / f"{EVENT}_20260107000000.csv").write_bytes(_rows("x5"))  # not encrypted

    homes_before = _private_homes()
    result = setup.run("purchases")
    statuses = _statuses(setup)
    for name in good:
        assert statuses[name] == ("ingested", None), name
    assert sorted(r["contact_key"] for r in setup.query("SELECT contact_key FROM events")) == [
        "u1",
        "u2",
        "u3",
    ]

    def failed(suffix: str) -> str:
        status, error = statuses[f"{EVENT}_{suffix}"]
        assert status == "failed"
        assert error is not None
        return error

    assert SIGNATURE_MISMATCH in failed("20260103000000.csv.gpg")
    assert failed("20260104000000.csv.pgp") == f"{SIGNATURE_MISMATCH}: the file is not signed"
    assert "not encrypted to the configured private key" in failed("20260105000000.csv.pgp")
    assert CORRUPT in failed("20260106000000.csv.pgp")
    assert "expects PGP-encrypted files" in failed("20260107000000.csv")
    assert len(result.summary.failed_files) == 5

    # No secret in the warehouse, and nothing of the run is left on disk.
    dump = str(setup.query("SELECT * FROM ingested_files")) + str(
        setup.query("SELECT * FROM rejected_rows")
    )
    assert PASSPHRASE not in dump and "PRIVATE KEY" not in dump
    assert list(pgp_env.iterdir()) == []
    assert _private_homes() <= homes_before  # the run's keyring is gone wherever it was


def test_wrong_passphrase_and_missing_keys_fail_the_files_with_their_reason(
    tmp_path: Path,
    pki: Pki,  # noqa: F811
    pgp_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup = _setup(tmp_path, signer=False)
    folder = tmp_path / "client"
    folder.mkdir()
    encrypt(pki, folder, _rows("u1"), f"{EVENT}_20260101000000.csv.pgp")
    monkeypatch.setenv("OUR_PGP_PASS", "not the passphrase")
    setup.run("purchases")
    assert _statuses(setup)[f"{EVENT}_20260101000000.csv.pgp"] == ("failed", WRONG_PASSPHRASE)
    assert "not the passphrase" not in str(setup.query("SELECT * FROM ingested_files"))

    other = _setup(tmp_path / "other", signer=False)
    (tmp_path / "other" / "client").mkdir()
    encrypt(pki, tmp_path / "other" / "client", _rows("u1"), f"{EVENT}_20260101000000.csv.pgp")
    monkeypatch.delenv("OUR_PGP_KEY")
    other.run("purchases")
    [(status, error)] = _statuses(other).values()
    assert status == "failed"
    assert error is not None and "OUR_PGP_KEY" in error and "not set" in error
    assert list(pgp_env.iterdir()) == []


def test_an_encrypted_file_without_pgp_configured_fails_with_why(tmp_path: Path, pki: Pki) -> None:  # noqa: F811
    setup = make_setup(
        tmp_path,
        [
            {
                "name": "purchases",
                "type": "events",
                "event_name": EVENT,
                "folder": "client",
                "manifest": "m.yaml",
            }
        ],
        {"m.yaml": EVENTS_MANIFEST},
    )
    (tmp_path / "client").mkdir()
    encrypt(pki, tmp_path / "client", _rows("u1"), f"{EVENT}_20260101000000.csv.pgp")
    setup.run("purchases")
    [(status, error)] = _statuses(setup).values()
    assert status == "failed"
    assert error is not None and "configures no keys to decrypt it" in error
