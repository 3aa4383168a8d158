"""The code location: everything under defs/, plus the resources it runs with."""

from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource

from ingest_pipeline.defs.warehouse.resources import IngestResource

RESOURCES = {"ingest": IngestResource(s3=S3Resource())}

defs = dg.Definitions.merge(
    dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
    dg.Definitions(
        resources=RESOURCES,
        # A run's steps run one after the other in the run's own process: a process per step
        # (the multiprocess default) costs seconds of start-up for milliseconds of work.
        executor=dg.in_process_executor,
    ),
)
