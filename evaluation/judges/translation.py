"""Translation quality against references: sacreBLEU's BLEU and chrF (corpus level, 95% bootstrap intervals),
and COMET / COMET-Kiwi through the optional `comet` extra (`pip install 'toaflow[comet]'`).

The intervals resample segments and recompute the corpus score from per-segment sufficient statistics (what
sacreBLEU's own paired bootstrap does), so they cost milliseconds even for 2,000 segments.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from evaluation.metrics.stats import Metric, bootstrap_ci


class CometUnavailable(RuntimeError):
    """COMET was asked for but the `comet` extra is not installed (or its model cannot be loaded)."""


def _corpus_metric(metric, hypotheses: list[str], references: list[str], *, samples: int, seed: int,
                   n_failed: int) -> Metric:
    if not hypotheses:
        return Metric(None, None, 0, n_failed, "")
    value = metric.corpus_score(hypotheses, [references]).score
    try:
        stats = np.asarray(metric._extract_corpus_statistics(hypotheses, [references]), dtype=float)

        def statistic(idx: np.ndarray) -> float:
            return metric._compute_score_from_stats(stats[idx].sum(axis=0).tolist()).score
    except AttributeError:  # a future sacreBLEU without the statistics helpers: recompute from text (slower)
        def statistic(idx: np.ndarray) -> float:
            return metric.corpus_score([hypotheses[i] for i in idx], [[references[i] for i in idx]]).score
    ci = bootstrap_ci(statistic, len(hypotheses), samples=samples, seed=seed)
    return Metric(float(value), ci, len(hypotheses), n_failed, "", note=str(metric.get_signature()))


def bleu(hypotheses: Sequence[str], references: Sequence[str], *, samples: int = 1000, seed: int = 0,
         n_failed: int = 0) -> Metric:
    """Corpus BLEU exactly as `sacrebleu.corpus_bleu(hypotheses, [references])` computes it (13a, mixed case)."""
    from sacrebleu.metrics import BLEU

    return _corpus_metric(BLEU(), list(hypotheses), list(references), samples=samples, seed=seed, n_failed=n_failed)


def chrf(hypotheses: Sequence[str], references: Sequence[str], *, samples: int = 1000, seed: int = 0,
         n_failed: int = 0) -> Metric:
    """Corpus chrF exactly as `sacrebleu.corpus_chrf(hypotheses, [references])` computes it."""
    from sacrebleu.metrics import CHRF

    return _corpus_metric(CHRF(), list(hypotheses), list(references), samples=samples, seed=seed, n_failed=n_failed)


def comet_scores(sources: Sequence[str], hypotheses: Sequence[str], references: Sequence[str] | None, *,
                 model_name: str, batch_size: int = 16, samples: int = 1000, seed: int = 0,
                 n_failed: int = 0) -> Metric:
    """System COMET (reference-based when `references` is given, COMET-Kiwi QE otherwise), mean of segments."""
    try:
        from comet import download_model, load_from_checkpoint  # the optional extra, imported only when asked for
    except ImportError:
        raise CometUnavailable(
            "COMET scoring needs the optional extra: pip install 'toaflow[comet]' (unbabel-comet); "
            "or set evaluation.judges.comet: false and leave comet_kiwi_model unset") from None
    try:
        model = load_from_checkpoint(download_model(model_name))
    except Exception as error:  # noqa: BLE001 - hub errors vary; gated Kiwi models need a license acceptance
        raise CometUnavailable(
            f"could not load COMET model '{model_name}': {type(error).__name__}: {str(error)[:200]}. Offline hosts need "
            f"it in the HF cache; Unbabel/wmt22-cometkiwi-da is gated (accept its license on the Hub first)") from None
    rows = [{"src": s, "mt": h} | ({"ref": r} if references is not None else {})
            for s, h, r in zip(sources, hypotheses, references if references is not None else hypotheses)]
    import torch

    output = model.predict(rows, batch_size=batch_size, gpus=1 if torch.cuda.is_available() else 0)
    segment_scores = np.asarray(output.scores, dtype=float)
    ci = bootstrap_ci(lambda idx: float(segment_scores[idx].mean()), segment_scores.size, samples=samples, seed=seed)
    return Metric(float(segment_scores.mean()), ci, int(segment_scores.size), n_failed, "", note=model_name)
