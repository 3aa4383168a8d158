"""One declaration per feed: its fields, where its extras go, and which tables it merges into.

Everything downstream (parsing, validation, dedupe, merge) reads these declarations; adding a feed
means adding a `FeedSpec`, not copying another feed's code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

FieldKind = Literal[
    "string",
    "email",
    "unix_seconds",
    "timestamp",
    "datetime",  # text in the field's strftime `format` (configured imports' manifests)
    "boolean",
    "number",
    "identity",
    "object",
]

# Identities that stand for nobody in particular: merging people on them would fuse strangers.
# Compared trimmed and case-folded; `ingest.yaml` `identity.placeholders` replaces the list.
DEFAULT_PLACEHOLDER_IDENTITIES = (
    "",
    "null",
    "undefined",
    "none",
    "nil",
    "anonymous",
    "guest",
    "n/a",
    "0",
    "-1",
    "[object object]",
)
MAX_IDENTITY_CHARS = 255


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: FieldKind = "string"
    required: bool = True
    # The only value the field may have (the API records' `type`), compared as sent.
    const: str | None = None
    description: str = ""
    # The field's name in the file (a CSV column, a JSON key) when it is not `name`: a
    # configured import's manifest maps the client's USER_ID column to `user_id`.
    column: str | None = None
    # The field's value in every record, set by the declaration and not read from the file (an
    # import's event name).
    fixed: str | None = None
    # "datetime" fields: the strftime format of the text, and the time zone of times the text
    # gives without an offset.
    format: str | None = None
    timezone: str = "UTC"

    @property
    def source(self) -> str:
        """The field's name in the file."""
        return self.column or self.name

    @property
    def label(self) -> str:
        """How reasons name the field: as the file has it, and what it maps to if renamed."""
        if self.column is None or self.column == self.name:
            return f"field '{self.name}'"
        return f"column '{self.column}' (attribute '{self.name}')"


@dataclass(frozen=True)
class RecordRule:
    """A rule over a whole record (several fields, or its extras), in SQL over the validation
    columns and the extras column: `passes` true for the records that pass."""

    name: str
    passes: str
    reason: str  # plain text


@dataclass(frozen=True)
class TargetSpec:
    """How a feed's rows fold into one warehouse table.

    mode:
      - "row": the whole row is the unit. Within one file `within_file` picks the winner
        ("first" line or "last" line); across files the most recently landed file wins.
      - "attributes": per attribute, the most recently landed non-null value wins (later lines
        of the same file are newer).
    columns: warehouse column -> expression over the bronze row (SQL).
    where: which bronze rows the target takes (SQL predicate); None: every row.
    record_time: SQL over the bronze row giving the time the record says it happened: the
      winner is then the newest record time, landing order breaking ties. Stored as the
      `recorded_at` column (row mode) or attribute_values.recorded_at; None: landing order only.
    graph_edges: the target's rows (alias_key, contact_key) are edges of the identity graph.
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
    where: str | None = None
    record_time: str | None = None
    graph_edges: bool = False

    def written_columns(self) -> tuple[str, ...]:
        """The warehouse columns a merge of this target writes (the DDL must have them)."""
        if self.mode == "row":
            timed = ("recorded_at",) if self.record_time else ()
            return (*self.columns, *timed, "etag", "key_hash_hi", "key_hash_lo")
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
    # Rules over whole records, checked after the field rules.
    record_rules: tuple[RecordRule, ...] = ()
    # Bronze columns holding a person's identity (contact key): each one seen gets its row in
    # `identities`, a cluster of one until an alias joins it to others.
    identity_columns: tuple[str, ...] = ()
    placeholder_identities: tuple[str, ...] = DEFAULT_PLACEHOLDER_IDENTITIES
    # The channel: whose tenant a file is. "setting": INGEST_TENANT's; "key": the `tenant=<name>`
    # folder of the file's key (the Ingestion API's layout, `api_key_layout`).
    tenant_from: Literal["setting", "key"] = "setting"
    # JSON types are part of the rules (a string field given a number is refused): the feed's
    # records are the documents of its JSON Schema (api/schemas.py), which also refuses keys
    # the feed does not declare. Flat-file feeds take any scalar as text.
    strict_json: bool = False
    example: dict[str, Any] = field(default_factory=dict)  # one valid record, for the docs
    # Columns (keys) the file has that no field declares: "extras" keeps them in the extras
    # column; "ignore" leaves them out (a configured import imports what its manifest maps,
    # and the file's report lists the others as not imported).
    undeclared: Literal["extras", "ignore"] = "extras"
    # Declared fields whose typed values are the record's extras JSON (an import's mapped
    # attributes, as numbers, booleans and ISO 8601 times); empty: the undeclared columns are.
    extras_fields: tuple[str, ...] = ()
    # A required field's column missing from a CSV file's header fails the file (an import's
    # mandatory mapping), instead of rejecting every record for it.
    header_required: bool = False

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def primary_target(self) -> TargetSpec:
        return self.targets[0]


def with_provenance(**columns: str) -> dict[str, str]:
    """Warehouse column -> bronze expression, with the row's provenance (tenant, source file,
    line, landing time) that every row table keeps."""
    return {
        "tenant_id": "tenant_id",
        **columns,
        "source_uri": "source_uri",
        "line_number": "line_number",
        "landed_at": "landed_at",
    }


def same_named(*columns: str) -> dict[str, str]:
    """Warehouse columns taken as they are from the bronze row, with its provenance."""
    return with_provenance(**{c: c for c in columns})


def event_target(
    key: str,
    event_text: str,
    event_timestamp: str,
    properties: str,
    *,
    table: str = "events",
    key_column: str = "contact_key",
    where: str | None = None,
) -> TargetSpec:
    """An event table's rows (`events`, `account_events`): keyed by (tenant, whose, name,
    time), the first line of a file winning within it, pruned by time; the arguments are the
    bronze expressions of each column."""
    return TargetSpec(
        table=table,
        key=("tenant_id", key_column, "event_text", "event_timestamp"),
        mode="row",
        within_file="first",
        prune_column="event_timestamp",
        where=where,
        columns=with_provenance(
            **{key_column: key},
            event_text=event_text,
            event_timestamp=event_timestamp,
            properties=properties,
        ),
    )


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
    identity_columns=("contact_key",),
    targets=(event_target("contact_key", "event_text", "event_timestamp", "properties"),),
)

IDENTIFY = FeedSpec(
    name="identify",
    landing_prefix="identify/",
    description="Who a person is: contact key, email and attributes.",
    fields=(FieldSpec("contact_key"), FieldSpec("email", "email")),
    extras_column="attributes",
    identity_columns=("contact_key",),
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
    identity_columns=("contact_key",),
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

# Kissmetrics-style event logs (SPEC section 3.2): one line is an event (`_n`), an alias (`_p2`),
# both, or person properties set at `_t` (neither). Same tables as the flat files: an event here
# and the same event in a track file are one row.
_HAS_EVENT = "_n IS NOT NULL"
_HAS_ALIAS = "_p2 IS NOT NULL"
KISSMETRICS = FeedSpec(
    name="kissmetrics",
    landing_prefix="kissmetrics/",
    description="Kissmetrics-style event logs: events (_n), aliases (_p2) and person properties.",
    fields=(
        FieldSpec("_p", "identity"),
        FieldSpec("_t", "unix_seconds"),
        FieldSpec("_n", required=False),
        FieldSpec("_p2", "identity", required=False),
    ),
    extras_column="properties",
    record_rules=(
        RecordRule(
            "needs_n_p2_or_property",
            f"{_HAS_EVENT} OR {_HAS_ALIAS} OR coalesce(properties::VARCHAR, '{{}}') <> '{{}}'",
            "needs `_n`, `_p2` or a property: a line with only `_p` and `_t` says nothing",
        ),
    ),
    identity_columns=("_p", "_p2"),
    targets=(
        event_target("_p", "_n", "_t", "properties", where=_HAS_EVENT),
        # An alias names one person: its newest `_t` wins (SPEC section 6 keys it by alias).
        TargetSpec(
            table="aliases",
            key=("tenant_id", "alias_key"),
            mode="row",
            within_file="last",
            where=_HAS_ALIAS,
            record_time="_t",
            graph_edges=True,
            columns=with_provenance(alias_key="_p2", contact_key="_p"),
        ),
        # Person properties set at `_t`: per property the newest `_t` wins, whatever the order
        # in which files land (a late old file does not overwrite newer values).
        TargetSpec(
            table="contacts",
            key=("tenant_id", "contact_key"),
            mode="attributes",
            attributes_from="properties",
            where=f"NOT ({_HAS_EVENT}) AND NOT ({_HAS_ALIAS})",
            record_time="_t",
            columns={"tenant_id": "tenant_id", "contact_key": "_p"},
        ),
    ),
)


# --- Ingestion API streams (SPEC sections 3.3 and 5) ------------------------------------------
# Each stream is a feed whose records are the documents of its JSON Schema, which is generated
# from this declaration (api/schemas.py): the API checks uploads with the schema, the pipeline
# checks the files' lines with the row rules of the same fields.

API_PREFIX = "data/tenants/objects/"
API_SOURCE_SYSTEM = "dataapi"
_NO_UNKNOWN_KEYS = RecordRule(
    "no_unknown_keys",
    "coalesce(unknown_keys::VARCHAR, '{}') = '{}'",
    "has keys the stream's schema does not declare (see GET /ingestion/schemas/<stream>): put "
    "custom data in the record's *_properties object",
)


def _api_stream(
    name: str,
    fields: tuple[FieldSpec, ...],
    targets: tuple[TargetSpec, ...],
    *,
    description: str,
    example: dict[str, Any],
    identity_columns: tuple[str, ...] = (),
    dedupe_key: tuple[str, ...] | None = None,
) -> FeedSpec:
    kind = FieldSpec("type", const=name, required=False, description=f"always {name!r}")
    return FeedSpec(
        name=name,
        landing_prefix=f"{API_PREFIX}{name}/",
        description=description,
        fields=(kind, *fields),
        extras_column="unknown_keys",
        record_rules=(_NO_UNKNOWN_KEYS,),
        targets=targets,
        identity_columns=identity_columns,
        dedupe_key=dedupe_key,
        tenant_from="key",
        strict_json=True,
        example=example,
    )


def _event_stream(
    name: str, key: str, table: str, key_column: str, *, whose: str, example: dict[str, Any]
) -> FeedSpec:
    """An event stream: `key` (whose event), a name and a Unix time, into `table`'s rows keyed by
    (tenant, `key_column`, event_text, event_timestamp), deduplicated like `track` events."""
    return _api_stream(
        name,
        (
            FieldSpec(key, "identity", description=f"the {whose}'s id"),
            FieldSpec("event_name", description="what happened, e.g. 'signed_up'"),
            FieldSpec("event_timestamp", "unix_seconds", description="when, in Unix seconds"),
            FieldSpec("event_properties", "object", required=False, description="anything else"),
        ),
        (
            event_target(
                key,
                "event_name",
                "event_timestamp",
                "event_properties",
                table=table,
                key_column=key_column,
            ),
        ),
        description=f"API stream: an action or behaviour of a {whose} (e.g. "
        f"'{example['event_name']}').",
        example=example,
        identity_columns=(key,) if key_column == "contact_key" else (),
        dedupe_key=(key, "event_name", "event_timestamp"),
    )


CONTACT_EVENT = _event_stream(
    "contact_event",
    "contact_id",
    "events",
    "contact_key",
    whose="person",
    example={
        "type": "contact_event",
        "contact_id": "user-42",
        "event_name": "signed_up",
        "event_timestamp": 1751012665,
        "event_properties": {"plan": "trial", "source": "webinar"},
    },
)
ACCOUNT_EVENT = _event_stream(
    "account_event",
    "account_id",
    "account_events",
    "account_key",
    whose="company",
    example={
        "type": "account_event",
        "account_id": "acme-corp",
        "event_name": "new_funding_round",
        "event_timestamp": 1751012665,
        "event_properties": {"amount": 25000000, "series": "B"},
    },
)
CONTACT = _api_stream(
    "contact",
    (
        FieldSpec("contact_id", "identity", description="the person's id"),
        FieldSpec("email", "email", required=False, description="the person's e-mail address"),
        FieldSpec("contact_properties", "object", required=False, description="attributes"),
    ),
    (
        TargetSpec(
            table="contacts",
            key=("tenant_id", "contact_key"),
            mode="attributes",
            attributes_from="contact_properties",
            columns={"tenant_id": "tenant_id", "contact_key": "contact_id", "email": "email"},
        ),
    ),
    description="API stream: an update of a person's attributes.",
    example={
        "type": "contact",
        "contact_id": "user-42",
        "email": "ada@acme.com",
        "contact_properties": {"first_name": "Ada", "title": "CTO"},
    },
    identity_columns=("contact_id",),
)
ACCOUNT = _api_stream(
    "account",
    (
        FieldSpec("account_id", "identity", description="the account's id"),
        FieldSpec("domain", required=False, description="the company's web domain"),
        FieldSpec("account_properties", "object", required=False, description="attributes"),
    ),
    (
        TargetSpec(
            table="accounts",
            key=("tenant_id", "account_key"),
            mode="attributes",
            attributes_from="account_properties",
            columns={"tenant_id": "tenant_id", "account_key": "account_id", "domain": "domain"},
            promoted=("domain",),
        ),
    ),
    description="API stream: an update of a company's attributes.",
    example={
        "type": "account",
        "account_id": "acme-corp",
        "domain": "acme.com",
        "account_properties": {"name": "Acme Corporation", "industry": "Technology"},
    },
)
API_STREAMS: dict[str, FeedSpec] = {
    f.name: f for f in (CONTACT_EVENT, ACCOUNT_EVENT, CONTACT, ACCOUNT)
}
API_STREAM_NAMES = tuple(API_STREAMS)
# A tenant's name is a folder of the API's file keys (tenant=<name>); ingest.yaml checks it.
TENANT_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
# data/tenants/objects/<stream>/source_system=dataapi/tenant=<tenant>/dt=<YYYY-MM-DD-HH-MM>/<uuid>.jsonl[.gz]
API_KEY_LAYOUT = re.compile(
    rf"{API_PREFIX}(?P<stream>{'|'.join(API_STREAM_NAMES)})/"
    rf"source_system={API_SOURCE_SYSTEM}/tenant=(?P<tenant>{TENANT_NAME})/"
    r"dt=(?P<dt>\d{4}-\d{2}-\d{2}-\d{2}-\d{2})/"
    r"(?P<uuid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.jsonl(?P<gz>\.gz)?"
)

FLAT_FILE_FEEDS: dict[str, FeedSpec] = {f.name: f for f in (IDENTIFY, TRACK, GROUP, CRM)}
FEEDS: dict[str, FeedSpec] = {**FLAT_FILE_FEEDS, KISSMETRICS.name: KISSMETRICS, **API_STREAMS}


def tenant_of(feed: FeedSpec, key: str, default: str) -> str | None:
    """Whose file the landed `key` is: `default` (INGEST_TENANT) for the feeds whose tenant is a
    setting; the key's `tenant=` folder for the API streams, None when the key does not follow
    their layout (the file then fails with key_problem's reason)."""
    if feed.tenant_from == "setting":
        return default
    match = API_KEY_LAYOUT.fullmatch(key)
    if match is None or match["stream"] != feed.name:
        return None
    return match["tenant"]


def key_problem(feed: FeedSpec, key: str) -> str | None:
    """Why a file at `key` cannot be the feed's, or None."""
    if feed.tenant_from == "key" and tenant_of(feed, key, "") is None:
        return (
            "the file's key does not follow the Ingestion API layout "
            f"{API_PREFIX}{feed.name}/source_system={API_SOURCE_SYSTEM}/tenant=<tenant>/"
            "dt=<YYYY-MM-DD-HH-MM>/<uuid>.jsonl[.gz], so whose file it is is unknown: upload it "
            "through the API"
        )
    return None


def configured(feed: FeedSpec, placeholders: tuple[str, ...] | None) -> FeedSpec:
    """The feed as `ingest.yaml` configures it (its placeholder identities)."""
    if placeholders is None:
        return feed
    return replace(feed, placeholder_identities=tuple(p.strip().lower() for p in placeholders))


def feed_for_key(key: str) -> FeedSpec | None:
    """The flat-file feed whose landing prefix holds `key` (relative to the landing root)."""
    for feed in FEEDS.values():
        if key.startswith(feed.landing_prefix):
            return feed
    return None
