"""The e-mail after an import run (ingest_pipeline/imports/notify.py), against real SMTP servers.

aiosmtpd serves SMTP on loopback: plain, with AUTH, with STARTTLS and with implicit TLS (a CA and
a certificate made here with `cryptography`). The failure cases use real sockets too: a port
where nothing listens and a server that accepts the connection and never says a word.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from ingest_pipeline.imports.notify import (
    MAX_REJECTED_ROWS,
    FileLine,
    ImportRunSummary,
    SmtpSettings,
    compose,
    send_summary,
)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning"),
]

SENDER = "ingest-pipeline@pipeline.example"
RECIPIENTS = ["ops@client.example", "data-team@client.example", "alice@agency.example"]
PASSWORD = "pw-Xq7!correct-horse"
STARTED = dt.datetime(2026, 5, 9, 7, 35, 25, tzinfo=dt.UTC)


# --- servers -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def text(self) -> str:
        body = self.message.get_body(preferencelist=("plain",)).get_content()
        return body.replace("\r\n", "\n")  # CRLF on the wire


class StoreHandler:
    """Keeps every message delivered; refuses recipients whose local part starts with `bounce`."""

    def __init__(self) -> None:
        self.received: list[Received] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if address.startswith("bounce"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"


@dataclass
class Server:
    handler: StoreHandler
    port: int

    def settings(self, tls: str = "none", **kwargs: Any) -> SmtpSettings:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "tls": tls,
            "user": None,
            "password": None,
            "sender": SENDER,
            "timeout_seconds": 5.0,
        }
        values.update(kwargs)
        return SmtpSettings(**values)


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    """start(**aiosmtpd options) -> a running server on loopback, stopped after the test."""
    controllers: list[Controller] = []

    def start(**options: Any) -> Server:
        handler = StoreHandler()
        port = _free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **options)
        controller.start()
        controllers.append(controller)
        return Server(handler, port)

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def smtp_server(start_server: Callable[..., Server]) -> Server:
    return start_server()


def _authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"ingest"
        and auth_data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535 itself


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for 127.0.0.1, all PEM."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "notify test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@pytest.fixture
def server_tls(tls_files: tuple[Path, Path, Path]) -> ssl.SSLContext:
    _, cert_path, key_path = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


@pytest.fixture
def trust_test_ca(tls_files: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The test CA trusted the way an operator adds a private CA: OpenSSL's SSL_CERT_FILE."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files[0]))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A server that accepts TCP connections and then never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # kept open, never answered

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


# --- summaries ---------------------------------------------------------------------------------


def _success() -> ImportRunSummary:
    return ImportRunSummary(
        import_name="app_opened",
        folder="s3://client-bucket/exports/events",
        run_id="3f2c9a1e-7b4d-4c1a-9e0f-5d6b7a8c9d0e",
        started_at=STARTED,
        finished_at=STARTED + dt.timedelta(seconds=37),
        files=(
            FileLine("events_2026-05-07.csv", "ingested", 1000, 1000),
            FileLine(
                "events_2026-05-08.csv",
                "ingested",
                1250,
                1247,
                rows_rejected=3,
                rejected_sample=((17, "u1,,2026-05-08", "field 'event' is empty"),),
            ),
            FileLine("events_2026-05-09.csv", "ingested", 751, 751, rows_duplicate=4),
        ),
        ignored=(("README.txt", "does not match *.csv"),),
    )


def _failure_with_rejects(per_file: tuple[int, int] = (8, 7)) -> ImportRunSummary:
    files = []
    line = 1
    for index, count in enumerate(per_file):
        sample = []
        for _ in range(count):
            line += 1
            sample.append((line, f"row-{line},bad,{'x' * 1000}", f"reason-{line}: bad timestamp"))
        files.append(
            FileLine(
                f"part-{index}.csv",
                "failed",
                rows_read=500,
                rows_loaded=0,
                rows_rejected=count * 10,
                error="too many rejected rows (more than 5%)",
                rejected_sample=tuple(sample),
            )
        )
    return ImportRunSummary(
        import_name="purchases",
        folder="sftp://files.client.example/outbox",
        run_id="run-42",
        started_at=STARTED,
        finished_at=STARTED + dt.timedelta(minutes=2, seconds=5),
        files=tuple(files),
    )


def _run_error() -> ImportRunSummary:
    return ImportRunSummary(
        import_name="app_opened",
        folder="s3://client-bucket/exports/events",
        run_id="run-7",
        started_at=STARTED,
        finished_at=STARTED + dt.timedelta(seconds=2),
        files=(),
        error="Given S3 access key is not valid",
    )


class Log(list[str]):
    def __call__(self, line: str) -> None:
        self.append(line)


# --- delivery ----------------------------------------------------------------------------------


def test_success_summary_is_delivered_once_to_every_recipient(smtp_server: Server) -> None:
    log = Log()
    assert send_summary(_success(), RECIPIENTS, smtp_server.settings(), log) is True
    assert log == []
    [got] = smtp_server.handler.received
    assert got.mail_from == SENDER
    assert got.rcpt_tos == RECIPIENTS
    assert got.message["From"] == SENDER
    assert [a.addr_spec for a in got.message["To"].addresses] == RECIPIENTS
    assert got.message["Subject"] == (
        "[ingest-pipeline] import app_opened succeeded: 3 files, 2,998 rows loaded"
    )
    body = got.text
    assert "Import app_opened succeeded." in body
    assert "s3://client-bucket/exports/events" in body
    assert "3f2c9a1e-7b4d-4c1a-9e0f-5d6b7a8c9d0e" in body
    section = body.split("\nFiles (3):\n", 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in section.splitlines() if line.startswith("  events_")]
    table = {row[0]: row[1:] for row in rows}
    assert len(rows) == len(table) == 3
    assert table["events_2026-05-07.csv"] == ["ingested", "1,000", "1,000", "0", "0"]
    assert table["events_2026-05-08.csv"] == ["ingested", "1,250", "1,247", "0", "3"]
    assert table["events_2026-05-09.csv"] == ["ingested", "751", "751", "4", "0"]
    assert "README.txt: does not match *.csv" in body
    assert "events_2026-05-08.csv line 17: field 'event' is empty" in body
    assert "ingest-pipeline status" in body
    assert "2026-05-09 07:35:25 UTC" in body and "(37 s)" in body
    html = got.message.get_body(preferencelist=("html",)).get_content()
    assert "events_2026-05-09.csv" in html and "<table" in html


def test_failure_summary_names_the_cause(smtp_server: Server) -> None:
    assert send_summary(_run_error(), RECIPIENTS[:1], smtp_server.settings()) is True
    [got] = smtp_server.handler.received
    assert got.message["Subject"] == (
        "[ingest-pipeline] import app_opened failed: Given S3 access key is not valid"
    )
    body = got.text
    assert "Import app_opened FAILED." in body
    assert "Failure:\n  Given S3 access key is not valid" in body
    assert "none (the run failed before ingesting any file)" in body
    assert "Dagster run run-7" in body


def test_failed_files_quote_at_most_the_first_rejected_rows(smtp_server: Server) -> None:
    summary = _failure_with_rejects((8, 7))
    assert send_summary(summary, RECIPIENTS, smtp_server.settings()) is True
    [got] = smtp_server.handler.received
    subject = got.message["Subject"]
    assert subject.startswith("[ingest-pipeline] import purchases failed: part-0.csv: too many")
    assert "(+1 more failed file)" in subject
    body = got.text
    assert "part-0.csv: too many rejected rows (more than 5%)" in body
    assert f"Rejected rows (first {MAX_REJECTED_ROWS} of 150):" in body
    quoted = [line for line in body.splitlines() if " line " in line and "reason-" in line]
    assert len(quoted) == MAX_REJECTED_ROWS == 10
    assert quoted[0] == "  part-0.csv line 2: reason-2: bad timestamp"
    assert quoted[-1] == "  part-1.csv line 11: reason-11: bad timestamp"  # 8 of part-0, 2 more
    assert "reason-12" not in body
    raws = [line for line in body.splitlines() if "row-" in line]
    assert len(raws) == 10
    assert all(len(line) < 260 and line.endswith("chars)") for line in raws)


def test_rejected_rows_of_a_successful_run_are_quoted_too() -> None:
    failed = _failure_with_rejects((3,))
    files = tuple(replace(f, status="ingested", error=None) for f in failed.files)
    summary = replace(failed, files=files)
    assert summary.succeeded
    message = compose(summary, ["a@x.example"], SENDER)
    assert "succeeded" in message["Subject"]
    body = message.get_body(preferencelist=("plain",)).get_content()
    assert "Failure:" not in body
    assert "Rejected rows (first 3 of 30):" in body
    assert "part-0.csv line 4: reason-4" in body


def test_compose_escapes_html_and_keeps_the_subject_on_one_line() -> None:
    summary = replace(
        _run_error(), import_name="<b>x</b>", error="connect failed:\nConnection reset\r\n"
    )
    message = compose(summary, [" a@x.example ", "A@x.example", ""], SENDER)
    assert message["To"] == "a@x.example"
    assert message["Subject"] == (
        "[ingest-pipeline] import <b>x</b> failed: connect failed: Connection reset"
    )
    html = message.get_body(preferencelist=("html",)).get_content()
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    with pytest.raises(ValueError, match="no recipients"):
        compose(summary, [" "], SENDER)


def test_partly_refused_recipients_still_deliver_to_the_others(smtp_server: Server) -> None:
    log = Log()
    recipients = ["ops@client.example", "bounce@client.example"]
    assert send_summary(_success(), recipients, smtp_server.settings(), log) is True
    [got] = smtp_server.handler.received
    assert got.rcpt_tos == ["ops@client.example"]
    [line] = log
    assert "bounce@client.example" in line


def test_at_most_ten_recipients(smtp_server: Server) -> None:
    log = Log()
    recipients = [f"user{i}@client.example" for i in range(12)]
    assert send_summary(_success(), recipients, smtp_server.settings(), log) is True
    [got] = smtp_server.handler.received
    assert got.rcpt_tos == recipients[:10]
    [line] = log
    assert "12 notification recipients" in line


def test_all_recipients_refused_is_a_warning_not_an_error(smtp_server: Server) -> None:
    log = Log()
    settings = smtp_server.settings()
    assert send_summary(_success(), ["bounce@client.example"], settings, log) is False
    assert smtp_server.handler.received == []
    [line] = log
    assert "SMTPRecipientsRefused" in line and f"127.0.0.1:{smtp_server.port}" in line


def test_nothing_to_send_without_recipients_or_settings(refused_port: int) -> None:
    log = Log()
    settings = SmtpSettings("127.0.0.1", refused_port, "none", None, None, SENDER)
    assert send_summary(_success(), [], settings, log) is False
    assert send_summary(_success(), ["  "], settings, log) is False
    assert send_summary(_success(), RECIPIENTS, None, log) is False
    assert log == []  # no connection tried, nothing to warn about


# --- failures never raise ----------------------------------------------------------------------


def test_server_down_returns_false_quickly(refused_port: int) -> None:
    log = Log()
    settings = SmtpSettings("127.0.0.1", refused_port, "none", None, None, SENDER)
    started = time.monotonic()
    assert send_summary(_success(), RECIPIENTS, settings, log) is False
    assert time.monotonic() - started < 2
    [line] = log
    assert f"127.0.0.1:{refused_port}" in line
    assert "ConnectionRefusedError" in line
    assert "\n" not in line


def test_server_that_never_answers_times_out(silent_port: int) -> None:
    log = Log()
    settings = SmtpSettings(
        "127.0.0.1", silent_port, "none", None, None, SENDER, timeout_seconds=1.0
    )
    started = time.monotonic()
    assert send_summary(_success(), RECIPIENTS, settings, log) is False
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 4, elapsed
    [line] = log
    assert "timed out" in line and f"127.0.0.1:{silent_port}" in line


def test_silent_server_times_out_in_ssl_mode_too(silent_port: int) -> None:
    log = Log()
    settings = SmtpSettings(
        "127.0.0.1", silent_port, "ssl", None, None, SENDER, timeout_seconds=1.0
    )
    started = time.monotonic()
    assert send_summary(_success(), RECIPIENTS, settings, log) is False
    assert time.monotonic() - started < 4
    assert len(log) == 1


def test_default_log_is_the_module_logger(
    refused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    settings = SmtpSettings("127.0.0.1", refused_port, "none", None, None, SENDER)
    with caplog.at_level("WARNING", logger="ingest_pipeline.imports.notify"):
        assert send_summary(_success(), RECIPIENTS, settings) is False
    [record] = caplog.records
    assert record.levelname == "WARNING" and f"127.0.0.1:{refused_port}" in record.getMessage()


def test_a_broken_log_callback_does_not_raise_either(refused_port: int) -> None:
    def log(line: str) -> None:
        raise RuntimeError("log sink gone")

    settings = SmtpSettings("127.0.0.1", refused_port, "none", None, None, SENDER)
    assert send_summary(_success(), RECIPIENTS, settings, log) is False


# --- authentication ----------------------------------------------------------------------------


@pytest.fixture
def auth_server(start_server: Callable[..., Server]) -> Server:
    return start_server(auth_required=True, auth_require_tls=False, authenticator=_authenticator)


def test_auth_with_the_right_password_delivers(auth_server: Server) -> None:
    log = Log()
    settings = auth_server.settings(user="ingest", password=PASSWORD)
    assert send_summary(_success(), RECIPIENTS, settings, log) is True
    assert log == []
    [got] = auth_server.handler.received
    assert got.rcpt_tos == RECIPIENTS


def test_auth_with_a_wrong_password_fails_without_leaking_it(auth_server: Server) -> None:
    log = Log()
    wrong = "pw-wrong-Zz9$battery"
    settings = auth_server.settings(user="ingest", password=wrong)
    assert send_summary(_success(), RECIPIENTS, settings, log) is False
    assert auth_server.handler.received == []
    [line] = log
    assert "SMTPAuthenticationError" in line and f"127.0.0.1:{auth_server.port}" in line
    assert wrong not in line
    assert wrong not in repr(settings)


def test_auth_required_but_no_user_configured_fails(auth_server: Server) -> None:
    log = Log()
    assert send_summary(_success(), RECIPIENTS, auth_server.settings(), log) is False
    assert auth_server.handler.received == []
    assert len(log) == 1


# --- TLS ---------------------------------------------------------------------------------------


def test_starttls_delivers_over_a_verified_connection(
    start_server: Callable[..., Server], server_tls: ssl.SSLContext, trust_test_ca: None
) -> None:
    server = start_server(
        tls_context=server_tls,
        require_starttls=True,
        auth_required=True,
        authenticator=_authenticator,  # auth_require_tls defaults to True: only after STARTTLS
    )
    log = Log()
    settings = server.settings("starttls", user="ingest", password=PASSWORD)
    assert send_summary(_success(), RECIPIENTS, settings, log) is True, log
    [got] = server.handler.received
    assert got.rcpt_tos == RECIPIENTS


def test_starttls_refuses_an_untrusted_certificate(
    start_server: Callable[..., Server], server_tls: ssl.SSLContext, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-ca.pem"))  # the test CA unknown
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    server = start_server(tls_context=server_tls, require_starttls=True)
    log = Log()
    assert send_summary(_success(), RECIPIENTS, server.settings("starttls"), log) is False
    assert server.handler.received == []
    [line] = log
    assert "SSLCertVerificationError" in line


def test_starttls_never_falls_back_to_plain_text(smtp_server: Server) -> None:
    log = Log()
    assert send_summary(_success(), RECIPIENTS, smtp_server.settings("starttls"), log) is False
    assert smtp_server.handler.received == []  # the server offers no STARTTLS: nothing sent
    [line] = log
    assert "SMTPNotSupportedError" in line


def test_implicit_tls_delivers(
    start_server: Callable[..., Server], server_tls: ssl.SSLContext, trust_test_ca: None
) -> None:
    server = start_server(ssl_context=server_tls)
    log = Log()
    assert send_summary(_success(), RECIPIENTS, server.settings("ssl"), log) is True, log
    [got] = server.handler.received
    assert got.rcpt_tos == RECIPIENTS


# --- settings ----------------------------------------------------------------------------------


def test_from_env_defaults() -> None:
    settings = SmtpSettings.from_env({"INGEST_SMTP_HOST": "smtp.example.com"})
    assert settings is not None
    assert (settings.host, settings.port, settings.tls) == ("smtp.example.com", 587, "starttls")
    assert settings.user is None and settings.password is None
    assert settings.sender == f"ingest-pipeline@{socket.getfqdn()}"
    assert settings.timeout_seconds == 10.0


@pytest.mark.parametrize(("tls", "port"), [("none", 25), ("starttls", 587), ("ssl", 465)])
def test_from_env_default_port_per_tls_mode(tls: str, port: int) -> None:
    settings = SmtpSettings.from_env({"INGEST_SMTP_HOST": "mx", "INGEST_SMTP_TLS": tls.upper()})
    assert settings is not None and (settings.tls, settings.port) == (tls, port)


def test_from_env_explicit_values() -> None:
    settings = SmtpSettings.from_env(
        {
            "INGEST_SMTP_HOST": " mx.example.com ",
            "INGEST_SMTP_PORT": "2525",
            "INGEST_SMTP_TLS": "ssl",
            "INGEST_SMTP_USER": "ingest",
            "INGEST_SMTP_PASSWORD": PASSWORD,
            "INGEST_SMTP_FROM": "imports@client.example",
        }
    )
    assert settings == SmtpSettings(
        "mx.example.com", 2525, "ssl", "ingest", PASSWORD, "imports@client.example"
    )
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)


@pytest.mark.parametrize("env", [{}, {"INGEST_SMTP_HOST": ""}, {"INGEST_SMTP_HOST": "  "}])
def test_from_env_without_host_is_off(env: dict[str, str]) -> None:
    assert SmtpSettings.from_env(env | {"INGEST_SMTP_TLS": "ssl"}) is None


def test_from_env_rejects_an_unknown_tls_mode() -> None:
    with pytest.raises(ValueError, match="INGEST_SMTP_TLS"):
        SmtpSettings.from_env({"INGEST_SMTP_HOST": "mx", "INGEST_SMTP_TLS": "tls"})


@pytest.mark.parametrize("port", ["smtp", "0", "70000"])
def test_from_env_rejects_a_bad_port(port: str) -> None:
    with pytest.raises(ValueError, match="INGEST_SMTP_PORT"):
        SmtpSettings.from_env({"INGEST_SMTP_HOST": "mx", "INGEST_SMTP_PORT": port})


def test_from_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_SMTP_HOST", "mx.internal")
    monkeypatch.setenv("INGEST_SMTP_TLS", "none")
    monkeypatch.delenv("INGEST_SMTP_PORT", raising=False)
    settings = SmtpSettings.from_env()
    assert settings is not None and (settings.host, settings.port) == ("mx.internal", 25)
    monkeypatch.delenv("INGEST_SMTP_HOST")
    assert SmtpSettings.from_env() is None
