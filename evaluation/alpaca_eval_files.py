"""AlpacaEval's two side files for the LC win rate, found in order and cached in the store.

- instruction_difficulty.csv: `evaluation.length_control.difficulty` (a path); the store's cached official copy
  (eval_cache/alpaca_eval/); the HF dataset tatsu-lab/alpaca_eval through huggingface_hub (then cached in the
  store, so the hub is asked once per store); an estimate fitted on `length_control.annotations_dir` (cached in
  the store under a hash of the folder's files). Offline with none of these: one error line naming the file and
  the ways to supply it.
- df_gamed.csv (the gamed-baseline rows): `length_control.gamed`; the store's cached copy; the hub. Without it the
  LC uses the documented length prior (evaluation.metrics.length_control.LengthPrior); that is not an error.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.config import LengthControlConfig
from evaluation.metrics.difficulty import (difficulty_csv, estimate_instruction_difficulty, read_annotation_folder,
                                           read_difficulty)
from evaluation.metrics.length_control import GamedRows, LengthPrior

log = logging.getLogger(__name__)

HF_REPO = "tatsu-lab/alpaca_eval"
CACHE_PREFIX = "eval_cache/alpaca_eval"
DIFFICULTY_FILE = "instruction_difficulty.csv"
GAMED_FILE = "df_gamed.csv"


class DifficultyUnavailable(RuntimeError):
    """No instruction difficulty could be found or made; the message says how to supply one."""


@dataclass
class LengthControlInputs:
    """What the LC fit of an AlpacaEval benchmark needs beyond the judgments."""
    difficulty: dict[int, float] | None
    difficulty_source: str
    gamed: GamedRows | None
    prior: LengthPrior


def _hub_download(filename: str) -> Path | None:
    """The official file through huggingface_hub (its own cache first), or None when the hub cannot be reached."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id=HF_REPO, filename=filename, repo_type="dataset", etag_timeout=5))
    except Exception as error:  # noqa: BLE001 - offline mode, no network, gated: all mean "not available"
        log.info("%s from the HF Hub (%s): unavailable: %s", filename, HF_REPO, type(error).__name__)
        return None


def official_file(store: Any, filename: str) -> tuple[bytes | None, str]:
    """(content, where it came from) of an official AlpacaEval file: the store's cache, else the hub (then cached)."""
    key = f"{CACHE_PREFIX}/{filename}"
    if store.exists(key):
        return store.read_bytes(key), store.uri(key)
    downloaded = _hub_download(filename)
    if downloaded is None:
        return None, ""
    data = downloaded.read_bytes()
    store.write_bytes(key, data)
    return data, f"hf://datasets/{HF_REPO}/{filename} (cached at {store.uri(key)})"


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.json*")):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def estimated_difficulty(store: Any, folder: str | Path) -> tuple[dict[int, float], str]:
    """Difficulty fitted on an annotation folder (AlpacaEval's joint GLM), computed once per folder content."""
    folder = Path(folder)
    key = f"{CACHE_PREFIX}/estimated/{_folder_digest(folder)}/{DIFFICULTY_FILE}"
    if not store.exists(key):
        log.info("estimating the instruction difficulty from %s (one joint GLM over its models)", folder)
        series = estimate_instruction_difficulty(read_annotation_folder(folder))
        store.write_text(key, difficulty_csv(series))
    return read_difficulty(key, store.read_bytes(key)), f"estimated from {folder} ({store.uri(key)})"


def load_difficulty(store: Any, config: LengthControlConfig) -> tuple[dict[int, float], str]:
    """The instruction difficulty in the documented order; DifficultyUnavailable when there is none."""
    if config.difficulty:
        return read_difficulty(config.difficulty), config.difficulty
    if config.use_official:
        data, source = official_file(store, DIFFICULTY_FILE)
        if data is not None:
            return read_difficulty(DIFFICULTY_FILE, data), source
    if config.annotations_dir:
        return estimated_difficulty(store, config.annotations_dir)
    raise DifficultyUnavailable(
        f"{DIFFICULTY_FILE} (AlpacaEval's instruction difficulty, HF dataset {HF_REPO}) is not in the store "
        f"({store.uri(CACHE_PREFIX + '/' + DIFFICULTY_FILE)}) and the HF Hub is unreachable; set "
        f"evaluation.length_control.difficulty to a copy, or annotations_dir to a folder of annotation files "
        f"(or write one with `toa lc-difficulty --annotations DIR --out FILE`)")


def read_gamed(path: str | Path, difficulty: dict[int, float] | None = None, data: bytes | None = None) -> GamedRows:
    """AlpacaEval's df_gamed.csv: rows of the gamed baselines (index, preference, std_delta_len, difficulty)."""
    import io

    import pandas as pd

    table = pd.read_csv(io.BytesIO(data) if data is not None else Path(path))
    missing = [c for c in ("index", "preference", "std_delta_len") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: df_gamed.csv lacks column(s) {', '.join(missing)}")
    if "instruction_difficulty" in table.columns:
        difficulty_values = table["instruction_difficulty"].to_numpy(dtype=float)
    elif difficulty is not None:
        difficulty_values = table["index"].map(difficulty).to_numpy(dtype=float)
    else:
        raise ValueError(f"{path}: no instruction_difficulty column and no difficulty given")
    preference = table["preference"].astype(float).to_numpy()
    if np.nanmax(preference) > 1.0:  # AlpacaEval's raw scale (1 = baseline, 2 = other)
        preference = np.where(preference == 0.0, 1.5, preference) - 1.0
    keep = ~np.isnan(preference)
    return GamedRows(table["std_delta_len"].to_numpy(dtype=float)[keep], difficulty_values[keep], preference[keep],
                     source=str(path))


def load_length_control(store: Any, config: LengthControlConfig, *, needs_difficulty: bool) -> LengthControlInputs:
    """Difficulty (AlpacaEval benchmarks only), gamed rows when available, and the prior used otherwise."""
    prior = LengthPrior(slope=config.prior_slope, difficulty_coef=config.prior_difficulty_coef)
    difficulty, source = (load_difficulty(store, config) if needs_difficulty
                          else (None, "none (not an AlpacaEval benchmark)"))
    gamed = None
    if config.gamed:
        gamed = read_gamed(config.gamed, difficulty)
    elif config.use_official and needs_difficulty:
        data, gamed_source = official_file(store, GAMED_FILE)
        if data is not None:
            gamed = read_gamed(gamed_source, difficulty, data)
    return LengthControlInputs(difficulty, source, gamed, prior)
