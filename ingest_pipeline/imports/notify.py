"""E-mail sent after each run of a configured CSV import (SPEC section 3.4), on success and failure.

One plain-text message (with a simple HTML alternative) to the import's recipients (at most
`MAX_RECIPIENTS`): the import, its folder and run, a table of the files with their status and
counts, the first rejected rows or the failure's cause, the files that were ignored and why, and
where to look next.

The SMTP server comes from the environment (`SmtpSettings.from_env`): `INGEST_SMTP_HOST` (unset:
no e-mail), `INGEST_SMTP_PORT`, `INGEST_SMTP_TLS` (`none`, `starttls`, `ssl`), `INGEST_SMTP_USER`,
`INGEST_SMTP_PASSWORD`, `INGEST_SMTP_FROM`. TLS always verifies the server's certificate against
the system's CAs; a private CA is added the usual OpenSSL way (`SSL_CERT_FILE`, `SSL_CERT_DIR`).

Sending never raises: a notification that cannot be delivered (server down or silent, TLS or
authentication refused, recipients refused) is one warning in the run's log and `False`, never a
failed import. Every socket operation is bounded by `timeout_seconds`.
"""

from __future__ import annotations

import email.policy
import html
import logging
import os
import re
import smtplib
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from functools import cache
from typing import Literal, get_args

logger = logging.getLogger(__name__)

TlsMode = Literal["none", "starttls", "ssl"]
TLS_MODES: tuple[str, ...] = get_args(TlsMode)
DEFAULT_PORTS: dict[str, int] = {"none": 25, "starttls": 587, "ssl": 465}

MAX_RECIPIENTS = 10  # the most addresses one import may notify
MAX_REJECTED_ROWS = 10  # rejected rows quoted in one message, over all its files
MAX_RAW_CHARS = 200  # of one rejected row's raw text
MAX_SUBJECT_CHARS = 160
MAX_CELL_CHARS = 80  # of an error in the files table (the full text is under "Failure")
MAX_ERROR_CHARS = 2000  # of one failure cause

SUBJECT_PREFIX = "[ingest-pipeline]"

# Header lines may be 998 characters (RFC 5322 2.1.1). At the default 78, the `email` package
# folds a subject starting with "[" before its first word, which readers then show with a
# leading space; the subject is capped at MAX_SUBJECT_CHARS anyway.
_POLICY = email.policy.default.clone(max_line_length=998)

ENV_HOST = "INGEST_SMTP_HOST"
ENV_PORT = "INGEST_SMTP_PORT"
ENV_TLS = "INGEST_SMTP_TLS"
ENV_USER = "INGEST_SMTP_USER"
ENV_PASSWORD = "INGEST_SMTP_PASSWORD"
ENV_FROM = "INGEST_SMTP_FROM"


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to send. The password is a secret: it is kept out of repr and of every log."""

    host: str
    port: int
    tls: TlsMode
    user: str | None
    password: str | None = field(repr=False)
    sender: str
    timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("SMTP host is empty")
        if self.tls not in TLS_MODES:
            raise ValueError(
                f"SMTP TLS mode must be one of {', '.join(TLS_MODES)}, got {self.tls!r}"
            )
        if not 0 < self.port < 65536:
            raise ValueError(f"SMTP port must be 1-65535, got {self.port}")
        if not self.timeout_seconds > 0:
            raise ValueError(f"SMTP timeout must be positive, got {self.timeout_seconds}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SmtpSettings | None:
        """INGEST_SMTP_HOST (unset/empty -> None: notifications off), INGEST_SMTP_PORT (default 25
        for none, 587 for starttls, 465 for ssl), INGEST_SMTP_TLS (none|starttls|ssl, default
        starttls; anything else -> ValueError naming the variable), INGEST_SMTP_USER,
        INGEST_SMTP_PASSWORD, INGEST_SMTP_FROM (default 'ingest-pipeline@<socket.getfqdn()>')."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = (env.get(name) or "").strip()
            return value or None

        host = get(ENV_HOST)
        if host is None:
            return None
        tls = (get(ENV_TLS) or "starttls").lower()
        if tls not in TLS_MODES:
            raise ValueError(
                f"{ENV_TLS} must be one of {', '.join(TLS_MODES)}, got {env.get(ENV_TLS)!r}"
            )
        raw_port = get(ENV_PORT)
        if raw_port is None:
            port = DEFAULT_PORTS[tls]
        else:
            try:
                port = int(raw_port)
            except ValueError:
                raise ValueError(f"{ENV_PORT} must be a port number, got {raw_port!r}") from None
            if not 0 < port < 65536:
                raise ValueError(f"{ENV_PORT} must be 1-65535, got {port}")
        password = env.get(ENV_PASSWORD) or None  # not stripped: spaces may be part of it
        return cls(
            host=host,
            port=port,
            tls=tls,  # type: ignore[arg-type]  # checked against TLS_MODES above
            user=get(ENV_USER),
            password=password,
            sender=get(ENV_FROM) or f"ingest-pipeline@{_fqdn()}",
        )


@dataclass(frozen=True)
class FileLine:
    """One file of the run, as the message lists it."""

    name: str  # file name in the import folder
    status: str  # ingested | failed | skipped | ...
    rows_read: int = 0
    rows_loaded: int = 0
    rows_duplicate: int = 0
    rows_rejected: int = 0
    error: str | None = None
    rejected_sample: tuple[tuple[int, str, str], ...] = ()  # (line_number, raw, reason), first few


@dataclass(frozen=True)
class ImportRunSummary:
    """What one run of an import did: the message's whole content."""

    import_name: str
    folder: str  # e.g. s3://client-bucket/exports/events (no credentials)
    run_id: str | None
    started_at: datetime
    finished_at: datetime
    files: tuple[FileLine, ...]
    ignored: tuple[tuple[str, str], ...] = ()  # (file name, why it was ignored)
    # the run's own failure cause (e.g. "Given S3 access key is not valid")
    error: str | None = None

    @property
    def failed_files(self) -> tuple[FileLine, ...]:
        return tuple(f for f in self.files if f.status == "failed")

    @property
    def succeeded(self) -> bool:
        """No run error and no file failed."""
        return self.error is None and not self.failed_files

    @property
    def rows_loaded(self) -> int:
        return sum(f.rows_loaded for f in self.files)

    @property
    def rows_rejected(self) -> int:
        return sum(f.rows_rejected for f in self.files)

    def subject(self) -> str:
        """`[ingest-pipeline] import NAME succeeded: 3 files, 2,998 rows loaded`, or
        `... failed: CAUSE` (the run's error, else the first failed file and its error)."""
        head = f"{SUBJECT_PREFIX} import {_one_line(self.import_name)}"
        if self.succeeded:
            files = _plural(len(self.files), "file")
            text = f"{head} succeeded: {files}, {self.rows_loaded:,} rows loaded"
        else:
            failed = self.failed_files
            if self.error is not None:
                cause = self.error
            else:
                first = failed[0]
                cause = f"{first.name}: {first.error}" if first.error else f"{first.name} failed"
                if len(failed) > 1:
                    cause += f" (+{_plural(len(failed) - 1, 'more failed file')})"
            text = f"{head} failed: {_one_line(cause) or 'unknown cause'}"
        return _cut(_one_line(text), MAX_SUBJECT_CHARS)


def compose(summary: ImportRunSummary, recipients: Sequence[str], sender: str) -> EmailMessage:
    """The message for `summary`, addressed to all `recipients` (cleaned: trimmed, duplicates
    dropped): a plain-text body and a simple HTML alternative with the same content.

    Raises ValueError when no recipient is left or an address is not a valid header value."""
    to = clean_recipients(recipients)
    if not to:
        raise ValueError("no recipients")
    msg = EmailMessage(policy=_POLICY)
    msg["Subject"] = summary.subject()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(localtime=True)
    domain = sender.rpartition("@")[2].strip(" <>") or "ingest-pipeline.invalid"
    msg["Message-ID"] = make_msgid("ingest-import", domain=domain)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
    msg.set_content(_text_body(summary))
    msg.add_alternative(_html_body(summary), subtype="html")
    return msg


def send_summary(
    summary: ImportRunSummary,
    recipients: Sequence[str],
    settings: SmtpSettings | None,
    log: Callable[[str], None] | None = None,
) -> bool:
    """Send one message to `recipients`; True when the server accepted it.

    No-op returning False when there are no recipients or `settings` is None (notifications off).
    Never raises: any failure (connection refused, timeout, TLS, authentication, recipients
    refused, a bad address) is one warning through `log` (default: this module's logger) naming
    the error type and host:port, never the password, and False is returned."""
    warn = logger.warning if log is None else log
    if settings is None:
        return False
    try:
        to = clean_recipients(recipients)
        if not to:
            return False
        if len(to) > MAX_RECIPIENTS:
            _safe_log(
                warn,
                f"import {summary.import_name}: {len(to)} notification recipients, only the first "
                f"{MAX_RECIPIENTS} are e-mailed",
            )
            to = to[:MAX_RECIPIENTS]
        msg = compose(summary, to, settings.sender)
        smtp = _connect(settings)
        try:
            if settings.user:
                smtp.login(settings.user, settings.password or "")
            refused = smtp.send_message(msg, from_addr=settings.sender, to_addrs=to)
            try:
                smtp.quit()  # accepted already: a QUIT that fails changes nothing
            except (smtplib.SMTPException, OSError):
                pass
        finally:
            smtp.close()
    except Exception as exc:  # a notification must never fail the import
        _safe_log(warn, _failure_line(summary, settings, exc))
        return False
    if refused:
        _safe_log(
            warn,
            f"import {summary.import_name}: notification e-mail refused by "
            f"{settings.host}:{settings.port} for {', '.join(sorted(refused))} "
            f"(accepted for the other {len(to) - len(refused)})",
        )
    return True


def clean_recipients(recipients: Sequence[str]) -> list[str]:
    """Addresses trimmed, empty ones and duplicates (case-insensitive) dropped, order kept."""
    if isinstance(recipients, str):  # one address passed bare, not a list of its characters
        recipients = [recipients]
    seen: set[str] = set()
    out: list[str] = []
    for raw in recipients:
        address = raw.strip()
        if address and address.lower() not in seen:
            seen.add(address.lower())
            out.append(address)
    return out


# --- sending ---------------------------------------------------------------------------------


def _connect(settings: SmtpSettings) -> smtplib.SMTP:
    """A connected (and, per `settings.tls`, encrypted) session; its socket closed on failure."""
    timeout = settings.timeout_seconds
    smtp: smtplib.SMTP
    if settings.tls == "ssl":
        smtp = smtplib.SMTP_SSL(
            local_hostname=_fqdn(), timeout=timeout, context=ssl.create_default_context()
        )
    else:
        smtp = smtplib.SMTP(local_hostname=_fqdn(), timeout=timeout)
    # smtplib takes the name it checks the certificate against (SMTP_SSL and starttls) from
    # `_host`, which only its constructor sets, and only when the constructor also connects -
    # leaving an unclosed socket behind when that connection fails. Connect separately instead.
    smtp._host = settings.host
    try:
        code, reply = smtp.connect(settings.host, settings.port)
        if code != 220:
            raise smtplib.SMTPConnectError(code, reply)
        if settings.tls == "starttls":
            smtp.ehlo()
            smtp.starttls(context=ssl.create_default_context())  # raises if not offered
            smtp.ehlo()
    except BaseException:
        smtp.close()
        raise
    return smtp


def _failure_line(summary: ImportRunSummary, settings: SmtpSettings, exc: BaseException) -> str:
    detail = _one_line(str(exc))
    if settings.password:  # a server may echo what it was sent; never let it reach a log
        detail = detail.replace(settings.password, "***")
    detail = _cut(detail, 300)
    return (
        f"import {summary.import_name}: notification e-mail not sent via "
        f"{settings.host}:{settings.port} (tls {settings.tls}): {type(exc).__name__}"
        + (f": {detail}" if detail else "")
    )


def _safe_log(log: Callable[[str], None], line: str) -> None:
    try:
        log(line)
    except Exception:  # a broken log callback must not fail the import either
        logger.warning(line)


@cache
def _fqdn() -> str:
    return socket.getfqdn()


# --- the message -----------------------------------------------------------------------------

_COLUMNS = ("file", "status", "read", "loaded", "duplicates", "rejected", "error")
_NUMERIC = {"read", "loaded", "duplicates", "rejected"}


def _text_body(s: ImportRunSummary) -> str:
    out: list[str] = []
    outcome = "succeeded" if s.succeeded else "FAILED"
    out.append(f"Import {s.import_name} {outcome}.")
    out.append("")
    out.append(f"Folder:    {s.folder}")
    out.append(f"Run id:    {s.run_id or '-'}")
    out.append(f"Started:   {_fmt_time(s.started_at)}")
    duration = _fmt_duration(s.started_at, s.finished_at)
    out.append(f"Finished:  {_fmt_time(s.finished_at)}" + (f" ({duration})" if duration else ""))
    out.append(
        f"Files:     {len(s.files)}, {s.rows_loaded:,} rows loaded, {s.rows_rejected:,} rejected"
    )

    causes = _causes(s)
    if causes:
        out += ["", "Failure:"]
        for who, cause in causes:
            lines = cause.splitlines() or [""]
            out.append(f"  {who}: {lines[0]}" if who else f"  {lines[0]}")
            out += [f"    {line}" for line in lines[1:]]

    out += ["", f"Files ({len(s.files)}):"]
    if s.files:
        rows = [list(_COLUMNS)] + [_row(f) for f in s.files]
        if len(s.files) > 1:
            rows.append(["total", "", *(_fmt_int(n) for n in _totals(s)), ""])
        widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
        for r in rows:
            cells = [
                c.rjust(w) if _COLUMNS[i] in _NUMERIC else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ]
            out.append(("  " + "  ".join(cells)).rstrip())
    else:
        out.append(f"  {_no_files(s)}")

    sample, shown = _rejected_sample(s)
    if sample:
        out += ["", _rejected_heading(s, shown)]
        for name, line_number, raw, reason in sample:
            out.append(f"  {name} line {line_number}: {_one_line(reason)}")
            out.append(f"    {_fmt_raw(raw)}")

    if s.ignored:
        out += ["", f"Ignored files ({len(s.ignored)}):"]
        out += [f"  {name}: {_one_line(why)}" for name, why in s.ignored]

    out += ["", "Where to look:"]
    out += [f"  {hint}" for hint in _hints(s)]
    return "\n".join(out) + "\n"


def _html_body(s: ImportRunSummary) -> str:
    e = html.escape
    outcome = "succeeded" if s.succeeded else "FAILED"
    color = "#1a7f37" if s.succeeded else "#cf222e"
    duration = _fmt_duration(s.started_at, s.finished_at)
    parts = [
        '<html><body style="font-family: sans-serif; font-size: 14px">',
        f'<h2>Import {e(s.import_name)} <span style="color: {color}">{outcome}</span></h2>',
        "<table>",
        f"<tr><td>Folder</td><td><code>{e(s.folder)}</code></td></tr>",
        f"<tr><td>Run id</td><td><code>{e(s.run_id or '-')}</code></td></tr>",
        f"<tr><td>Started</td><td>{e(_fmt_time(s.started_at))}</td></tr>",
        f"<tr><td>Finished</td><td>{e(_fmt_time(s.finished_at))}"
        + (f" ({e(duration)})" if duration else "")
        + "</td></tr>",
        "</table>",
    ]
    causes = _causes(s)
    if causes:
        parts.append("<h3>Failure</h3><ul>")
        for who, cause in causes:
            label = f"<code>{e(who)}</code>: " if who else ""
            parts.append(f'<li>{label}<pre style="display: inline">{e(cause)}</pre></li>')
        parts.append("</ul>")
    parts.append(f"<h3>Files ({len(s.files)})</h3>")
    if s.files:
        cell = 'style="border: 1px solid #ccc; padding: 2px 6px"'
        parts.append('<table style="border-collapse: collapse">')
        parts.append("<tr>" + "".join(f"<th {cell}>{c}</th>" for c in _COLUMNS) + "</tr>")
        body_rows = [_row(f) for f in s.files]
        if len(s.files) > 1:
            body_rows.append(["total", "", *(_fmt_int(n) for n in _totals(s)), ""])
        for r in body_rows:
            tds = []
            for name, value in zip(_COLUMNS, r, strict=True):
                align = ' align="right"' if name in _NUMERIC else ""
                tds.append(f"<td {cell}{align}>{e(value)}</td>")
            parts.append("<tr>" + "".join(tds) + "</tr>")
        parts.append("</table>")
    else:
        parts.append(f"<p>{_no_files(s)}</p>")
    sample, shown = _rejected_sample(s)
    if sample:
        parts.append(f"<h3>{e(_rejected_heading(s, shown).rstrip(':'))}</h3><ul>")
        for name, line_number, raw, reason in sample:
            parts.append(
                f"<li><code>{e(name)}</code> line {line_number}: {e(_one_line(reason))}"
                f"<br><code>{e(_fmt_raw(raw))}</code></li>"
            )
        parts.append("</ul>")
    if s.ignored:
        parts.append(f"<h3>Ignored files ({len(s.ignored)})</h3><ul>")
        parts += [f"<li><code>{e(n)}</code>: {e(_one_line(why))}</li>" for n, why in s.ignored]
        parts.append("</ul>")
    parts.append("<h3>Where to look</h3><ul>")
    parts += [f"<li>{e(hint)}</li>" for hint in _hints(s)]
    parts.append("</ul></body></html>")
    return "\n".join(parts) + "\n"


def _no_files(s: ImportRunSummary) -> str:
    if s.error is not None:
        return "none (the run failed before ingesting any file)"
    return "none (no new file in the folder)"


def _row(f: FileLine) -> list[str]:
    error = _cut(_one_line(f.error), MAX_CELL_CHARS) if f.error else ""
    return [
        f.name,
        f.status,
        _fmt_int(f.rows_read),
        _fmt_int(f.rows_loaded),
        _fmt_int(f.rows_duplicate),
        _fmt_int(f.rows_rejected),
        error,
    ]


def _totals(s: ImportRunSummary) -> tuple[int, int, int, int]:
    return (
        sum(f.rows_read for f in s.files),
        s.rows_loaded,
        sum(f.rows_duplicate for f in s.files),
        s.rows_rejected,
    )


def _causes(s: ImportRunSummary) -> list[tuple[str | None, str]]:
    """(file name or None for the run itself, cause), the run's own error first."""
    causes: list[tuple[str | None, str]] = []
    if s.error is not None:
        causes.append((None, _cut(s.error.strip(), MAX_ERROR_CHARS) or "unknown cause"))
    for f in s.failed_files:
        causes.append((f.name, _cut((f.error or "").strip(), MAX_ERROR_CHARS) or "failed"))
    return causes


def _rejected_sample(s: ImportRunSummary) -> tuple[list[tuple[str, int, str, str]], int]:
    """The first MAX_REJECTED_ROWS rejected rows over all files, and how many they are."""
    sample: list[tuple[str, int, str, str]] = []
    for f in s.files:
        for line_number, raw, reason in f.rejected_sample:
            if len(sample) == MAX_REJECTED_ROWS:
                return sample, len(sample)
            sample.append((f.name, line_number, raw, reason))
    return sample, len(sample)


def _rejected_heading(s: ImportRunSummary, shown: int) -> str:
    total = max(s.rows_rejected, shown)
    if total > shown:
        return f"Rejected rows (first {shown} of {total:,}):"
    return f"Rejected rows ({shown}):"


def _hints(s: ImportRunSummary) -> list[str]:
    hints = []
    if s.run_id:
        hints.append(f"Dagster run {s.run_id}: its logs in the Dagster UI (Runs).")
    hints.append("`ingest-pipeline status`: files not final and failed files.")
    if s.files:
        hints.append(
            "`ingest-pipeline report SOURCE_URI`: one file's counts, rejected lines, refused aliases."
        )
    return hints


def _fmt_time(dt: datetime) -> str:
    if dt.tzinfo is not None and dt.utcoffset() is not None:
        return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return dt.strftime("%Y-%m-%d %H:%M:%S")


def _fmt_duration(start: datetime, end: datetime) -> str | None:
    try:
        seconds = round((end - start).total_seconds())
    except TypeError:  # one naive, one aware
        return None
    if seconds < 0:
        return None
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _fmt_raw(raw: str) -> str:
    """A rejected row's raw text on one visible line: controls escaped, cut to MAX_RAW_CHARS."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in raw[: MAX_RAW_CHARS * 2])
    if len(shown) > MAX_RAW_CHARS or len(raw) > MAX_RAW_CHARS * 2:
        return f"{shown[:MAX_RAW_CHARS]}... ({len(raw):,} chars)"
    return shown


_WHITESPACE = re.compile(r"\s+")


def _one_line(text: str | None) -> str:
    return _WHITESPACE.sub(" ", text or "").strip()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"
