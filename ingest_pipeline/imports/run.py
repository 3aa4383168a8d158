"""One run of a configured import: the channel's part of the shared path.

The folder is listed one level deep; its files named by the import's convention and not
processed before (by folder + file name, whatever their outcome) are handed to the shared path
(pipeline.ingest_to_bronze, then merge_pending) as the import's feed (feed.py), with the
import's tenant and, for encrypted files, its PGP decryption as the channel's decoding. Files
left unfinished by a run that died (queued, parsing, parsed) are taken again; files whose
attempt met a transient error are retried only when the import's `retries` allow it.
"""

from __future__ import annotations

import contextlib
import posixpath
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb

from ingest_pipeline import ledger, pipeline, warehouse
from ingest_pipeline.arrow import pa
from ingest_pipeline.config import ImportConfig, IngestConfig, PgpConfig
from ingest_pipeline.feeds import FeedSpec
from ingest_pipeline.imports.feed import import_feed, import_feed_name
from ingest_pipeline.imports.folders import FolderError, open_folder
from ingest_pipeline.imports.naming import SUBFOLDER_REASON, file_verdict
from ingest_pipeline.imports.notify import FileLine, ImportRunSummary
from ingest_pipeline.imports.pgp import Decryptor, PgpError, PgpKeys, decrypted_name
from ingest_pipeline.landing import FolderListing, LandedObject, LandingZone

GONE = (
    "this version of the file is no longer in the import's folder (deleted, renamed or "
    "replaced) and its run did not finish; a new version under the same name is taken as new"
)
REJECTED_SAMPLE = 5  # first rejected rows per file in the summary

Log = Callable[[str], None]


@dataclass
class ImportPlan:
    """What a run takes from the folder, and what it leaves and why."""

    take: list[LandedObject] = field(default_factory=list)
    already: list[str] = field(default_factory=list)  # names processed by an earlier run
    waiting: list[str] = field(default_factory=list)  # transient failure, retried later
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    # Unfinished in the ledger and no longer in the folder: no run would take them again, so
    # they end `vanished` (every file reaches a final status).
    gone: list[ledger.LedgerFile] = field(default_factory=list)


def matching(
    imp: ImportConfig, listing: FolderListing
) -> tuple[list[LandedObject], list[tuple[str, str]]]:
    """The folder's files named by the import's convention (newest name last), and the others
    with why they are ignored."""
    ignored = [(f"{name}/", SUBFOLDER_REASON) for name in listing.subfolders]
    files = []
    for obj in listing.files:
        verdict = file_verdict(obj.key, imp.file_prefix, imp.datetime_format)
        if verdict.matches:
            files.append((verdict.stamp, obj))
        else:
            ignored.append((obj.key, verdict.reason))
    files.sort(key=lambda pair: (pair[0], pair[1].key))
    return [obj for _, obj in files], ignored


def plan_import(
    con: duckdb.DuckDBPyConnection,
    imp: ImportConfig,
    listing: FolderListing,
    *,
    names: Sequence[str] = (),
    at: datetime,
) -> ImportPlan:
    """Which files to take. `names`: an operator's forced re-run of those files (taken
    whatever the ledger says); otherwise each name once."""
    files, ignored = matching(imp, listing)
    plan = ImportPlan(ignored=ignored)
    listed = {(f.uri, f.etag) for f in listing.files}
    plan.gone = [  # this version of the file is not in the folder any more (parsed: it merges)
        f
        for f in ledger.active_files(con, import_feed_name(imp))
        if f.status != "parsed" and (f.source_uri, f.etag) not in listed
    ]
    if names:
        wanted = set(names)
        plan.take = [f for f in files if f.key in wanted]
        missing = wanted - {f.key for f in plan.take}
        if missing:
            raise FolderError(
                f"not in {imp.folder} as a file of this import: {', '.join(sorted(missing))}"
            )
        return plan
    if not files:
        return plan
    rows = con.execute(
        "SELECT source_uri, etag, status, retry_at FROM ingested_files "
        "WHERE source_uri IN (SELECT unnest(?::VARCHAR[]))",
        [[f.uri for f in files]],
    ).fetchall()
    seen: dict[str, list[tuple[str, str, datetime | None]]] = {}
    for uri, etag, status, retry_at in rows:
        seen.setdefault(uri, []).append((etag, status, retry_at))
    for f in files:
        versions = seen.get(f.uri, [])
        if any(status in ledger.FINAL_STATUSES for _, status, _ in versions):
            plan.already.append(f.key)  # once per folder + name, whatever the outcome
            continue
        # this very version's unfinished row (others are gone: recorded vanished above)
        current = [(status, retry_at) for etag, status, retry_at in versions if etag == f.etag]
        if any(st == "retrying" and r is not None and r > at for st, r in current):
            plan.waiting.append(f.key)
        elif any(st == "parsed" for st, _ in current):
            continue  # read, waiting for the merge, which every run does
        else:
            plan.take.append(f)  # new, or left by a run that died, or a retry that is due
    return plan


class Decoder:
    """The import's decoding of a downloaded file: PGP decryption (one private keyring for the
    run, made at the first encrypted file) for `.pgp`/`.gpg` names."""

    def __init__(self, imp: ImportConfig, workdir: Path) -> None:
        self.imp, self.workdir = imp, workdir
        self._decryptor = None
        self._problem: str | None = None
        self._lock = threading.Lock()  # downloads may run in a pool: one keyring per run

    def __call__(self, local: Path, key: str) -> tuple[Path, str]:
        plain_name = decrypted_name(key)
        if plain_name is None:
            if self.imp.pgp is not None:
                raise pipeline.DecodeError(
                    f"import {self.imp.name} expects PGP-encrypted files (pgp is configured), "
                    "and this one is not (.pgp or .gpg): encrypt it, or remove `pgp` from the "
                    "import"
                )
            return local, key
        pgp = self.imp.pgp
        if pgp is None:
            raise pipeline.DecodeError(
                f"the file is PGP-encrypted, and import {self.imp.name} configures no keys to "
                "decrypt it: add `pgp: {private_key_env: ..., passphrase_env: ...}`"
            )
        with self._lock:
            self._open_keyring(pgp)
        if self._problem is not None:
            raise pipeline.DecodeError(self._problem)
        assert self._decryptor is not None
        dest = local.with_name(f"{local.name}.decrypted-{posixpath.basename(plain_name)}")
        try:
            self._decryptor.decrypt(local, dest)
        except PgpError as exc:
            raise pipeline.DecodeError(str(exc)) from None
        return dest, plain_name

    def _open_keyring(self, pgp: PgpConfig) -> None:
        if self._decryptor is None and self._problem is None:
            try:
                keys = PgpKeys.from_env(
                    pgp.private_key_env, pgp.passphrase_env, pgp.signer_public_key_env
                )
                self._decryptor = Decryptor(keys, workdir=self.workdir)
            except PgpError as exc:
                self._problem = str(exc)

    def close(self) -> None:
        if self._decryptor is not None:
            self._decryptor.close()
            self._decryptor = None


@dataclass
class ImportRunResult:
    summary: ImportRunSummary
    plan: ImportPlan
    bronze: pipeline.BronzeOutcome | None = None
    merged: pipeline.MergeOutcome | None = None


def _file_lines(warehouse_path: str | Path, feed: FeedSpec, uris: Sequence[str]) -> list[FileLine]:
    """Each file's outcome as the ledger has it now, with its first rejected rows."""
    if not uris:
        return []
    with warehouse.connect(warehouse_path) as con:
        rows = con.execute(
            """
            SELECT source_uri, landing_key, status, rows_read, rows_loaded, rows_duplicate,
                   rows_rejected, error, notes, etag
            FROM ingested_files WHERE feed = ? AND source_uri IN (SELECT unnest(?::VARCHAR[]))
            QUALIFY row_number() OVER (PARTITION BY source_uri ORDER BY started_at DESC NULLS LAST) = 1
            """,
            [feed.name, list(uris)],
        ).fetchall()
        # the first rejected rows of every file, in one query (not one per file)
        con.register(
            "summary_files",
            pa.table({"source_uri": [r[0] for r in rows], "etag": [r[9] for r in rows]}),
        )
        try:
            samples: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
            for uri, etag, line, raw, reason in con.execute(
                """
                SELECT r.source_uri, r.etag, r.line_number, r.raw, r.reason
                FROM rejected_rows r SEMI JOIN summary_files USING (source_uri, etag)
                QUALIFY row_number() OVER (PARTITION BY r.source_uri, r.etag ORDER BY r.line_number) <= ?
                ORDER BY r.source_uri, r.line_number
                """,
                [REJECTED_SAMPLE],
            ).fetchall():
                samples.setdefault((uri, etag), []).append((int(line), raw or "", reason))
        finally:
            con.unregister("summary_files")
    lines = [
        (
            uri,
            FileLine(
                name=key,
                status=status,
                rows_read=read or 0,
                rows_loaded=loaded or 0,
                rows_duplicate=dup or 0,
                rows_rejected=rejected or 0,
                error="; ".join(t for t in (error, notes) if t) or None,
                rejected_sample=tuple(samples.get((uri, etag), ())),
            ),
        )
        for uri, key, status, read, loaded, dup, rejected, error, notes, etag in rows
    ]
    order = {uri: i for i, uri in enumerate(uris)}
    return [line for _, line in sorted(lines, key=lambda pair: order[pair[0]])]


def run_import(
    config: IngestConfig,
    imp: ImportConfig,
    *,
    lake: LandingZone,
    warehouse_path: str | Path,
    run_id: str | None = None,
    names: Sequence[str] = (),
    log: Log | None = None,
) -> ImportRunResult:
    """Take the folder's new files through the shared path; the summary says what happened.
    A folder that cannot be listed ends the run with the summary's `error` (nothing is taken)."""
    feed = import_feed(imp, config.manifest(imp.name))
    started = pipeline.now()
    plan = ImportPlan()
    result = ImportRunResult(summary=_summary(imp, run_id, started, [], plan), plan=plan)
    error = None
    bronze = None
    try:
        with open_folder(config, imp) as folder, contextlib.ExitStack() as stack:
            listing = folder.listing()
            with warehouse.connect(warehouse_path) as con, warehouse.transaction(con):
                plan = plan_import(con, imp, listing, names=names, at=started)
                ledger.record_outcomes(
                    con,
                    [
                        ledger.FileOutcome(f.source, "vanished", started_at=started, error=GONE)
                        for f in plan.gone
                    ],
                    feed.name,
                    run_id=run_id,
                    finished_at=started,
                )
            result.plan = plan
            if plan.take:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="import-")))
                decoder = Decoder(imp, workdir)
                stack.callback(decoder.close)
                bronze = pipeline.ingest_to_bronze(
                    plan.take,
                    feed,
                    landing=folder.zone,
                    lake=lake,
                    warehouse_path=warehouse_path,
                    tenant_id=imp.tenant,
                    run_id=run_id,
                    force=bool(names),
                    policy=None,
                    retry=pipeline.RetryPolicy(max_attempts=1 + imp.retries),
                    log=log,
                    decode=decoder,
                )
    except FolderError as exc:
        error = str(exc)
    result.bronze = bronze
    # Every run merges what is parsed (this run's files, and any a dead run left).
    result.merged = pipeline.merge_pending(
        feed,
        lake=lake,
        warehouse_path=warehouse_path,
        max_cluster_size=config.identity.max_cluster_size,
    )
    lines = _file_lines(warehouse_path, feed, [f.uri for f in plan.take])
    result.summary = _summary(imp, run_id, started, lines, plan, error)
    return result


def _summary(
    imp: ImportConfig,
    run_id: str | None,
    started: datetime,
    lines: list[FileLine],
    plan: ImportPlan,
    error: str | None = None,
) -> ImportRunSummary:
    return ImportRunSummary(
        import_name=imp.name,
        folder=imp.folder,
        run_id=run_id,
        started_at=started,
        finished_at=pipeline.now(),
        files=tuple(lines),
        ignored=tuple(plan.ignored),
        error=error,
    )
