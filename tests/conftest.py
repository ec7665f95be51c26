"""Session-wide test environment: offline hubs, temporary homes, and the shared fixture modules.

Fixture modules (tests/fixtures/):
- models.py:  tiny random chat/reward models built once per session; SmolLM2 for slow tests.
- servers.py: real OpenAI-compatible servers on loopback (`transformers serve`), stopped by PID.
- s3.py:      a real S3-compatible server on loopback (moto's ThreadedMotoServer).
- prefect.py: Prefect's test harness (one per session) and a real Prefect server where a test needs one.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="toaflow-tests-"))
(_SESSION_HOME / "hf" / "hub").mkdir(parents=True)
(_SESSION_HOME / "prefect").mkdir()

# Set before anything imports transformers, datasets or prefect: they read these at import time.
os.environ.update(
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    HF_HUB_DISABLE_TELEMETRY="1",
    TOKENIZERS_PARALLELISM="false",
    HF_HOME=str(_SESSION_HOME / "hf"),
    PREFECT_HOME=str(_SESSION_HOME / "prefect"),
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
    PREFECT_LOGGING_TO_API_ENABLED="false",
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
)
# Built models (tiny random ones, converted SmolLM2) are cached across test sessions in the repo's .cache.
os.environ.setdefault("TOAFLOW_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "toaflow"))

pytest_plugins = ["tests.fixtures.models", "tests.fixtures.servers", "tests.fixtures.s3", "tests.fixtures.prefect"]


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests on machines without CUDA, whatever -m says."""
    import pytest

    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except Exception:  # torch missing entirely: no GPU path either
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
