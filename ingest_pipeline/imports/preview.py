"""`ingest-pipeline imports check|preview NAME`: an import's set-up tried with its own
credentials, and its most recent file as the pipeline would read and map it. Both write
nothing (no ledger, no warehouse, no lake); problems are told in the vendor's words where they
apply ("Given S3 access key is not valid", "Please check the folder path and try again",
"Found zero data rows in the file")."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest_pipeline import pipeline
from ingest_pipeline.bronze import SourceFile, first_records, new_connection
from ingest_pipeline.config import ImportConfig, IngestConfig
from ingest_pipeline.imports.feed import import_feed
from ingest_pipeline.imports.folders import CHECK_FOLDER, FolderError, open_folder
from ingest_pipeline.imports.notify import SmtpSettings
from ingest_pipeline.imports.run import Decoder, matching
from ingest_pipeline.parsing import UnsupportedFile, undeclared_columns

ZERO_ROWS = "Found zero data rows in the file"


@dataclass
class ImportCheck:
    """What `imports check` found: lines that are fine, and problems (exit 1 when any)."""

    ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class ImportPreview:
    file: str = ""
    header: list[str] = field(default_factory=list)
    raw: list[tuple[int, str]] = field(default_factory=list)  # (line, text) as the file has it
    # column -> (attribute, type) for the header's mapped columns, in file order
    mapping: list[tuple[str, str, str]] = field(default_factory=list)
    # per row: attribute -> value after the mapping, and why the row would be rejected
    mapped: list[tuple[int, dict[str, Any], str | None]] = field(default_factory=list)
    not_imported: list[str] = field(default_factory=list)  # not in the manifest
    skipped: list[str] = field(default_factory=list)  # `skip` in the manifest
    problems: list[str] = field(default_factory=list)


def _read_latest(
    config: IngestConfig, imp: ImportConfig, rows: int, check: ImportCheck
) -> ImportPreview:
    """List the folder, take its most recent matching file, decode it and read its first rows;
    every problem is added to `check` (and the preview)."""
    preview = ImportPreview()
    feed = import_feed(imp, config.manifest(imp.name))
    try:
        with open_folder(config, imp) as folder, tempfile.TemporaryDirectory(prefix="imp-") as tmp:
            listing = folder.listing()
            check.ok.append(f"connected to {imp.folder} and listed it")
            files, ignored = matching(imp, listing)
            for name, why in ignored:
                check.notes.append(f"ignored {name}: {why}")
            if not files:
                raise FolderError(
                    f"{CHECK_FOLDER}: no file named {imp.file_prefix}_<datetime>.csv"
                    f"[.gz][.pgp|.gpg] (datetime as {imp.datetime_format}) in {imp.folder}"
                )
            latest = files[-1]
            preview.file = latest.key
            check.ok.append(f"{len(files)} matching file(s); the most recent is {latest.key}")
            work = Path(tmp)
            local = work / f"download-{Path(latest.key).name}"
            try:
                folder.zone.download(latest, local)
            except Exception as exc:  # noqa: BLE001 - a report, not a traceback
                raise FolderError(f"{latest.key}: the download failed: {exc}") from None
            decoder = Decoder(imp, work)
            try:
                path, name = decoder(local, latest.key)
            except pipeline.DecodeError as exc:
                raise FolderError(f"{latest.key}: {exc}") from None
            finally:
                decoder.close()
            if name != latest.key:
                check.ok.append(f"{latest.key} decrypted (PGP)")
            source = SourceFile.of(latest, imp.tenant)
            con = new_connection(work)
            try:
                header, columns, records = first_records(con, path, name, source, feed, rows)
            except UnsupportedFile as exc:
                raise FolderError(f"{latest.key}: {exc}") from None
            finally:
                con.close()
    except FolderError as exc:
        check.problems.append(str(exc))
        preview.problems.append(str(exc))
        return preview
    preview.header = header
    if not records:
        check.problems.append(f"{ZERO_ROWS} {preview.file} (only its header row)")
        preview.problems.append(ZERO_ROWS)
        return preview
    check.ok.append(f"{preview.file}: header and data rows read")
    by_column = {m.column: m for m in config.manifest(imp.name).mappings}
    preview.mapping = [
        (c, by_column[c].attribute, _type_text(by_column[c].type, by_column[c].format))
        for c in header
        if c in by_column
    ]
    skipped = set(config.manifest(imp.name).skipped)
    unmapped = undeclared_columns(header, feed)
    preview.not_imported = [c for c in unmapped if c not in skipped]
    preview.skipped = [c for c in unmapped if c in skipped]
    attributes = [f.name for f in feed.fields]
    for row in records:
        values = dict(zip(columns, row, strict=True))
        preview.raw.append((values["line_number"], values["raw"]))
        mapped = {a: values[a] for a in attributes}
        preview.mapped.append(
            (values["line_number"], mapped, values["error"] or values["rule_error"])
        )
    return preview


def _type_text(kind: str, format: str | None) -> str:
    return f"{kind} ({format})" if format else kind


def check_import(config: IngestConfig, imp: ImportConfig) -> ImportCheck:
    check = ImportCheck()
    check.ok.append(
        f"manifest {imp.manifest}: {len(config.manifest(imp.name).mappings)} mapped column(s)"
    )
    preview = _read_latest(config, imp, 1, check)
    if preview.not_imported:
        check.notes.append(
            f"columns of {preview.file} not in the manifest (not imported): "
            + ", ".join(preview.not_imported)
        )
    manifest_columns = [m.column for m in config.manifest(imp.name).mappings]
    absent = [c for c in manifest_columns if preview.header and c not in preview.header]
    if absent:
        check.notes.append(
            f"manifest columns not in {preview.file} (ignored): " + ", ".join(absent)
        )
    if imp.notify:
        if SmtpSettings.from_env() is None:
            check.problems.append(
                f"notify lists {len(imp.notify)} address(es) but INGEST_SMTP_HOST is not set: "
                "no e-mail would be sent"
            )
        else:
            check.ok.append(f"e-mail to {len(imp.notify)} address(es) through INGEST_SMTP_HOST")
    return check


def preview_import(config: IngestConfig, imp: ImportConfig, rows: int = 5) -> ImportPreview:
    return _read_latest(config, imp, rows, ImportCheck())
