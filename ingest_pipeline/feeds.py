"""One declaration per feed: its fields, where its extras go, and which tables it merges into.

Everything downstream (parsing, validation, dedupe, merge) reads these declarations; adding a feed
means adding a `FeedSpec`, not copying another feed's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FieldKind = Literal["string", "email", "unix_seconds", "timestamp", "boolean", "number"]


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: FieldKind = "string"
    required: bool = True


@dataclass(frozen=True)
class TargetSpec:
    """How a feed's rows fold into one warehouse table.

    mode:
      - "row": the whole row is the unit. Within one file `within_file` picks the winner
        ("first" line or "last" line); across files the most recently landed file wins.
      - "attributes": per attribute, the most recently landed non-null value wins (later lines
        of the same file are newer).
    columns: warehouse column -> expression over the bronze row (SQL).
    """

    table: str
    key: tuple[str, ...]
    mode: Literal["row", "attributes"]
    columns: dict[str, str]
    within_file: Literal["first", "last"] = "first"
    attributes_from: str | None = None  # bronze column holding the JSON attributes
    # A column whose batch min/max bounds the stored rows a merge must read (zone-map pruning).
    prune_column: str | None = None
    # "attributes" mode: attributes also kept in a column of their own (newest value, like the
    # rest), e.g. an account's `domain`; they stay in the attributes JSON too.
    promoted: tuple[str, ...] = ()

    def written_columns(self) -> tuple[str, ...]:
        """The warehouse columns a merge of this target writes (the DDL must have them)."""
        if self.mode == "row":
            return (*self.columns, "etag", "key_hash_hi", "key_hash_lo")
        return (*self.columns, *self.promoted, "attributes", "first_seen_at", "updated_at")


@dataclass(frozen=True)
class FeedSpec:
    name: str
    landing_prefix: str
    fields: tuple[FieldSpec, ...]
    extras_column: str  # JSON column that receives keys/columns not declared in `fields`
    targets: tuple[TargetSpec, ...]
    description: str = ""
    # Key used to count duplicates inside one file (first occurrence kept); None: no row dedupe.
    dedupe_key: tuple[str, ...] | None = None

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def primary_target(self) -> TargetSpec:
        return self.targets[0]


def same_named(*columns: str) -> dict[str, str]:
    """Warehouse columns taken as they are from the bronze row, with its provenance
    (tenant, source file, line, landing time) that every row table keeps."""
    return {c: c for c in ("tenant_id", *columns, "source_uri", "line_number", "landed_at")}


TRACK = FeedSpec(
    name="track",
    landing_prefix="track/",
    description="What a person did: one event per record.",
    fields=(
        FieldSpec("event_text"),
        FieldSpec("event_timestamp", "unix_seconds"),
        FieldSpec("contact_key"),
    ),
    extras_column="properties",
    dedupe_key=("contact_key", "event_text", "event_timestamp"),
    targets=(
        TargetSpec(
            table="events",
            key=("tenant_id", "contact_key", "event_text", "event_timestamp"),
            mode="row",
            within_file="first",
            prune_column="event_timestamp",
            columns=same_named("contact_key", "event_text", "event_timestamp", "properties"),
        ),
    ),
)

IDENTIFY = FeedSpec(
    name="identify",
    landing_prefix="identify/",
    description="Who a person is: contact key, email and attributes.",
    fields=(FieldSpec("contact_key"), FieldSpec("email", "email")),
    extras_column="attributes",
    targets=(
        TargetSpec(
            table="contacts",
            key=("tenant_id", "contact_key"),
            mode="attributes",
            attributes_from="attributes",
            columns={"tenant_id": "tenant_id", "contact_key": "contact_key", "email": "email"},
        ),
    ),
)

GROUP = FeedSpec(
    name="group",
    landing_prefix="group/",
    description="Which account a person belongs to; extra keys are account attributes.",
    fields=(FieldSpec("contact_key"), FieldSpec("account_key")),
    extras_column="attributes",
    targets=(
        # A person belongs to one account: the most recent one (later line, newer file).
        TargetSpec(
            table="contact_accounts",
            key=("tenant_id", "contact_key"),
            mode="row",
            within_file="last",
            columns=same_named("contact_key", "account_key"),
        ),
        TargetSpec(
            table="accounts",
            key=("tenant_id", "account_key"),
            mode="attributes",
            attributes_from="attributes",
            columns={"tenant_id": "tenant_id", "account_key": "account_key"},
            promoted=("domain",),
        ),
    ),
)

_CRM_FIELDS = (
    FieldSpec("email", "email"),
    FieldSpec("account"),
    FieldSpec("created_at", "timestamp"),
    FieldSpec("is_worked", "boolean"),
    FieldSpec("is_converted", "boolean"),
    FieldSpec("amount", "number"),
    FieldSpec("is_unqualified", "boolean", required=False),
    FieldSpec("worked_date", "timestamp", required=False),
    FieldSpec("converted_date", "timestamp", required=False),
    FieldSpec("deal_amount", "number", required=False),
)

CRM = FeedSpec(
    name="crm",
    landing_prefix="crm/",
    description="CRM leads for customer-fit training.",
    fields=_CRM_FIELDS,
    extras_column="attributes",
    dedupe_key=("email",),
    targets=(
        TargetSpec(
            table="crm_leads",
            key=("tenant_id", "email"),
            mode="row",
            within_file="first",
            columns=same_named(*(f.name for f in _CRM_FIELDS), "attributes"),
        ),
    ),
)

FLAT_FILE_FEEDS: dict[str, FeedSpec] = {f.name: f for f in (IDENTIFY, TRACK, GROUP, CRM)}
FEEDS: dict[str, FeedSpec] = dict(FLAT_FILE_FEEDS)


def feed_for_key(key: str) -> FeedSpec | None:
    """The flat-file feed whose landing prefix holds `key` (relative to the landing root)."""
    for feed in FEEDS.values():
        if key.startswith(feed.landing_prefix):
            return feed
    return None
