"""The Ingestion API (SPEC section 5): FastAPI over uploads.py, status.py and keys.py.

`create_app()` builds the service from the environment and `ingest.yaml` when it starts (not at
import): `ingest-pipeline api` runs it under uvicorn (`factory=True`), one app per worker.
"""

import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

import jsonschema_rs
import orjson
from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field

from ingest_pipeline.api.body import BodyLimit, read_json_body
from ingest_pipeline.api.keys import Caller, KeyRing, RateLimiter
from ingest_pipeline.api.schemas import all_schemas
from ingest_pipeline.api.status import WarehouseBusy, file_status
from ingest_pipeline.api.uploads import (
    GZIP_MAGIC,
    FileKey,
    UploadStore,
    idempotency_key,
    new_file_key,
    parse_file_key,
    sign_local_put,
)
from ingest_pipeline.config import IngestConfig, load_config
from ingest_pipeline.feeds import API_STREAM_NAMES
from ingest_pipeline.landing import landing_from_url
from ingest_pipeline.settings import Settings, get_settings

log = logging.getLogger(__name__)

Stream = Literal[API_STREAM_NAMES]  # type: ignore[valid-type] # the declared streams
SMALL_BODY_BYTES = 64 * 1024  # every endpoint but upload-json and the local PUT
# A retry of an Idempotency-Key whose first request is this recent and has not written its
# file yet is told to wait (409), not to write a second one.
IN_PROGRESS_SECONDS = 30.0
# Twenty digits in a row may be an integer beyond 64 bits: such a body is parsed by Python's json
# (exact) instead of orjson (which would turn it into a float). Found by a byte translation (a
# regex costs ~25 us per KB).
_DIGITS = bytes.maketrans(b"0123456789", b"9999999999")
_LONG_NUMBER = b"9" * 20
UPLOAD_CONTENT_TYPE = "application/jsonl"
UPLOAD_CONTENT_ENCODING = "gzip"

api_key_header = APIKeyHeader(
    name="x-api-key", auto_error=False, description="Your tenant's API key."
)


class UploadAnswer(BaseModel):
    status: Literal["success"]
    message: str
    file_key: str


class UploadUrlRequest(BaseModel):
    stream: Stream
    content_type: Literal["application/jsonl"] = UPLOAD_CONTENT_TYPE
    content_encoding: Literal["gzip"] = UPLOAD_CONTENT_ENCODING


class UploadUrlAnswer(BaseModel):
    upload_url: str
    file_key: str
    expires_at: str
    headers: dict[str, str] = Field(description="Send these headers with the PUT.")


class ConfirmRequest(BaseModel):
    file_key: str = Field(max_length=512)


class RejectedLine(BaseModel):
    line: int
    reason: str
    raw: str | None


class FileStatusAnswer(BaseModel):
    file_key: str
    status: str = Field(
        description="awaiting confirmation | queued | parsing | parsed | retrying | ingested | "
        "failed | skipped | vanished"
    )
    rows_read: int | None
    rows_loaded: int | None
    rows_duplicate: int | None
    rows_rejected: int | None
    error: str | None
    rejected_sample: list[RejectedLine]


class ErrorItem(BaseModel):
    index: int | None = Field(description="the record's index in `data`, if a record")
    path: str = Field(description="JSON Pointer to the offending value, e.g. /data/7/account_id")
    message: str


class ValidationAnswer(BaseModel):
    detail: list[ErrorItem]


class ErrorAnswer(BaseModel):
    detail: str


def _pointer(parts: list[Any] | tuple[Any, ...]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _invalid(path: list[Any], message: str, index: int | None = None) -> HTTPException:
    return HTTPException(422, [{"index": index, "path": _pointer(path), "message": message}])


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorAnswer, "description": "Missing or unknown API key."},
    429: {"model": ErrorAnswer, "description": "Rate limit: retry after `Retry-After` seconds."},
}


@dataclass
class Service:
    config: IngestConfig
    settings: Settings
    keys: KeyRing
    limiter: RateLimiter | None
    store: UploadStore
    validators: dict[str, Any]
    secret: bytes


def _envelope_schema(name: str, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"stream": {"const": name}, "data": {"type": "array", "items": record}},
        "required": ["stream", "data"],
        "additionalProperties": False,
    }


def _signing_secret(config: IngestConfig) -> bytes:
    value = os.environ.get(config.api.signing_key_env, "")
    if value:
        return value.encode()
    # No key configured and not started by `ingest-pipeline api` (which makes one for all its
    # workers): one for this process.
    key = secrets.token_urlsafe(32)
    os.environ[config.api.signing_key_env] = key
    return key.encode()


class _RedactUploadSignatures(logging.Filter):
    """Access-log lines show an upload URL's path, not its signature (a capability to write
    until it expires)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(a, str) and "signature=" in a for a in record.args
        ):
            record.args = tuple(
                _SIGNATURE.sub(r"\1<redacted>", a) if isinstance(a, str) else a for a in record.args
            )
        return True


_SIGNATURE = re.compile(r"(signature=)[0-9a-fA-F]+")


def create_app(config: IngestConfig | None = None, settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    config = config or load_config(settings.config_path)
    placeholders = config.identity.placeholders
    schemas = all_schemas(tuple(placeholders) if placeholders is not None else None)
    service = Service(
        config=config,
        settings=settings,
        keys=KeyRing.from_config(config),
        limiter=RateLimiter(config.api.rate_limit) if config.api.rate_limit else None,
        store=UploadStore(landing_from_url(settings.landing_url)),
        validators={
            name: jsonschema_rs.validator_for(_envelope_schema(name, schema))
            for name, schema in schemas.items()
        },
        secret=_signing_secret(config),
    )
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _RedactUploadSignatures) for f in access.filters):
        access.addFilter(_RedactUploadSignatures())
    if not len(service.keys):
        log.warning("no API key is configured (tenants.<name>.api_key_env): every call gets 401")
    app = FastAPI(
        title="ingest_pipeline Ingestion API",
        version="1",
        description=(
            "Push contact events, account events, contacts and accounts: small batches as JSON "
            "(`upload-json`, up to 1 MB), large ones as gzipped JSONL through an upload URL "
            "(`generate-upload-url`, PUT, `confirm-upload`, up to 2 GB). Every answer says "
            "where the data went, and `GET /ingestion/files/{file_key}` what became of it."
        ),
    )
    app.state.service = service

    def body_limit(method: str, path: str) -> int | None:
        if path == "/ingestion/upload-json":
            return config.api.max_json_bytes  # counted again decompressed
        if method == "PUT" and path.startswith("/ingestion/uploads/"):
            return config.api.max_upload_bytes
        return SMALL_BODY_BYTES

    app.add_middleware(BodyLimit, limit_for=body_limit)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        items = []
        for error in exc.errors():
            loc = [p for p in error.get("loc", ()) if p not in ("body", "path", "query")]
            items.append({"index": None, "path": _pointer(loc), "message": error.get("msg", "")})
        return JSONResponse({"detail": items}, status_code=422)

    def authorize(key: str | None) -> Caller:
        found = service.keys.caller(key)
        if found is None:
            raise HTTPException(
                401,
                "missing or unknown API key: send your key in the x-api-key header",
                headers={"WWW-Authenticate": "x-api-key"},
            )
        if service.limiter is not None:
            wait = service.limiter.take(found.key_id)
            if wait > 0:
                raise HTTPException(
                    429,
                    "too many requests for this API key: retry after the Retry-After seconds",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
        return found

    async def caller(key: Annotated[str | None, Security(api_key_header)]) -> Caller:
        return authorize(key)

    Authorized = Annotated[Caller, Depends(caller)]

    def own_key(file_key: str, who: Caller) -> FileKey:
        """The caller's file key, or 404 as if it did not exist (another tenant's, or a key the
        API never gives: '../', other prefixes, encoded slashes)."""
        parsed = parse_file_key(file_key)
        if parsed is None or not hmac.compare_digest(parsed.tenant, who.tenant):
            raise HTTPException(404, "no such file")
        return parsed

    @app.get("/ingestion/schemas", tags=["schemas"], summary="The streams and their schemas")
    def list_schemas() -> dict[str, Any]:
        return {
            "streams": [
                {
                    "stream": name,
                    "description": schemas[name]["description"],
                    "schema": f"/ingestion/schemas/{name}",
                    "example": schemas[name]["examples"][0],
                }
                for name in API_STREAM_NAMES
            ]
        }

    @app.get(
        "/ingestion/schemas/{stream}",
        tags=["schemas"],
        summary="The JSON Schema (draft 2020-12) of one record of a stream",
        responses={404: {"model": ErrorAnswer}},
    )
    def get_schema(stream: str) -> JSONResponse:
        if stream not in schemas:
            raise HTTPException(404, f"unknown stream {stream!r}: one of {', '.join(schemas)}")
        return JSONResponse(schemas[stream], media_type="application/schema+json")

    upload_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["stream", "data"],
                    "properties": {
                        "stream": {"type": "string", "enum": list(API_STREAM_NAMES)},
                        "data": {
                            "type": "array",
                            "description": "records of the stream's schema "
                            "(GET /ingestion/schemas/{stream})",
                            "items": {"type": "object"},
                        },
                    },
                },
                "example": {"stream": "account", "data": [schemas["account"]["examples"][0]]},
            }
        },
    }

    @app.post(
        "/ingestion/upload-json",
        tags=["upload"],
        summary="Upload records as JSON (up to 1 MB, gzip accepted)",
        response_model=UploadAnswer,
        openapi_extra={
            "requestBody": upload_body,
            "security": [{"APIKeyHeader": []}],
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "maxLength": 255},
                    "description": "A retry with the same key gets the first answer and writes "
                    "nothing more.",
                }
            ],
        },
        responses={
            **_ERRORS,
            400: {"model": ErrorAnswer, "description": "The body is not JSON."},
            409: {"model": ErrorAnswer, "description": "Same Idempotency-Key in progress."},
            503: {"model": ErrorAnswer, "description": "Could not be stored now: retry."},
            413: {"model": ErrorAnswer, "description": "The body is too large."},
            415: {"model": ErrorAnswer, "description": "A Content-Encoding other than gzip."},
            422: {"model": ValidationAnswer, "description": "Invalid records: nothing written."},
        },
    )
    async def upload_json(request: Request) -> Response:
        # The hot path: the key and header are read here rather than by dependency injection
        # (a third of the request's time); the OpenAPI operation documents them all the same.
        who = authorize(request.headers.get("x-api-key"))
        client_key = request.headers.get("idempotency-key")
        if client_key is not None and not 0 < len(client_key) <= 255:
            raise _invalid(["headers", "Idempotency-Key"], "must be 1 to 255 characters")
        # Any Content-Type is read as JSON (curl -d says form-urlencoded): a body that is not
        # JSON is refused for that (400), whatever its header said.
        body = await read_json_body(request, config.api.max_json_bytes)
        stream, lines = _checked_records(service, body)
        request_hash = (
            hashlib.sha256(stream.encode() + b"\0" + lines).hexdigest() if client_key else ""
        )
        try:
            if client_key is None and service.store.is_local:  # the common case
                key = new_file_key(stream, who.tenant, datetime.now(UTC), gzipped=False)
                await service.store.write_local(key.key, lines)
                answer, replayed = _answer(key.key), False
            else:
                write = (service, who.tenant, stream, lines, client_key, request_hash)
                answer, replayed = await run_in_threadpool(_write_upload, *write)
        except OSError as exc:  # disk full, I/O error: nothing was accepted, say so
            log.error("upload-json could not be stored: %s", exc)
            raise HTTPException(
                503, "the upload could not be stored: retry later", headers={"Retry-After": "5"}
            ) from None
        headers = {"Idempotent-Replayed": "true"} if replayed else {}
        return Response(orjson.dumps(answer), media_type="application/json", headers=headers)

    async def upload_url(request: Request, body: UploadUrlRequest, who: Caller) -> UploadUrlAnswer:
        key = new_file_key(body.stream, who.tenant, datetime.now(UTC), gzipped=True)
        expiry = config.api.upload_url_expiry_seconds
        expires = int(time.time()) + expiry
        if service.store.is_local:
            signature = sign_local_put(
                service.secret, key.key, expires, body.content_type, body.content_encoding
            )
            base = (config.api.public_url or str(request.base_url)).rstrip("/")
            query = urlencode({"expires": expires, "signature": signature})
            url = f"{base}/ingestion/uploads/{quote(key.key)}?{query}"
        else:
            url = await run_in_threadpool(
                service.store.presign_put,
                key.staging_key,
                body.content_type,
                body.content_encoding,
                expiry,
            )
        return UploadUrlAnswer(
            upload_url=url,
            file_key=key.key,
            expires_at=datetime.fromtimestamp(expires, UTC).isoformat(),
            headers={"Content-Type": body.content_type, "Content-Encoding": body.content_encoding},
        )

    url_doc = {
        "tags": ["upload"],
        "response_model": UploadUrlAnswer,
        "responses": {**_ERRORS, 422: {"model": ValidationAnswer}},
    }

    @app.post("/ingestion/generate-upload-url", summary="An upload URL for a .jsonl.gz", **url_doc)
    async def generate_upload_url(
        request: Request, body: UploadUrlRequest, who: Authorized
    ) -> UploadUrlAnswer:
        return await upload_url(request, body, who)

    @app.post("/ingestion/request-upload-url", summary="Alias of generate-upload-url", **url_doc)
    async def request_upload_url(
        request: Request, body: UploadUrlRequest, who: Authorized
    ) -> UploadUrlAnswer:
        return await upload_url(request, body, who)

    @app.put(
        "/ingestion/uploads/{file_key:path}",
        tags=["upload"],
        summary="Where a local upload URL points (a local landing folder only)",
        responses={
            403: {"model": ErrorAnswer},
            404: {"model": ErrorAnswer},
            409: {"model": ErrorAnswer},
            413: {"model": ErrorAnswer},
        },
    )
    async def put_upload(
        request: Request, file_key: str, expires: int = 0, signature: str = ""
    ) -> Response:
        if not service.store.is_local:
            raise HTTPException(404, "uploads go to the presigned S3 URL")
        key = parse_file_key(file_key)
        content_type = request.headers.get("content-type", "")
        content_encoding = request.headers.get("content-encoding", "")
        expected = (
            sign_local_put(service.secret, file_key, expires, content_type, content_encoding)
            if key is not None
            else ""
        )
        if key is None or not hmac.compare_digest(expected, signature):
            raise HTTPException(
                403,
                "the upload URL's signature does not match: use the URL as given and send the "
                "Content-Type and Content-Encoding headers it was made for",
            )
        if expires < time.time():
            raise HTTPException(403, "the upload URL has expired: ask for a new one")
        if await run_in_threadpool(service.store.stat, key.key) is not None:
            raise HTTPException(409, "this upload is confirmed already: ask for a new URL")
        etag = await _receive_upload(service, request, key)
        return Response(status_code=200, headers={"ETag": f'"{etag}"'})

    confirm_doc = {
        "tags": ["upload"],
        "response_model": UploadAnswer,
        "responses": {
            **_ERRORS,
            404: {"model": ErrorAnswer, "description": "No upload at this file key."},
            413: {"model": ErrorAnswer, "description": "The upload is too large."},
            422: {"model": ValidationAnswer, "description": "The upload is not gzip."},
        },
    }

    @app.post(
        "/ingestion/confirm-upload", summary="Confirm an upload: it is ingested", **confirm_doc
    )
    async def confirm_upload(body: ConfirmRequest, who: Authorized) -> dict[str, str]:
        return await run_in_threadpool(_confirm, service, own_key(body.file_key, who))

    @app.post("/ingestion/notify-upload-complete", summary="Alias of confirm-upload", **confirm_doc)
    async def notify_upload_complete(body: ConfirmRequest, who: Authorized) -> dict[str, str]:
        return await run_in_threadpool(_confirm, service, own_key(body.file_key, who))

    @app.get(
        "/ingestion/files/{file_key:path}",
        tags=["files"],
        summary="What became of an uploaded file",
        response_model=FileStatusAnswer,
        responses={**_ERRORS, 404: {"model": ErrorAnswer}, 503: {"model": ErrorAnswer}},
    )
    async def get_file(file_key: str, who: Authorized) -> dict[str, Any]:
        key = own_key(file_key, who)
        try:
            answer = await run_in_threadpool(
                file_status, service.store, key, settings.warehouse_path
            )
        except WarehouseBusy:
            raise HTTPException(
                503, "the warehouse is busy merging: retry", headers={"Retry-After": "2"}
            ) from None
        if answer is None:
            raise HTTPException(404, "no such file")
        return answer

    return app


def _parse_json(body: bytes) -> tuple[Any, bool]:
    """The document, and whether it was parsed exactly by Python's json (long numbers)."""
    try:
        if _LONG_NUMBER in body.translate(_DIGITS):
            return json.loads(body, parse_constant=_refuse_constant), True
        return orjson.loads(body), False
    except (ValueError, RecursionError) as exc:
        raise HTTPException(400, f"the body is not valid JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _jsonl(records: list[Any], exact: bool) -> bytes:
    if not exact:
        return b"".join([orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records])
    # integers beyond 64 bits, which orjson cannot write: Python's json keeps them exact
    return "".join(
        json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records
    ).encode()


def _checked_records(service: Service, body: bytes) -> tuple[str, bytes]:
    """The stream and its records as JSONL, or 400 (not JSON), or 422 with every error (index
    and path)."""
    document, exact = _parse_json(body)
    if not isinstance(document, dict):
        raise _invalid([], 'the body must be a JSON object: {"stream": ..., "data": [...]}')
    stream = document.get("stream")
    if not isinstance(stream, str) or stream not in service.validators:
        raise _invalid(["stream"], f"stream must be one of {', '.join(API_STREAM_NAMES)}")
    data = document.get("data")
    if not isinstance(data, list) or not data:
        raise _invalid(["data"], "data must be a non-empty array of records")
    validator = service.validators[stream]
    if not validator.is_valid(document):
        errors = []
        for error in validator.iter_errors(document):
            path = list(error.instance_path)
            index = path[1] if len(path) > 1 and path[0] == "data" else None
            errors.append({"index": index, "path": _pointer(path), "message": error.message})
        errors.sort(key=lambda e: (e["index"] is not None, e["index"] or 0, e["path"]))
        raise HTTPException(422, errors)
    return stream, _jsonl(data, exact)


def _answer(file_key: str) -> dict[str, str]:
    return {"status": "success", "message": "Data uploaded successfully", "file_key": file_key}


def _write_upload(
    service: Service,
    tenant: str,
    stream: str,
    lines: bytes,
    client_key: str | None,
    request_hash: str,
) -> tuple[dict[str, str], bool]:
    """Write the JSONL file; with an Idempotency-Key, only once: (the answer, replayed?)."""
    store = service.store
    if client_key is None:
        key = new_file_key(stream, tenant, datetime.now(UTC), gzipped=False)
        store.write(key.key, lines)
        return _answer(key.key), False
    record_key = idempotency_key(tenant, client_key)
    record = store.read_json(record_key)
    if record is None:
        key = new_file_key(stream, tenant, datetime.now(UTC), gzipped=False)
        record = {"request": request_hash, "answer": _answer(key.key), "at": time.time()}
        # The record first, then the file: a retry finds the record and the file key that the
        # file has, or will have, whatever moment this request died at.
        if store.create(record_key, json.dumps(record).encode()):
            store.write(key.key, lines)
            return record["answer"], False
        record = store.read_json(record_key)
        assert record is not None
    if record["request"] != request_hash:
        raise HTTPException(
            422,
            [
                {
                    "index": None,
                    "path": "",
                    "message": "this Idempotency-Key was used for a different request: use a "
                    "new key for new data",
                }
            ],
        )
    file_key = record["answer"]["file_key"]
    if store.stat(file_key) is None:
        if time.time() - float(record["at"]) < IN_PROGRESS_SECONDS:
            raise HTTPException(409, "a request with this Idempotency-Key is in progress: retry")
        store.write(file_key, lines)  # the first request died before writing its file
    return record["answer"], True


async def _receive_upload(service: Service, request: Request, key: FileKey) -> str:
    """Stream the PUT body to the upload's staging key (hidden file, renamed when whole); the
    body limit (BodyLimit) stops it at max_upload_bytes and nothing is left behind."""
    path = service.store.local_path(key.staging_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open(tmp, "wb") as out:
            async for chunk in request.stream():
                out.write(chunk)
                digest.update(chunk)
            out.flush()
            # syncing up to 2 GB takes a while: not on the event loop
            await run_in_threadpool(os.fsync, out.fileno())
        await run_in_threadpool(os.replace, tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return digest.hexdigest()


def _confirm(service: Service, key: FileKey) -> dict[str, str]:
    store = service.store
    answer = {
        "status": "success",
        "message": "File upload confirmed and processing started",
        "file_key": key.key,
    }
    if store.stat(key.key) is not None:
        return answer  # confirmed before: nothing changes
    staged = store.stat(key.staging_key)
    if staged is None:
        raise HTTPException(
            404, "nothing was uploaded at this file key: PUT the file to its upload URL first"
        )
    limit = service.config.api.max_upload_bytes
    if staged.size > limit:
        raise HTTPException(413, f"the upload is {staged.size:,} bytes; at most {limit:,}")
    if staged.size < len(GZIP_MAGIC) or store.head_bytes(key.staging_key, 2) != GZIP_MAGIC:
        raise _invalid(
            ["file_key"], "the upload is not gzip: compress the JSONL file with gzip and PUT again"
        )
    store.move(key.staging_key, key.key)
    return answer
