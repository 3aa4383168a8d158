"""Daily partitions by landing date (UTC date of the object's LastModified).

A day holds any number of files, so the partition count grows by one a day however many files
arrive (per-file dynamic partitions would pass Dagster's advised ~100k within weeks at scale);
the ledger `ingested_files` keeps the per-file record.
"""

import dagster as dg

# end_offset=1: today's partition exists while files for today are still landing.
landing_date_partitions = dg.DailyPartitionsDefinition(start_date="2020-01-01", end_offset=1)
