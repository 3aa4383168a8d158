"""`ingest.yaml` (SPEC section 9): parsed and validated in one place, at load time.

Unknown keys and invalid values are errors naming the offending path, e.g.
`flows[1].format: must be one of csv, tsv, jsonl`, raised before any run starts.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from ingest_pipeline.identity.graph import DEFAULT_MAX_CLUSTER_SIZE

if TYPE_CHECKING:
    from ingest_pipeline.feeds import FeedSpec
    from ingest_pipeline.imports.manifest import Manifest


class ConfigError(ValueError):
    """ingest.yaml is invalid; the message lists every problem with its path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


def _env_names(values: list[str]) -> list[str]:
    for value in values:
        if not re.fullmatch(_ENV_NAME, value):
            raise ValueError(
                f"{value!r} must be the name of an environment variable (letters, digits, '_')"
            )
    return values


class TenantConfig(_Strict):
    """A tenant: its Ingestion API keys, each read from the environment variable named here
    (several at once: a new key is added, clients move to it, the old one is removed), and
    optionally a landing zone of its own (the client's bucket or prefix, with the client's
    credentials by environment variable; unset: the standard AWS variables)."""

    api_key_env: str | None = None
    api_key_envs: list[str] = []
    landing_url: str | None = None  # s3://bucket[/prefix] or a folder (relative to ingest.yaml)
    aws_access_key_id_env: str | None = None
    aws_secret_access_key_env: str | None = None
    aws_session_token_env: str | None = None
    region: str | None = None

    @field_validator("api_key_envs")
    @classmethod
    def _envs(cls, value: list[str]) -> list[str]:
        return _env_names(value)

    @field_validator(
        "api_key_env", "aws_access_key_id_env", "aws_secret_access_key_env", "aws_session_token_env"
    )
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        return None if value is None else _env_names([value])[0]

    @field_validator("landing_url")
    @classmethod
    def _landing(cls, value: str | None) -> str | None:
        return None if value is None else _check_landing_url(value)

    def key_envs(self) -> list[str]:
        names = [self.api_key_env] if self.api_key_env else []
        return names + [n for n in self.api_key_envs if n not in names]


_TENANT_S3_FIELDS = (
    "aws_access_key_id_env",
    "aws_secret_access_key_env",
    "aws_session_token_env",
    "region",
)


def _check_landing_url(value: str) -> str:
    """s3://bucket[/prefix] or a local folder (never the filesystem's root)."""
    text = value.strip()
    if not text:
        raise ValueError("must be s3://bucket[/prefix] or a folder")
    if "://" in text:
        parsed = urlparse(text)
        scheme = parsed.scheme.lower()
        if scheme == "s3":
            if not parsed.netloc:
                raise ValueError(f"{value!r} has no bucket: use s3://bucket[/prefix]")
            if parsed.query or parsed.fragment or "@" in parsed.netloc:
                raise ValueError(f"{value!r}: use s3://bucket[/prefix], nothing else")
        elif scheme != "file":
            raise ValueError(
                f"{value!r}: unsupported scheme {parsed.scheme!r}; use s3://bucket[/prefix] or "
                "a folder"
            )
    elif Path(text).expanduser().resolve() == Path("/"):
        raise ValueError(f"{value!r}: a landing zone is a folder, not the root")
    return text


class RateLimitConfig(_Strict):
    """A token bucket per API key: `per_second` requests on average, bursts of `burst`."""

    per_second: float = Field(gt=0)
    burst: int = Field(default=0, ge=0)  # 0: one second's worth


class ApiConfig(_Strict):
    """The Ingestion API (SPEC section 5)."""

    max_json_bytes: int = Field(default=1024 * 1024, ge=1)  # upload-json, decompressed
    max_upload_bytes: int = Field(default=2 * 1024**3, ge=1)  # presigned uploads
    upload_url_expiry_seconds: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    rate_limit: RateLimitConfig | None = None  # off by default
    # The secret that signs the local PUT URLs (local landing folder); unset, `ingest-pipeline
    # api` makes a random one per start (URLs it gave die with it).
    signing_key_env: str = "INGEST_API_SIGNING_KEY"
    # Base of the upload URLs the service gives for a local landing folder; default: the URL
    # the request came to.
    public_url: str | None = None

    @field_validator("signing_key_env")
    @classmethod
    def _env(cls, value: str) -> str:
        return _env_names([value])[0]


OnError = Literal["continue", "skip_file", "abort"]


class FeedPolicy(_Strict):
    on_error: OnError = "continue"
    max_rejected_fraction: float = Field(default=0.0, ge=0.0, le=1.0)


class SegmentConfig(_Strict):
    name: str = Field(min_length=1)
    sql: str = Field(min_length=1)

    @field_validator("sql")
    @classmethod
    def _sql(cls, value: str) -> str:
        text = value.strip().rstrip(";").strip()
        if not text:
            raise ValueError("must be a SELECT query")
        return text


def _check_target(value: str) -> str:
    text = value.strip()
    if not text:
        raise ValueError("must be s3://bucket[/path], sftp://user@host[:port][/path] or a folder")
    if "://" in text:
        parsed = urlparse(text)
        if parsed.scheme == "s3":
            if not parsed.netloc:
                raise ValueError(f"{value!r} has no bucket: use s3://bucket[/path]")
        elif parsed.scheme == "sftp":
            if not parsed.hostname:
                raise ValueError(f"{value!r} has no host: use sftp://user@host[:port][/path]")
            try:
                parsed.port  # noqa: B018 - raises on a non-numeric port
            except ValueError as exc:
                raise ValueError(f"{value!r} has an invalid port") from exc
            if parsed.password is not None:
                # Never echo the value: it is a secret.
                raise ValueError(
                    "sftp target must not contain a password; name an environment variable in "
                    "target_password_env instead"
                )
            if not parsed.username:
                raise ValueError(f"{value!r} has no user: use sftp://user@host[:port][/path]")
            if parsed.query or parsed.fragment:
                raise ValueError(f"{value!r}: an sftp target takes no '?' query or '#' fragment")
        elif parsed.scheme == "file":
            pass
        else:
            raise ValueError(
                f"{value!r}: unsupported scheme {parsed.scheme!r}; use s3://, sftp:// or a folder"
            )
    return text


# Columns of every flow data file, in order (SPEC section 7); custom contexts follow.
FEED_COLUMNS = (
    "identifier",
    "timestamp",
    "segment_name",
    "flow_name",
    "action",
    "variant",
    "operation",
)
# The `action` of each member's data-feed entry; the flow's own actions add one entry each.
DATA_FEED_ACTION = "data_feed"

_CRON_ALIASES = {
    "hourly": "0 * * * *",
    "daily": "0 0 * * *",
    "weekly": "0 0 * * 0",
    "monthly": "0 0 1 * *",
}
# Per cron field: (name, lowest, highest, names allowed instead of numbers).
_CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    (
        "month",
        1,
        12,
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    ),
    ("day of week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)
_CRON_ITEM = re.compile(r"(\*|[0-9A-Za-z]+(?:-[0-9A-Za-z]+)?)(?:/([0-9]+))?")


def _cron_field_problem(
    text: str, name: str, low: int, high: int, names: tuple[str, ...]
) -> str | None:
    def value(token: str) -> int | None:
        if token.isdigit():
            number = int(token)
            return number if low <= number <= high else None
        lowered = token.lower()
        return names.index(lowered) + low if lowered in names else None

    for item in text.split(","):
        match = _CRON_ITEM.fullmatch(item)
        if match is None:
            return f"{name} {item!r} is not a value, a range, '*' or a step"
        span, step = match.groups()
        if step is not None and int(step) == 0:
            return f"{name} {item!r}: a step must be 1 or more"
        if span == "*":
            continue
        bounds = [value(t) for t in span.split("-")]
        if any(b is None for b in bounds):
            return f"{name} {item!r} is outside {low}-{high}"
        if len(bounds) == 2 and bounds[0] > bounds[1]:  # type: ignore[operator]
            return f"{name} {item!r}: a range goes from low to high"
    return None


def cron_schedule(value: str) -> str:
    """'hourly' | 'daily' | 'weekly' | 'monthly' | a five-field cron string -> a cron string,
    each field checked against its range (Dagster refuses the others when the code location
    loads: better a configuration error naming the key)."""
    text = value.strip()
    if text in _CRON_ALIASES:
        return _CRON_ALIASES[text]
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(
            f"{value!r} is not hourly, daily, weekly, monthly or a five-field cron string"
        )
    for field, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        problem = _cron_field_problem(field, name, low, high, names)
        if problem:
            raise ValueError(f"{value!r} is not a valid cron string: {problem}")
    return " ".join(fields)


class FlowConfig(_Strict):
    id: int
    name: str = Field(min_length=1)
    client: str = Field(min_length=1)
    tenant: str = "default"
    segment: SegmentConfig
    actions: list[str] = []
    variant: str | None = None
    format: Literal["csv", "tsv", "jsonl"] = "csv"
    hash_identity: bool = False
    target: str | None = None  # default: INGEST_EXPORT_URL
    target_password_env: str | None = None  # sftp: variable holding the password
    target_key_env: str | None = None  # sftp: variable holding a private key (OpenSSH/PEM text)
    target_known_hosts: str | None = None  # sftp: known_hosts file; default ~/.ssh/known_hosts
    path: str = ""
    custom_contexts: list[str] = []
    # Also export on this cron schedule (segments that change with time, e.g. "last 7 days");
    # exports always run after new data merges into the warehouse.
    schedule: str | None = None

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        return None if value is None else _check_target(value)

    @field_validator("target_password_env", "target_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("must be the name of an environment variable (letters, digits, '_')")
        return value

    @field_validator("actions")
    @classmethod
    def _actions(cls, value: list[str]) -> list[str]:
        for action in value:
            if not action.strip():
                raise ValueError("an action name must not be empty")
            if action == DATA_FEED_ACTION:
                raise ValueError(
                    f"{DATA_FEED_ACTION!r} is reserved: it is the action of every member's "
                    "data-feed entry"
                )
        if len(set(value)) != len(value):
            raise ValueError("actions must be distinct")
        return value

    @field_validator("custom_contexts")
    @classmethod
    def _contexts(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(
                    f"{name!r}: a custom context is a column of the segment query: letters, "
                    "digits and '_', not starting with a digit"
                )
            if name.lower() in FEED_COLUMNS:
                raise ValueError(f"{name!r} is already a column of every data file")
        if len({n.lower() for n in value}) != len(value):
            raise ValueError("custom contexts must be distinct")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        return None if value is None else cron_schedule(value)

    @model_validator(mode="after")
    def _sftp_settings(self) -> FlowConfig:
        sftp_fields = [
            name
            for name in ("target_password_env", "target_key_env", "target_known_hosts")
            if getattr(self, name) is not None
        ]
        if self.target is None:
            return self  # INGEST_EXPORT_URL decides; checked when the export runs
        if self.target.lower().startswith("sftp://"):
            if self.target_password_env is None and self.target_key_env is None:
                raise ValueError(
                    "an sftp target needs target_password_env or target_key_env (the name of "
                    "the environment variable holding the secret)"
                )
        elif sftp_fields:
            raise ValueError(f"{', '.join(sftp_fields)} only apply to sftp:// targets")
        return self

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return value.strip("/")

    @field_validator("name", "client")
    @classmethod
    def _file_name_safe(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(
                "may use letters, digits, '.', '_' and '-' only (it is part of file names)"
            )
        return value


ImportSchedule = str  # once | hourly | daily | weekly | monthly | a cron string
_EMAIL = re.compile(r"[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+")


class PgpConfig(_Strict):
    """The import's PGP keys, by environment variable: our private key (and its passphrase),
    and optionally the client's public signing key, whose signature every file must carry."""

    private_key_env: str
    passphrase_env: str | None = None
    signer_public_key_env: str | None = None

    @field_validator("private_key_env", "passphrase_env", "signer_public_key_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        return None if value is None else _env_names([value])[0]


def _check_import_folder(value: str) -> str:
    """s3://bucket/path, sftp://user@host[:port]/path or a local folder: never a bucket's (or a
    server's) root, no trailing slash (the vendor's rules for the folder path)."""
    text = value.strip()
    if text.endswith("/") and text not in ("/",):
        raise ValueError(f"{value!r}: no trailing '/' (the folder path is the folder's own)")
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("s3", "sftp"):
        _check_target(text)
        parsed = urlparse(text)
        if not parsed.path.strip("/"):
            raise ValueError(
                f"{value!r} is the root of the {'bucket' if scheme == 's3' else 'server'}: "
                "the files must be inside a folder"
            )
    elif scheme:
        raise ValueError(
            f"{value!r}: use s3://bucket/path, sftp://user@host[:port]/path or a folder"
        )
    elif not text or Path(text).expanduser().resolve() == Path("/"):
        raise ValueError(f"{value!r}: the files must be inside a folder, not the root")
    return text


def _check_time(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an ISO 8601 date or time, e.g. 2026-12-31 or 2026-12-31T18:00 "
            f"({field} without an offset is in the import's timezone)"
        ) from None
    return value


class ImportConfig(_Strict):
    """A configured CSV import (SPEC section 3.4): a client's folder, what its files hold and
    how their columns map (the manifest), when to look, whom to tell."""

    name: str = Field(min_length=1)
    type: Literal["users", "events"]
    event_name: str | None = None
    user_kind: Literal["registered", "anonymous"] | None = None
    folder: str
    # The client's credentials (the folder is theirs, not ours), by environment variable.
    # S3: unset, the standard AWS variables apply.
    s3_access_key_env: str | None = None
    s3_secret_key_env: str | None = None
    s3_session_token_env: str | None = None
    s3_region: str | None = None
    sftp_password_env: str | None = None
    sftp_key_env: str | None = None
    sftp_known_hosts: str | None = None  # default ~/.ssh/known_hosts
    datetime_format: str = "%Y%m%d%H%M%S"  # of the file names
    manifest: str  # relative to ingest.yaml's folder, or absolute
    timezone: str = "UTC"  # of the schedule, and of datetimes given without an offset
    schedule: ImportSchedule = "once"
    start_at: str | None = None  # once: when (default: as soon as possible); else: not before
    end_after_runs: int | None = Field(default=None, ge=1)
    end_at: str | None = None
    retries: int = Field(default=0, ge=0, le=10)  # failed files are not retried by default
    pgp: PgpConfig | None = None
    notify: list[str] = Field(default=[], max_length=10)
    tenant: str = "default"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", value):
            raise ValueError(
                "may use letters, digits and '_', starting with a letter (the job is import_<name>)"
            )
        return value

    @field_validator("event_name")
    @classmethod
    def _event_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", value):
            raise ValueError(
                "an event name begins the file names: letters, digits, '_', '.' or '-'"
            )
        return value

    @field_validator("folder")
    @classmethod
    def _folder(cls, value: str) -> str:
        return _check_import_folder(value)

    @field_validator(
        "s3_access_key_env",
        "s3_secret_key_env",
        "s3_session_token_env",
        "sftp_password_env",
        "sftp_key_env",
    )
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        return None if value is None else _env_names([value])[0]

    @field_validator("datetime_format")
    @classmethod
    def _datetime_format(cls, value: str) -> str:
        from ingest_pipeline.imports.manifest import check_datetime_format

        problem = check_datetime_format(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not an IANA time zone, e.g. UTC or Europe/Paris"
            ) from None
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        return "once" if value.strip() == "once" else cron_schedule(value)

    @field_validator("start_at")
    @classmethod
    def _start(cls, value: str | None) -> str | None:
        return _check_time(value, "start_at")

    @field_validator("end_at")
    @classmethod
    def _end(cls, value: str | None) -> str | None:
        return _check_time(value, "end_at")

    @field_validator("notify")
    @classmethod
    def _notify(cls, value: list[str]) -> list[str]:
        for address in value:
            if not _EMAIL.fullmatch(address):
                raise ValueError(f"{address!r} is not an e-mail address")
        if len(set(value)) != len(value):
            raise ValueError("the addresses must be distinct")
        return value

    @model_validator(mode="after")
    def _kind(self) -> ImportConfig:
        if self.type == "events":
            if not self.event_name:
                raise ValueError("event_name is required for type events")
            if self.user_kind is not None:
                raise ValueError("user_kind only applies to type users")
        if self.type == "users":
            if self.user_kind is None:
                raise ValueError("user_kind (registered or anonymous) is required for type users")
            if self.event_name is not None:
                raise ValueError("event_name only applies to type events")
        channel = self.channel
        s3_fields = [n for n in _S3_FIELDS if getattr(self, n) is not None]
        sftp_fields = [n for n in _SFTP_FIELDS if getattr(self, n) is not None]
        if s3_fields and channel != "s3":
            raise ValueError(f"{', '.join(s3_fields)} only apply to s3:// folders")
        if sftp_fields and channel != "sftp":
            raise ValueError(f"{', '.join(sftp_fields)} only apply to sftp:// folders")
        if (self.s3_access_key_env is None) != (self.s3_secret_key_env is None):
            raise ValueError("s3_access_key_env and s3_secret_key_env go together")
        if channel == "sftp" and not (self.sftp_password_env or self.sftp_key_env):
            raise ValueError(
                "an sftp folder needs sftp_password_env or sftp_key_env (the name of the "
                "environment variable holding the secret)"
            )
        return self

    @property
    def channel(self) -> Literal["s3", "sftp", "local"]:
        lower = self.folder.lower()
        if lower.startswith("s3://"):
            return "s3"
        if lower.startswith("sftp://"):
            return "sftp"
        return "local"

    @property
    def kind(self) -> Literal["registered", "anonymous", "events"]:
        if self.type == "events":
            return "events"
        assert self.user_kind is not None
        return self.user_kind

    @property
    def file_prefix(self) -> str:
        """What the file names begin with (then `_<datetime>.csv`)."""
        if self.type == "events":
            assert self.event_name is not None
            return self.event_name
        return f"{self.user_kind}_users"

    @property
    def job_name(self) -> str:
        return f"import_{self.name}"


_S3_FIELDS = ("s3_access_key_env", "s3_secret_key_env", "s3_session_token_env", "s3_region")
_SFTP_FIELDS = ("sftp_password_env", "sftp_key_env", "sftp_known_hosts")


class IdentityConfig(_Strict):
    """The identity graph (SPEC section 3.2): which identities stand for nobody, and how many
    identities one person may have before an alias joining more is refused."""

    # None: feeds.DEFAULT_PLACEHOLDER_IDENTITIES. Compared trimmed and case-folded.
    placeholders: list[str] | None = None
    max_cluster_size: int = Field(default=DEFAULT_MAX_CLUSTER_SIZE, ge=2)


class IngestConfig(_Strict):
    tenants: dict[str, TenantConfig] = {}
    feeds: dict[str, FeedPolicy] = {}
    flows: list[FlowConfig] = []
    imports: list[ImportConfig] = []
    identity: IdentityConfig = IdentityConfig()
    api: ApiConfig = ApiConfig()
    # The folder of ingest.yaml: manifests and local import folders are relative to it.
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _manifests: dict[str, Manifest] = PrivateAttr(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def import_config(self, name: str) -> ImportConfig:
        for imp in self.imports:
            if imp.name == name:
                return imp
        known = ", ".join(i.name for i in self.imports) or "none"
        raise KeyError(f"no import named {name!r} in ingest.yaml (imports: {known})")

    def manifest(self, name: str) -> Manifest:
        """The import's manifest, as read and checked when the configuration loaded."""
        return self._manifests[name]

    def import_folder(self, imp: ImportConfig) -> str:
        """The import's folder URL; a local folder made absolute (relative to ingest.yaml)."""
        if imp.channel != "local":
            return imp.folder
        return str((self._base_dir / Path(imp.folder).expanduser()).resolve())

    def tenant_landing_url(self, name: str) -> str | None:
        """The tenant's own landing zone URL (a local folder made absolute, relative to
        ingest.yaml), or None: the tenant has no landing zone of its own."""
        url = self.tenants[name].landing_url
        if url is None or url.lower().startswith("s3://"):
            return url
        folder = url[len("file://") :] if url.lower().startswith("file://") else url
        return str((self._base_dir / Path(folder).expanduser()).resolve())

    def policy(self, feed: str) -> FeedPolicy:
        return self.feeds.get(feed, FeedPolicy())

    def feed(self, name: str) -> FeedSpec:
        """The feed's declaration as this configuration sets it (placeholder identities)."""
        from ingest_pipeline.feeds import FEEDS, configured

        placeholders = self.identity.placeholders
        return configured(FEEDS[name], tuple(placeholders) if placeholders is not None else None)

    def flow(self, flow_id: int) -> FlowConfig:
        for flow in self.flows:
            if flow.id == flow_id:
                return flow
        raise KeyError(flow_id)


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _message(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        choices = ", ".join(re.findall(r"'([^']*)'", expected))
        return f"must be one of {choices}"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def segment_sql_problem(sql: str) -> str | None:
    """Why a segment query is refused (see exports.membership.check_segment_sql), or None."""
    from ingest_pipeline.exports.membership import SegmentSqlError, check_segment_sql

    try:
        check_segment_sql(sql)
    except SegmentSqlError as exc:
        return str(exc)
    return None


def _cross_checks(config: IngestConfig, known_feeds: set[str]) -> list[str]:
    problems = []
    tenants = set(config.tenants) | {"default"}
    from ingest_pipeline.feeds import TENANT_NAME

    for name in config.tenants:
        if not re.fullmatch(TENANT_NAME, name):
            problems.append(
                f"tenants.{name}: a tenant name is 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
    for name in config.feeds:
        if name not in known_feeds:
            problems.append(
                f"feeds.{name}: unknown feed; known feeds are {', '.join(sorted(known_feeds))}"
            )
    ids: dict[int, int] = {}
    for i, flow in enumerate(config.flows):
        # Parsed (not run) now, so a typo or a query that could read another tenant's rows is a
        # load-time error naming flows[i].segment.sql rather than a failed export at night.
        sql_problem = segment_sql_problem(flow.segment.sql)
        if sql_problem:
            problems.append(f"flows[{i}].segment.sql: {sql_problem}")
        if flow.tenant not in tenants:
            problems.append(f"flows[{i}].tenant: unknown tenant {flow.tenant!r}")
        if flow.id in ids:
            problems.append(f"flows[{i}].id: {flow.id} is also the id of flows[{ids[flow.id]}]")
        ids.setdefault(flow.id, i)
    problems += _import_checks(config, tenants)
    problems += _landing_checks(config)
    return problems


def landing_identity(url: str) -> tuple[str, str, str]:
    """(scheme, bucket, prefix or absolute folder) of a landing URL, for the overlap checks."""
    if url.lower().startswith("s3://"):
        bucket, _, prefix = url[5:].partition("/")
        return ("s3", bucket, prefix.strip("/"))
    folder = url[len("file://") :] if url.lower().startswith("file://") else url
    return ("local", "", str(Path(folder).expanduser().resolve()))


def landings_overlap(a: str, b: str) -> bool:
    """Whether one landing zone holds (or is) the other: their files could not be told apart."""
    (scheme_a, bucket_a, path_a), (scheme_b, bucket_b, path_b) = (
        landing_identity(a),
        landing_identity(b),
    )
    if scheme_a != scheme_b or bucket_a != bucket_b:
        return False
    if scheme_a == "local":
        return Path(path_a).is_relative_to(path_b) or Path(path_b).is_relative_to(path_a)
    parts_a, parts_b = path_a.split("/") if path_a else [], path_b.split("/") if path_b else []
    shorter = min(len(parts_a), len(parts_b))
    return parts_a[:shorter] == parts_b[:shorter]


def _landing_checks(config: IngestConfig) -> list[str]:
    """Two tenants' landing zones must not overlap: a file in both would be whose?"""
    problems = []
    seen: list[tuple[str, str]] = []
    for name, tenant in config.tenants.items():
        on_s3 = (tenant.landing_url or "").lower().startswith("s3://")
        for field in _TENANT_S3_FIELDS:
            if getattr(tenant, field) is not None and not on_s3:
                problems.append(f"tenants.{name}.{field}: only applies to an s3:// landing_url")
        pair = ("aws_access_key_id_env", "aws_secret_access_key_env")
        for field, other in (pair, pair[::-1]):
            if getattr(tenant, field) is not None and getattr(tenant, other) is None:
                problems.append(f"tenants.{name}.{other}: is required with {field}")
        url = config.tenant_landing_url(name)
        if url is None:
            continue
        for other, other_url in seen:
            if landings_overlap(url, other_url):
                problems.append(
                    f"tenants.{name}.landing_url: {url} overlaps tenant {other}'s landing zone "
                    f"({other_url}): each tenant needs a bucket or prefix of its own"
                )
                break
        seen.append((name, url))
    return problems


def _folder_identity(config: IngestConfig, imp: ImportConfig) -> tuple[str, str, str]:
    """(scheme, bucket or host, folder path) of an import's folder, for the duplicate check."""
    if imp.channel == "local":
        return ("local", "", config.import_folder(imp))
    parsed = urlparse(imp.folder)
    return (imp.channel, (parsed.hostname or "").lower(), parsed.path.strip("/"))


def _import_checks(config: IngestConfig, tenants: set[str]) -> list[str]:
    from ingest_pipeline.imports.manifest import ManifestError, load_manifest

    problems = []
    names: dict[str, int] = {}
    seen: dict[tuple[object, ...], int] = {}
    for i, imp in enumerate(config.imports):
        if imp.tenant not in tenants:
            problems.append(f"imports[{i}].tenant: unknown tenant {imp.tenant!r}")
        if imp.name in names:
            problems.append(
                f"imports[{i}].name: {imp.name!r} is also the name of imports[{names[imp.name]}]"
            )
        names.setdefault(imp.name, i)
        # The vendor's rule: one import per type, sub-type, bucket and folder path.
        sub_type = imp.event_name if imp.type == "events" else imp.user_kind
        key = (imp.type, sub_type, *_folder_identity(config, imp))
        if key in seen:
            j = seen[key]
            problems.append(
                f"imports[{i}] ({imp.name}) duplicates imports[{j}] ({config.imports[j].name}): "
                f"same type ({imp.type}), sub-type ({sub_type}), bucket and folder "
                f"({imp.folder}); change one of them, or remove one import"
            )
        seen.setdefault(key, i)
        path = Path(imp.manifest).expanduser()
        path = path if path.is_absolute() else config.base_dir / path
        try:
            config._manifests[imp.name] = load_manifest(path, imp.kind)
        except ManifestError as exc:
            problems.append(f"imports[{i}].manifest: {exc}")
    return problems


def parse_config(
    data: Any, *, source: str = "ingest.yaml", base_dir: Path | None = None
) -> IngestConfig:
    from ingest_pipeline.feeds import FEEDS

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        config = IngestConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{_path(e['loc'])}: {_message(e)}" for e in exc.errors()]
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(lines)) from None
    config._base_dir = (base_dir or Path.cwd()).resolve()
    problems = _cross_checks(config, set(FEEDS))
    if problems:
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(problems))
    return config


def load_config(path: str | Path | None) -> IngestConfig:
    """Read and validate the YAML file at `path`; no path means the empty configuration."""
    if path is None:
        return IngestConfig()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"INGEST_CONFIG points at {path}, which does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(data, source=str(path), base_dir=path.parent)
