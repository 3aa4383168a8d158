"""Many clients, one deployment: the landing zones the feeds' sensors watch.

The default landing zone (INGEST_LANDING_URL, its files INGEST_TENANT's; the Ingestion API's
files there are the tenant their key names) is always watched. Each tenant of `ingest.yaml`
that names a `landing_url` (the client's own bucket or prefix, opened with the client's
credentials) adds one more, whose files are all that tenant's, whatever their keys say: a
client cannot drop a file as another tenant.

What keeps tenants apart (nothing here knows Dagster):

* Files: the ledger's identity is (source_uri, etag), and a file's URI names its landing zone
  (bucket and prefix, or folder); landing zones may not overlap (config.py refuses two tenants'
  that do, `tenant_landings` one that overlaps the default), so `track/a.jsonl` in two buckets
  is two files, each its tenant's.
* Sensor state: the cursor holds one discovery cursor per landing zone (`landing_cursors`), so
  each zone's files are found, capped and remembered on their own.
* Runs: a request holds one tenant's files of one landing zone (`run_key` tells requests apart
  even when two buckets hold the same keys with the same content) and is tagged
  `ingest/tenant`; a run reads each file from the landing zone its URI names (`landing_for`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ingest_pipeline.bronze import SourceFile
from ingest_pipeline.config import ConfigError, IngestConfig, TenantConfig, landings_overlap
from ingest_pipeline.feeds import FeedSpec
from ingest_pipeline.landing import (
    LandedObject,
    LandingZone,
    LocalLanding,
    S3Landing,
    is_s3_url,
    join_key,
    s3_client_from_env,
    split_s3_url,
)

log = logging.getLogger(__name__)

# The cursor entry (and run-key part) of the default landing zone: '@' is in no tenant's name.
DEFAULT_ENTRY = "@default"
CURSOR_VERSION = 2
# Run tag naming the tenant whose files a run reads (dagster.yaml limits runs per tenant).
TENANT_TAG = "ingest/tenant"


class LandingUnavailable(Exception):
    """A tenant's landing zone cannot be opened (a folder that is not there)."""


@dataclass(frozen=True)
class TenantLanding:
    """One landing zone the sensors watch."""

    entry: str  # its entry in the sensor cursor: the tenant's name, or DEFAULT_ENTRY
    tenant: str  # whose files (the default zone: INGEST_TENANT; API streams: the key's)
    url: str
    config: TenantConfig | None = None  # a tenant's own zone: its credentials; None: the default

    @property
    def own(self) -> bool:
        """A tenant's own landing zone (every file in it is that tenant's)."""
        return self.config is not None

    @property
    def name(self) -> str:
        """For messages: whose landing zone it is."""
        if self.own:
            return f"tenant {self.tenant}'s landing zone {self.url}"
        return f"the default landing zone {self.url} (INGEST_LANDING_URL)"

    @functools.cached_property
    def _root(self) -> str:
        if is_s3_url(self.url):
            bucket, prefix = split_s3_url(self.url)
            return f"s3://{bucket}/{join_key(prefix, '')}"
        return str(_folder(self.url)) + os.sep

    def uri_of(self, key: str) -> str:
        """The URI a file at `key` has in this zone (as LandedObject.uri and the ledger's
        source_uri give it)."""
        return self._root + (key if is_s3_url(self.url) else key.replace("/", os.sep))

    def source(self, obj: LandedObject, feed: FeedSpec) -> SourceFile:
        """The file as its tenant's (SourceFile.of_feed; in a tenant's own zone, that tenant's)."""
        return SourceFile.of_feed(obj, feed, self.tenant, own_landing=self.own)

    def open(self, default_s3_client: Callable[[], Any]) -> LandingZone:
        """The zone, opened with the tenant's credentials (its environment variables; without
        them the standard AWS variables, as `default_s3_client` gives them). Raises
        MissingSecret (a variable not set) or LandingUnavailable."""
        config = self.config
        if is_s3_url(self.url):
            if config is not None and (
                config.aws_access_key_id_env or config.aws_session_token_env or config.region
            ):
                field = f"tenants.{self.tenant}."
                client = s3_client_from_env(
                    f"tenant {self.tenant}",
                    access_key_id=_named(
                        config.aws_access_key_id_env, field + "aws_access_key_id_env"
                    ),
                    secret_access_key=_named(
                        config.aws_secret_access_key_env, field + "aws_secret_access_key_env"
                    ),
                    session_token=_named(
                        config.aws_session_token_env, field + "aws_session_token_env"
                    ),
                    region=config.region,
                )
            else:
                client = default_s3_client()
            return S3Landing(self.url, client=client)
        if self.own and not _folder(self.url).is_dir():
            # never created: a folder that is not there is a wrong landing_url
            raise LandingUnavailable(f"{self.url} is not a folder: check tenants.{self.tenant}")
        return LocalLanding(self.url)


def _named(name: str | None, field: str) -> tuple[str, str] | None:
    return None if name is None else (name, field)


def _folder(url: str) -> Path:
    text = url[len("file://") :] if url.lower().startswith("file://") else url
    return Path(text).expanduser().resolve()


def tenant_landings(
    config: IngestConfig, *, default_url: str, default_tenant: str
) -> list[TenantLanding]:
    """The default landing zone, then each tenant's own in ingest.yaml's order. A tenant's
    zone that overlaps the default one is a configuration error (whose would its files be?)."""
    landings = [TenantLanding(DEFAULT_ENTRY, default_tenant, default_url)]
    for name, tenant in config.tenants.items():
        url = config.tenant_landing_url(name)
        if url is None:
            continue
        if landings_overlap(url, default_url):
            raise ConfigError(
                f"tenants.{name}.landing_url: {url} overlaps the default landing zone "
                f"{default_url} (INGEST_LANDING_URL): each tenant needs a bucket or prefix of "
                "its own"
            )
        landings.append(TenantLanding(name, name, url, tenant))
    return landings


def landing_for(landings: Sequence[TenantLanding], uri: str, key: str) -> TenantLanding | None:
    """The landing zone a file (its URI and landing key) is in, None if none configured now."""
    for landing in landings:
        if landing.uri_of(key) == uri:
            return landing
    return None


T = TypeVar("T")


def by_landing(
    landings: Sequence[TenantLanding], files: Iterable[T], where: Callable[[T], tuple[str, str]]
) -> tuple[list[tuple[TenantLanding, list[T]]], list[T]]:
    """`files` grouped by the landing zone each is in (`where`: its URI and landing key), in
    the order of `landings`; and the files in none of them."""
    groups: dict[str, list[T]] = {}
    lost: list[T] = []
    for f in files:
        landing = landing_for(landings, *where(f))
        if landing is None:
            lost.append(f)
        else:
            groups.setdefault(landing.entry, []).append(f)
    return [(la, groups[la.entry]) for la in landings if la.entry in groups], lost


def by_tenant(sources: Sequence[SourceFile]) -> list[tuple[str, list[SourceFile]]]:
    """The files per tenant, in order of first appearance (the API streams' files in the
    default zone are each the tenant their key names)."""
    groups: dict[str, list[SourceFile]] = {}
    for s in sources:
        groups.setdefault(s.tenant_id, []).append(s)
    return list(groups.items())


def run_key(landing: TenantLanding, tenant: str, batch_key: str, *, split: bool) -> str:
    """The request key of one tenant's part of a discovery batch. The default zone's whole
    batch keeps discovery's key (as before tenants had landing zones); any other is told apart
    by its zone and tenant: two buckets with the same keys and contents are two requests."""
    if landing.entry == DEFAULT_ENTRY and not split:
        return batch_key
    return f"{batch_key}/{landing.entry}/{tenant}"


def landing_cursors(text: str | None) -> dict[str, str]:
    """The sensor cursor as one discovery cursor per landing zone entry. A cursor of before
    (one discovery cursor, one landing zone) is the default zone's."""
    if not text:
        return {}
    try:
        data = json.loads(text)
        version = data.get("v")
        if version == CURSOR_VERSION:
            return {str(k): json.dumps(v) for k, v in data["landings"].items()}
        if version == 1:
            return {DEFAULT_ENTRY: text}
        raise ValueError(f"unknown cursor version {version!r}")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # As discovery does: starting over re-requests what is listed; the ledger knows it.
        log.error("ignoring unreadable sensor cursor (%s): starting from scratch", exc)
        return {}


def dump_cursors(entries: dict[str, str]) -> str:
    """The sensor cursor holding each landing zone's discovery cursor (sorted: the same state
    always gives the same string)."""
    landings = {k: json.loads(v) for k, v in sorted(entries.items())}
    return json.dumps({"v": CURSOR_VERSION, "landings": landings}, separators=(",", ":"))


def round_robin(lists: Sequence[Sequence[T]]) -> list[T]:
    """One item of each list in turn: the first requests of every tenant come first, so a
    burst from one tenant is not ahead of another's whole queue."""
    out: list[T] = []
    longest = max((len(items) for items in lists), default=0)
    for i in range(longest):
        out += [items[i] for items in lists if i < len(items)]
    return out


def describe_problem(exc: BaseException, url: str) -> str:
    """Why a landing zone could not be listed, in words (never a secret)."""
    from ingest_pipeline.imports.folders import listing_problem

    if isinstance(exc, LandingUnavailable):
        return str(exc)
    return listing_problem(exc, url) or f"{type(exc).__name__}: {exc}"
