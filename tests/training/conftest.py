"""Fixtures for the training tests (builders live in helpers.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from infra.store import Store, open_store
from tests.training.helpers import write_datasets


@pytest.fixture(scope="session")
def tiny_base(tiny_llama_dir: Path) -> Path:
    """Build builtin:tiny-llama once per session (the stage processes resolve it from the same cache)."""
    return tiny_llama_dir


@pytest.fixture
def local_store(tmp_path: Path) -> Store:
    return open_store(str(tmp_path / "store"))


@pytest.fixture
def data_run(local_store: Store) -> str:
    """A data run with small SFT and DPO datasets in the local store."""
    write_datasets(local_store, "data-run")
    return "data-run"


