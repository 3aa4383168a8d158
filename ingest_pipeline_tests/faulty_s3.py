"""A fault-injecting HTTP proxy in front of an S3 endpoint (the tests' moto server).

Point boto3 at `FaultyS3.endpoint` (``endpoint_url=`` or ``AWS_ENDPOINT_URL``) and every request
is forwarded unchanged to the upstream endpoint, except the object requests a fault matches:

* ``fail``: answer with an S3-style XML error (500 InternalError, 503 SlowDown, ...) without
  asking the upstream;
* ``reset``: read the request, then reset the TCP connection (SO_LINGER 0: an RST, no FIN), either
  before answering or after forwarding the headers and part of the body;
* ``truncate``: forward the upstream status, headers (Content-Length included) and only the first
  fraction of the body, then close the connection normally (the client sees a short body);
* ``corrupt_checksum``: forward the whole response with one body byte altered (same length).

What botocore 1.44 / urllib3 2.x make of each (``get_object`` then ``Body.iter_chunks``, as
`S3Landing.download` does; checked in test_faulty_s3.py):

* fail -> ``botocore.exceptions.ClientError`` with the chosen code, after botocore's retries
  (500 and 503 are retried; a fault with ``times`` below the attempt budget is absorbed);
* reset before answering -> ``botocore.exceptions.ConnectionClosedError`` (urllib3's
  ``ProtocolError('Connection aborted.', ConnectionResetError)``), also retried by botocore;
* reset mid-body -> ``botocore.exceptions.ResponseStreamingError`` from ``StreamingBody.read`` /
  ``iter_chunks`` (urllib3 ``ProtocolError("Connection broken: ConnectionResetError")``);
* truncate -> with ``iter_chunks(n)`` / ``read(n)`` urllib3 just returns the short data at EOF
  and botocore's own length check raises ``botocore.exceptions.IncompleteReadError``
  ("N read, but total bytes expected is M"); with ``read()`` of the whole body urllib3 raises
  ``IncompleteRead`` (a ``ProtocolError``), surfacing as ``ResponseStreamingError``. Neither
  mid-body error is retried by botocore: the response was already handed to the caller.
* corrupt_checksum -> ``botocore.exceptions.FlexibleChecksumError`` at the end of the body when the
  object has a stored checksum and the response is validated. botocore >= 1.36 validates by
  default (``response_checksum_validation="when_supported"`` turns ``ChecksumMode=ENABLED`` on
  for GetObject itself) and uploads send a CRC32 by default, so a plain ``get_object`` catches it;
  with ``response_checksum_validation="when_required"`` and no ``ChecksumMode``, for an object
  stored without a checksum, and for a multipart upload (``upload_file`` above its 8 MiB
  threshold: a COMPOSITE checksum ``...==-N``, which botocore skips), the altered bytes are
  returned silently; only the caller's own checks (e.g. gzip's CRC) can notice. botocore never
  checks the ETag/MD5 of a download.

Faults match on the object key (URL-decoded, without the bucket), by substring or predicate,
for the listed methods (GET by default), and apply ``times`` times (None: until `clear`). The
first matching fault with attempts left wins. Requests without an object key (ListObjectsV2,
CreateBucket, ...) have key ``""``: a substring never matches them, a predicate is asked.

Every request is recorded (method, bucket, key, status sent, fault applied) for assertions on how
often a key was fetched. Client connections are kept alive (HTTP/1.1) except after an injected
connection fault; each forwarded request opens its own upstream connection. Bodies are streamed
in 64 KiB chunks both ways.

Standard library only: ``http.server.ThreadingHTTPServer`` + ``http.client``.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

CHUNK = 64 * 1024

# Headers that describe one hop, not the message: never forwarded as they are.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "expect",  # answered by this proxy (100 Continue) before it reads the body
}

Matcher = str | Callable[[str], bool]


@dataclass
class Fault:
    """One injected fault; returned by the FaultyS3 methods so a test can read `hits`."""

    kind: str  # "fail" | "reset" | "truncate" | "corrupt_checksum"
    match: Matcher
    methods: frozenset[str]
    times: int | None  # None: every matching request until cleared
    status: int = 500
    code: str = "InternalError"
    message: str = ""
    fraction: float | None = None  # truncate: part of the body sent; reset: None = before answering
    hits: int = 0  # requests this fault was applied to

    def matches(self, method: str, key: str) -> bool:
        if method not in self.methods:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        if callable(self.match):
            return bool(self.match(key))
        return bool(key) and self.match in key


@dataclass(frozen=True)
class RequestRecord:
    method: str
    bucket: str
    key: str  # URL-decoded object key, "" for bucket- and service-level requests
    status: int | None  # status line sent to the client; None if the connection was reset first
    fault: str | None = None  # kind of the fault applied, None for a plain pass-through


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: list[Fault] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    connections: set[socket.socket] = field(default_factory=set)


class _ClientGone(Exception):
    """The client hung up mid-request (not an OSError: not to be mistaken for an upstream error)."""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def parse_s3_target(host_header: str, target: str) -> tuple[str, str]:
    """(bucket, URL-decoded key) of a request, path style or virtual-host style.

    boto3 with ``endpoint_url=http://127.0.0.1:PORT`` uses path style (``/bucket/key``): an IP
    address cannot carry a bucket label. With a host name endpoint (``http://localhost:PORT``) and
    a DNS-compatible bucket it uses virtual-host style (Host ``bucket.localhost:PORT``, path
    ``/key``), so a Host with more labels than ``localhost`` / an IP names the bucket.
    """
    path = urlsplit(target).path
    host = host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header
    host = host.lower().rstrip(".")
    if host and not _is_ip(host) and host.endswith(".localhost"):
        return host[: -len(".localhost")], unquote(path.lstrip("/"))
    bucket, _, key = path.lstrip("/").partition("/")
    return unquote(bucket), unquote(key)


def _error_body(code: str, message: str, bucket: str, key: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<BucketName>{escape(bucket)}</BucketName><Key>{escape(key)}</Key>"
        "<RequestId>FAULTYS3</RequestId><HostId>faulty-s3</HostId></Error>"
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive with botocore's urllib3 pool
    server: _Server

    # -- plumbing ---------------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        with self.server.state.lock:
            self.server.state.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.state.lock:
            self.server.state.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:  # the socket was reset or detached by a fault
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # every method (GET, PUT, HEAD, POST, DELETE, ...)
            return self._handle
        raise AttributeError(name)

    def _record(self, status: int | None, fault: Fault | None) -> None:
        record = RequestRecord(
            self.command, self._bucket, self._key, status, fault.kind if fault else None
        )
        with self.server.state.lock:
            self.server.state.records.append(record)

    def _reset_connection(self) -> None:
        """Abort the connection: SO_LINGER 0 then close sends an RST (no FIN, unsent data lost)."""
        self.close_connection = True
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # detach(): rfile holds a reference that would postpone a plain close(); closing the
        # descriptor itself makes the RST immediate. The socket object is left inert (fd -1).
        os.close(sock.detach())

    # -- request ------------------------------------------------------------------------------------

    def _read_request_body(self) -> Iterator[bytes]:
        """The request body as it arrived (chunked framing relayed raw), in bounded pieces."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(CHUNK)
                yield line
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers (botocore sends the checksum here), then a blank line
                        trailer = self.rfile.readline(CHUNK)
                        yield trailer
                        if trailer in (b"\r\n", b"\n", b""):
                            return
                remaining = size + 2  # data and its CRLF
                while remaining:
                    piece = self.rfile.read(min(CHUNK, remaining))
                    if not piece:
                        raise _ClientGone("client closed the connection mid-body")
                    remaining -= len(piece)
                    yield piece
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                piece = self.rfile.read(min(CHUNK, remaining))
                if not piece:
                    raise _ClientGone("client closed the connection mid-body")
                remaining -= len(piece)
                yield piece

    def _handle(self) -> None:
        self._bucket, self._key = parse_s3_target(self.headers.get("Host", ""), self.path)
        fault = self.server.owner._take_fault(self.command, self._key)
        if fault is None or fault.kind != "fail":
            self._forward(fault)
            return
        for _ in self._read_request_body():
            pass
        self._send_error(fault.status, fault.code, fault.message, fault)

    def _send_error(self, status: int, code: str, message: str, fault: Fault | None) -> None:
        body = _error_body(code, message, self._bucket, self._key)
        # Recorded before anything is sent, so a client that has its answer sees the record.
        self._record(status, fault)
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", "FAULTYS3")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # -- forwarding ---------------------------------------------------------------------------------

    def _forward(self, fault: Fault | None) -> None:
        upstream = self.server.owner.upstream
        conn_cls = (
            http.client.HTTPSConnection
            if upstream.scheme == "https"
            else http.client.HTTPConnection
        )
        conn = conn_cls(upstream.hostname, upstream.port, timeout=self.server.owner.timeout)
        try:
            connection_tokens = {
                t.strip().lower() for t in self.headers.get("Connection", "").split(",")
            }
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                lower = name.lower()
                if lower in _HOP_BY_HOP or lower in connection_tokens:
                    continue
                conn.putheader(name, value)
            body = self._read_request_body()
            try:
                conn.endheaders()
                for piece in body:
                    conn.send(piece)
                if fault is not None and fault.kind == "reset" and fault.fraction is None:
                    self._record(None, fault)
                    self._reset_connection()
                    return
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:  # the upstream failed
                for _ in body:  # drain what is left of the request, then say why
                    pass
                self._send_error(502, "BadGateway", f"upstream: {exc!r}", None)
                return
            self._relay(response, fault)
        finally:
            conn.close()

    def _relay(self, response: http.client.HTTPResponse, fault: Fault | None) -> None:
        has_body = (
            self.command != "HEAD"
            and response.status not in (204, 304)
            and not (100 <= response.status < 200)
        )
        length_text = response.getheader("Content-Length")
        length = int(length_text) if length_text is not None and has_body else None
        chunked = has_body and length is None and response.chunked

        self._record(response.status, fault)
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            lower = name.lower()
            if lower in _HOP_BY_HOP or lower == "transfer-encoding":
                continue
            self.send_header(name, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif has_body and length is None:  # close-delimited upstream body
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

        # How much of the body to send before the fault strikes (None: all of it).
        budget: int | None = None
        if fault is not None and fault.kind in ("truncate", "reset") and has_body:
            budget = int((length if length is not None else CHUNK) * (fault.fraction or 0.0))
        corrupt_at: int | None = None
        if fault is not None and fault.kind == "corrupt_checksum" and has_body:
            corrupt_at = length // 2 if length else 0

        sent = 0
        while has_body:
            piece = response.read(CHUNK)
            if not piece:
                break
            if corrupt_at is not None and sent <= corrupt_at < sent + len(piece):
                index = corrupt_at - sent
                piece = piece[:index] + bytes([piece[index] ^ 0x01]) + piece[index + 1 :]
            if budget is not None:
                piece = piece[: max(0, budget - sent)]
            if piece:
                if chunked:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                else:
                    self.wfile.write(piece)
            sent += len(piece)
            if budget is not None and sent >= budget:
                break

        if fault is not None and fault.kind == "reset":
            self._reset_connection()
        elif fault is not None and fault.kind == "truncate":
            self.close_connection = True  # a normal close (FIN) after the short body
        elif chunked:
            self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: FaultyS3) -> None:
        self.owner = owner
        self.state = owner._state
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-request is not the test's concern


class FaultyS3:
    """The proxy. `start()` (or ``with FaultyS3(upstream) as proxy:``) binds 127.0.0.1:free port."""

    def __init__(self, upstream: str, *, host: str = "127.0.0.1", timeout: float = 60.0) -> None:
        self.upstream = urlsplit(upstream)
        if self.upstream.scheme not in ("http", "https") or not self.upstream.hostname:
            raise ValueError(f"upstream must be an http(s) URL: {upstream!r}")
        self.host = host
        self.timeout = timeout
        self._state = _State()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("FaultyS3 is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> FaultyS3:
        if self._server is None:
            self._server = _Server((self.host, 0), self)
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="faulty-s3",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._state.lock:  # wake the handler threads waiting on kept-alive connections
            connections = list(self._state.connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FaultyS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults -------------------------------------------------------------------------------------

    def _add(self, fault: Fault) -> Fault:
        with self._state.lock:
            self._state.faults.append(fault)
        return fault

    def _take_fault(self, method: str, key: str) -> Fault | None:
        with self._state.lock:
            for fault in self._state.faults:
                if fault.matches(method, key):
                    fault.hits += 1
                    return fault
        return None

    def fail(
        self,
        match: Matcher,
        status: int = 500,
        code: str = "InternalError",
        times: int | None = None,
        *,
        message: str | None = None,
        methods: Sequence[str] = ("GET",),
    ) -> Fault:
        """Answer matching requests with `status` and an S3 XML error `code` (not forwarded).

        503 + "SlowDown" is S3's throttling; pass ``methods=("GET", "HEAD")`` to fail HeadObject
        too (a HEAD error has no body: botocore reports the status as the code, e.g. "503").
        """
        return self._add(
            Fault(
                "fail",
                match,
                frozenset(m.upper() for m in methods),
                times,
                status=status,
                code=code,
                message=message or f"Injected {code} by faulty_s3",
            )
        )

    def throttle(self, match: Matcher, times: int | None = None, **kwargs: Any) -> Fault:
        """`fail` with 503 SlowDown."""
        return self.fail(match, 503, "SlowDown", times, **kwargs)

    def reset(
        self,
        match: Matcher,
        times: int | None = None,
        *,
        after_fraction: float | None = None,
        methods: Sequence[str] = ("GET",),
    ) -> Fault:
        """Reset the connection (RST) after reading the request.

        `after_fraction` None: without answering (the request did reach the upstream); a float:
        after forwarding the headers and that fraction of the body.
        """
        return self._add(
            Fault(
                "reset",
                match,
                frozenset(m.upper() for m in methods),
                times,
                fraction=after_fraction,
            )
        )

    def truncate(
        self,
        match: Matcher,
        fraction: float = 0.5,
        times: int | None = None,
        *,
        methods: Sequence[str] = ("GET",),
    ) -> Fault:
        """Send the upstream headers (its Content-Length) and only `fraction` of the body, then
        close the connection normally."""
        if not 0.0 <= fraction < 1.0:
            raise ValueError("fraction must be in [0, 1)")
        return self._add(
            Fault(
                "truncate", match, frozenset(m.upper() for m in methods), times, fraction=fraction
            )
        )

    def corrupt_checksum(
        self, match: Matcher, times: int | None = None, *, methods: Sequence[str] = ("GET",)
    ) -> Fault:
        """Forward the response with the middle byte of the body flipped (XOR 1); same length and
        headers, so the stored x-amz-checksum-* no longer matches the bytes."""
        return self._add(
            Fault("corrupt_checksum", match, frozenset(m.upper() for m in methods), times)
        )

    def clear(self) -> None:
        """Lift every fault (the request records are kept; see `clear_requests`)."""
        with self._state.lock:
            self._state.faults.clear()

    # -- records ------------------------------------------------------------------------------------

    def requests(self, key: str | None = None, method: str | None = None) -> list[RequestRecord]:
        """Requests seen so far, oldest first; filtered by exact key and/or method."""
        with self._state.lock:
            records = list(self._state.records)
        return [
            r
            for r in records
            if (key is None or r.key == key) and (method is None or r.method == method.upper())
        ]

    def count(self, key: str, method: str | None = "GET") -> int:
        """How many `method` requests (None: any method) reached the proxy for exactly `key`."""
        return len(self.requests(key, method))

    def clear_requests(self) -> None:
        with self._state.lock:
            self._state.records.clear()


@contextmanager
def faulty_s3(upstream: str) -> Iterator[FaultyS3]:
    """``with faulty_s3(moto_endpoint) as proxy:`` (or ``yield`` from it in a fixture)."""
    proxy = FaultyS3(upstream).start()
    try:
        yield proxy
    finally:
        proxy.stop()
