"""BLEU / chrF equal sacreBLEU's own numbers; COMET fails clearly without the extra."""
from __future__ import annotations

import importlib.util

import pytest
import sacrebleu

from evaluation.judges.translation import CometUnavailable, bleu, chrf, comet_scores

HYPS = ["The weather is nice today.", "I like to drink tea.", "Where is the station?", "Good morning, everyone!"]
REFS = ["The weather is nice today.", "I like drinking tea.", "Where is the train station?", "Good morning to all!"]


def test_bleu_and_chrf_match_sacrebleu():
    assert bleu(HYPS, REFS, samples=100).value == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-9)
    assert chrf(HYPS, REFS, samples=100).value == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=1e-9)


def test_bootstrap_interval_from_segment_statistics():
    metric = bleu(HYPS * 10, REFS * 10, samples=200, seed=1)
    assert metric.n == 40
    assert metric.ci95[0] <= metric.value <= metric.ci95[1]
    assert metric.note.startswith("nrefs:1|case:mixed")
    assert bleu(HYPS * 10, REFS * 10, samples=200, seed=1).ci95 == metric.ci95


def test_perfect_translations_score_100():
    assert bleu(REFS, REFS, samples=50).value == pytest.approx(100.0)
    assert chrf(REFS, REFS, samples=50).value == pytest.approx(100.0)


@pytest.mark.skipif(importlib.util.find_spec("comet") is not None, reason="the comet extra is installed here")
def test_comet_without_the_extra_names_the_fix():
    with pytest.raises(CometUnavailable, match=r"toaflow\[comet\]"):
        comet_scores(["a"], ["b"], ["c"], model_name="Unbabel/wmt22-comet-da")
