"""The resource every ingestion asset and sensor uses: landing zone, lake and warehouse."""

import dagster as dg
from dagster_aws.s3 import S3Resource

from ingest_pipeline.config import load_config
from ingest_pipeline.landing import LandingZone, is_s3_url, landing_from_url
from ingest_pipeline.settings import get_settings
from ingest_pipeline.tenants import TenantLanding, tenant_landings


class IngestResource(dg.ConfigurableResource):
    """Locations of the pipeline. Unset fields come from the INGEST_* environment variables
    (read when used, so one deployment can be repointed without code changes)."""

    s3: dg.ResourceDependency[S3Resource]
    landing_url: str | None = None
    lake_url: str | None = None
    warehouse_path: str | None = None
    tenant: str | None = None

    def _zone(self, url: str) -> LandingZone:
        # boto3 (through dagster-aws) honours AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 itself.
        client = self.s3.get_client() if is_s3_url(url) else None
        return landing_from_url(url, s3_client=client)

    def landing(self) -> LandingZone:
        """The default landing zone (INGEST_LANDING_URL)."""
        return self._zone(self.landing_url or get_settings().landing_url)

    def landings(self) -> list[TenantLanding]:
        """Every landing zone: the default one, then each tenant's own (ingest.yaml)."""
        settings = get_settings()
        return tenant_landings(
            load_config(settings.config_path),
            default_url=self.landing_url or settings.landing_url,
            default_tenant=self.tenant_id(),
        )

    def open_landing(self, landing: TenantLanding) -> LandingZone:
        """A landing zone of `landings()`, with its tenant's credentials (the default one, and
        a tenant's without credentials of its own: this resource's S3 client)."""
        if not landing.own:
            return self._zone(landing.url)
        return landing.open(self.s3.get_client)

    def lake(self) -> LandingZone:
        return self._zone(self.lake_url or get_settings().lake_url)

    def warehouse(self) -> str:
        return self.warehouse_path or get_settings().warehouse_path

    def tenant_id(self) -> str:
        return self.tenant or get_settings().tenant
