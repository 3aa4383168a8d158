"""A configured import as a feed declaration on the shared path: its manifest's columns become
the feed's fields (renamed, typed), its mapped attributes the records' attributes or event
properties, its event name a fixed field. Parsing, validation, quarantine, ledger, dedupe and
merge are the ones every feed has (pipeline.py)."""

from __future__ import annotations

from ingest_pipeline.config import ImportConfig
from ingest_pipeline.feeds import FeedSpec, FieldKind, FieldSpec, TargetSpec, event_target
from ingest_pipeline.imports.manifest import AttributeType, ColumnMapping, Manifest

FEED_PREFIX = "import_"
_KINDS: dict[AttributeType, FieldKind] = {
    "string": "string",
    "number": "number",
    "boolean": "boolean",
    "datetime": "datetime",
}


def import_feed_name(imp: ImportConfig) -> str:
    """The feed name the import's files have in the ledger (`ingested_files.feed`)."""
    return f"{FEED_PREFIX}{imp.name}"


def _field(m: ColumnMapping, imp: ImportConfig, *, kind: FieldKind | None = None) -> FieldSpec:
    mandatory = kind is not None
    return FieldSpec(
        m.attribute,
        kind or _KINDS[m.type],
        required=mandatory,
        column=m.column,
        format=m.format,
        timezone=imp.timezone,
    )


def import_feed(imp: ImportConfig, manifest: Manifest) -> FeedSpec:
    """The feed of an import: users into `contacts`, events into `events`."""
    kind = imp.kind
    key = "user_id" if kind in ("registered", "events") else "anonymous_id"
    keyed = _field(manifest.mapping(key), imp, kind="identity")
    mandatory = {key} | ({"event_time"} if kind == "events" else set())
    others = [_field(m, imp) for m in manifest.mappings if m.attribute not in mandatory]
    common = {
        "name": import_feed_name(imp),
        "landing_prefix": "",  # files come from the import's folder, not the landing zone
        "undeclared": "ignore",
        "header_required": True,
        "identity_columns": (key,),
    }
    if kind == "events":
        event_time = _field(manifest.mapping("event_time"), imp, kind="datetime")
        event_text = FieldSpec("event_text", fixed=imp.event_name, description="the event name")
        return FeedSpec(
            **common,
            description=f"Import {imp.name}: {imp.event_name} events from {imp.folder}.",
            fields=(keyed, event_time, event_text, *others),
            extras_column="properties",
            extras_fields=tuple(f.name for f in others),
            dedupe_key=(key, "event_text", "event_time"),
            targets=(event_target(key, "event_text", "event_time", "properties"),),
        )
    # Anonymous users are marked so, registered ones not (the newest mark wins).
    anonymous = FieldSpec(
        "anonymous", "boolean", required=False, fixed="true" if kind == "anonymous" else "false"
    )
    return FeedSpec(
        **common,
        description=f"Import {imp.name}: {kind} users from {imp.folder}.",
        fields=(keyed, *others, anonymous),
        extras_column="attributes",
        extras_fields=(*(f.name for f in others), "anonymous"),
        targets=(
            TargetSpec(
                table="contacts",
                key=("tenant_id", "contact_key"),
                mode="attributes",
                attributes_from="attributes",
                columns={"tenant_id": "tenant_id", "contact_key": key},
            ),
        ),
    )
