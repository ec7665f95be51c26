"""Config sections owned by infra: where artifacts live, and which model servers a run manages."""
from __future__ import annotations

from pydantic import Field

from toa_core.config import RetryConfig, Section


class StoreConfig(Section):
    """The artifact store. `root` is a local folder (default) or `s3://bucket/prefix`."""
    root: str = Field("./artifacts", description="local folder or s3://bucket/prefix")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto, ...); AWS when unset")
    region: str = "us-east-1"
    profile: str | None = Field(None, description="AWS profile; credentials otherwise come from the environment")
    multipart_threshold_mb: int = Field(64, ge=5)
    retry: RetryConfig = Field(default_factory=lambda: RetryConfig(max_attempts=6, backoff_initial_s=0.5, backoff_max_s=10.0))


class ServersConfig(Section):
    """Model servers a run starts and stops itself (filled in by infra.servers)."""
    managed: bool = Field(False, description="start the servers named here before the run, stop them after")
