"""`ingest.yaml` (SPEC section 9): parsed and validated in one place, at load time.

Unknown keys and invalid values are errors naming the offending path, e.g.
`flows[1].format: must be one of csv, tsv, jsonl`, raised before any run starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ingest_pipeline.identity.graph import DEFAULT_MAX_CLUSTER_SIZE

if TYPE_CHECKING:
    from ingest_pipeline.feeds import FeedSpec


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
    (several at once: a new key is added, clients move to it, the old one is removed)."""

    api_key_env: str | None = None
    api_key_envs: list[str] = []

    @field_validator("api_key_envs")
    @classmethod
    def _envs(cls, value: list[str]) -> list[str]:
        return _env_names(value)

    @field_validator("api_key_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        return None if value is None else _env_names([value])[0]

    def key_envs(self) -> list[str]:
        names = [self.api_key_env] if self.api_key_env else []
        return names + [n for n in self.api_key_envs if n not in names]


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
_CRON_FIELD = re.compile(
    r"(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?(,(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?)*"
)


def cron_schedule(value: str) -> str:
    """'hourly' | 'daily' | 'weekly' | 'monthly' | a five-field cron string -> a cron string."""
    text = value.strip()
    if text in _CRON_ALIASES:
        return _CRON_ALIASES[text]
    fields = text.split()
    if len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields):
        raise ValueError(
            f"{value!r} is not hourly, daily, weekly, monthly or a five-field cron string"
        )
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


Schedule = str  # once | hourly | daily | weekly | monthly | a cron string


class PgpConfig(_Strict):
    private_key_env: str
    passphrase_env: str | None = None
    signer_public_key_env: str | None = None


class ImportConfig(_Strict):
    name: str = Field(min_length=1)
    type: Literal["users", "events"]
    event_name: str | None = None
    user_kind: Literal["registered", "anonymous"] | None = None
    folder: str
    datetime_format: str = "%Y%m%d%H%M%S"
    manifest: str
    timezone: str = "UTC"
    schedule: Schedule = "once"
    end_after_runs: int | None = Field(default=None, ge=1)
    end_at: str | None = None
    pgp: PgpConfig | None = None
    notify: list[str] = Field(default=[], max_length=10)
    tenant: str = "default"

    @model_validator(mode="after")
    def _kind(self) -> ImportConfig:
        if self.type == "events" and not self.event_name:
            raise ValueError("event_name is required for type events")
        if self.type == "users" and self.user_kind is None:
            raise ValueError("user_kind (registered or anonymous) is required for type users")
        return self


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
    seen: dict[tuple[str, str | None, str], int] = {}
    for i, imp in enumerate(config.imports):
        if imp.tenant not in tenants:
            problems.append(f"imports[{i}].tenant: unknown tenant {imp.tenant!r}")
        sub_type = imp.event_name if imp.type == "events" else imp.user_kind
        key = (imp.type, sub_type, imp.folder.rstrip("/"))
        if key in seen:
            problems.append(f"imports[{i}]: same type, sub-type and folder as imports[{seen[key]}]")
        seen.setdefault(key, i)
    return problems


def parse_config(data: Any, *, source: str = "ingest.yaml") -> IngestConfig:
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
    return parse_config(data, source=str(path))
