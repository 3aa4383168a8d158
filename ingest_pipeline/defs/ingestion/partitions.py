"""Daily partitions by landing date (UTC date of the object's LastModified).

A day holds any number of files, so the partition count grows by one a day however many files
arrive (per-file dynamic partitions would pass Dagster's advised ~100k within weeks at scale);
the ledger `ingested_files` keeps the per-file record.

The first partition is `INGEST_PARTITIONS_START_DATE` (YYYY-MM-DD). Unset, it is the first day
of the month two months back, so the UI shows at most about three months of days, not years of
"missing" ones. A file that landed before the first partition belongs to the first partition.
"""

import dagster as dg

from ingest_pipeline.discovery import partition_key_for
from ingest_pipeline.settings import partitions_start_date

__all__ = ["landing_date_partitions", "partition_key_for"]

# end_offset=1: today's partition exists while files for today are still landing.
landing_date_partitions = dg.DailyPartitionsDefinition(
    start_date=partitions_start_date().isoformat(), end_offset=1
)
