"""What went wrong with one file, in words a person can act on, and whether trying again helps.

Every exception raised while one file is handled (downloaded, decompressed, decrypted, parsed,
validated, written to bronze) is turned into a `FileFailure` here, so that the file ends with a
status and the batch goes on. Three kinds:

* `transient`: the same attempt may well succeed later (S3 5xx or throttling, a connection reset,
  a timeout, a body cut short or failing its checksum, a warehouse locked by another writer).
  The file is retried after a delay, a bounded number of times.
* `permanent`: the file itself cannot be read this way (its content, or a bug met on it); trying
  again gives the same result. The file is `failed` at once, with the reason.
* `machinery`: the run itself cannot go on (disk full, out of memory, the warehouse or the lake
  unreachable). The exception is re-raised: the run fails, and the files it had not finished are
  taken again by the reconciliation (recovery.py).
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Literal

import duckdb

FailureKind = Literal["transient", "permanent", "machinery"]
# Where in a file's handling the exception happened. (Writing bronze to the lake and the ledger
# to the warehouse is the run's machinery: a failure there fails the run.)
Stage = Literal["download", "read"]

# S3 error codes worth another try (besides any HTTP 5xx).
_TRANSIENT_S3_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "BadDigest",
}
# Transient by nature, wherever they come from (class names: botocore, urllib3, http.client).
_TRANSIENT_CLASS_NAMES = {
    "EndpointConnectionError",
    "ConnectionClosedError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ResponseStreamingError",
    "IncompleteReadError",
    "IncompleteRead",
    "FlexibleChecksumError",
    "ChecksumError",
    "ChecksumMismatch",
    "ProtocolError",
    "HTTPClientError",
    "ProxyConnectionError",
    "RemoteDisconnected",
    "ConnectionError",
}
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class RunMachineryError(Exception):
    """The run cannot go on (see the module docstring); raised, never recorded per file."""


@dataclass(frozen=True)
class FileFailure:
    kind: FailureKind
    stage: Stage
    message: str  # what happened, where, and what to do

    @property
    def transient(self) -> bool:
        return self.kind == "transient"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _s3_code(exc: BaseException) -> tuple[str, int | None] | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code, status if isinstance(status, int) else None


def _is_lock_conflict(exc: BaseException) -> bool:
    text = str(exc)
    return (
        isinstance(exc, duckdb.Error)
        and "lock" in text.lower()
        and ("Conflicting" in text or "Could not set lock" in text)
    )


def kind_of(exc: BaseException) -> FailureKind:
    """Whether `exc` (or an exception it was raised from) is transient, permanent or machinery."""
    for e in _chain(exc):
        if isinstance(e, RunMachineryError | MemoryError):
            return "machinery"
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            return "machinery"
    for e in _chain(exc):
        s3 = _s3_code(e)
        if s3 is not None:
            code, status = s3
            if code in _TRANSIENT_S3_CODES or (status is not None and status >= 500):
                return "transient"
            if status in (408, 429):
                return "transient"
        if type(e).__name__ in _TRANSIENT_CLASS_NAMES:
            return "transient"
        if isinstance(e, TimeoutError | socket.timeout | ConnectionError):
            return "transient"
        if _is_lock_conflict(e):
            return "transient"
    return "permanent"


def _describe(exc: BaseException) -> str:
    s3 = next((c for c in map(_s3_code, _chain(exc)) if c is not None), None)
    text = " ".join(str(exc).split())[:500]
    if s3 is not None:
        code, status = s3
        return f"S3 answered HTTP {status} {code}: {text}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_WHAT_TO_DO: dict[tuple[Stage, FailureKind], str] = {
    ("download", "transient"): (
        "the landing zone (S3) did not deliver the file; it is retried automatically"
    ),
    ("download", "permanent"): (
        "check that the pipeline's credentials can read the object, then re-ingest it"
    ),
    ("read", "transient"): "a temporary problem while reading; it is retried automatically",
    ("read", "permanent"): (
        "the pipeline could not read this file; check its content (format, compression, "
        "encoding) and send it again, or report the error with the file if it looks valid"
    ),
}


def classify(exc: BaseException, stage: Stage, where: str) -> FileFailure:
    """The failure of one file at `stage` (`where`: the file's URI), with an actionable message."""
    kind = kind_of(exc)
    doing = {"download": "downloading", "read": "reading"}
    action = _WHAT_TO_DO.get((stage, kind), "the run could not go on")
    return FileFailure(
        kind=kind,
        stage=stage,
        message=f"{doing[stage]} {where} failed: {_describe(exc)} ({action})",
    )
