"""One job per feed: its bronze and warehouse assets, for one landing date."""

import dagster as dg

from ingest_pipeline.defs.ingestion.assets import feed_assets
from ingest_pipeline.defs.ingestion.partitions import landing_date_partitions

feed_jobs = {
    name: dg.define_asset_job(
        f"ingest_{name}",
        selection=dg.AssetSelection.assets(*assets).without_checks(),
        partitions_def=landing_date_partitions,
        description=f"Ingest {name} files: parse to bronze, then merge into the warehouse.",
    )
    for name, assets in feed_assets.items()
}
all_feed_jobs = list(feed_jobs.values())
