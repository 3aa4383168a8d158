"""`ingest.yaml` (SPEC section 9): parsed and validated in one place, at load time.

Unknown keys and invalid values are errors naming the offending path, e.g.
`flows[1].format: must be one of csv, tsv, jsonl`, raised before any run starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """ingest.yaml is invalid; the message lists every problem with its path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TenantConfig(_Strict):
    api_key_env: str | None = None


OnError = Literal["continue", "skip_file", "abort"]


class FeedPolicy(_Strict):
    on_error: OnError = "continue"
    max_rejected_fraction: float = Field(default=0.0, ge=0.0, le=1.0)


class SegmentConfig(_Strict):
    name: str = Field(min_length=1)
    sql: str = Field(min_length=1)


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
        elif parsed.scheme == "file":
            pass
        else:
            raise ValueError(
                f"{value!r}: unsupported scheme {parsed.scheme!r}; use s3://, sftp:// or a folder"
            )
    return text


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
    target_password_env: str | None = None
    target_key_env: str | None = None
    path: str = ""
    custom_contexts: list[str] = []

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        return None if value is None else _check_target(value)

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


class IngestConfig(_Strict):
    tenants: dict[str, TenantConfig] = {}
    feeds: dict[str, FeedPolicy] = {}
    flows: list[FlowConfig] = []
    imports: list[ImportConfig] = []

    def policy(self, feed: str) -> FeedPolicy:
        return self.feeds.get(feed, FeedPolicy())

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


def _cross_checks(config: IngestConfig, known_feeds: set[str]) -> list[str]:
    problems = []
    tenants = set(config.tenants) | {"default"}
    for name in config.feeds:
        if name not in known_feeds:
            problems.append(
                f"feeds.{name}: unknown feed; known feeds are {', '.join(sorted(known_feeds))}"
            )
    ids: dict[int, int] = {}
    for i, flow in enumerate(config.flows):
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
