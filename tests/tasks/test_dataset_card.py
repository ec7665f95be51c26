"""The dataset card's text for cases the flow test does not reach: no licence, decontamination off, S3 runs,
empty splits, and a valid Hugging Face YAML header in every case."""
from __future__ import annotations

from huggingface_hub import DatasetCard

from runconfig import load_config
from tasks.dataset_card import artifact_markdown, card_markdown, load_snippet
from tests.fixtures.models import tiny_config_file

COUNTS = {"candidates": 24, "prompts": 2, "sft_train": 2, "sft_test": 0, "dpo_train": 1, "dpo_test": 0,
          "candidates_truncated": 3, "candidates_leak_checked": 10, "candidates_leak_stripped": 2,
          "candidates_leak_inseparable": 1}
PER_MODEL = {"tiny-a": {"usable": 12, "truncated": 3, "leak_checked": 5, "leak_stripped": 2, "leak_inseparable": 1}}


def test_card_without_licence_or_decontamination(tmp_path):
    cfg = load_config(tiny_config_file(tmp_path), {"synthesis.prompts.license": None,
                                                   "synthesis.decontaminate": False})
    card_text = card_markdown(cfg, "r1", "/data/runs/r1/", {"prompts": 2}, {"enabled": False},
                              {"counts": COUNTS, "per_model": PER_MODEL}, None)
    card = DatasetCard(card_text)
    assert card.data.license == "other" and "set `synthesis.prompts.license`" in card_text
    assert [c["config_name"] for c in card.data.configs] == ["sft", "dpo"]
    assert card.data.configs[0]["data_files"] == [{"split": "train", "path": "sft/train.parquet"}]  # no empty split
    assert "prompts were **not** checked" in card_text and "overlapping evaluation sets: not checked" in card_text
    assert "| tiny-a | 12 | 3 | 5 | 2 | 1 |" in card_text
    assert "(no lineage recorded)" in card_text
    shown = artifact_markdown(card_text)
    assert shown.startswith("# toaflow synthesis run `r1`") and "```yaml\nlicense: other" in shown


def test_load_snippet_names_only_splits_with_rows_and_s3_options():
    rows = {("sft", "train"): 3, ("sft", "test"): 0, ("dpo", "train"): 0, ("dpo", "test"): 0}
    local = load_snippet("/data/runs/r1/", rows)
    assert 'sft = load_dataset("parquet", data_files={"train": "/data/runs/r1/datasets/sft/train.parquet"})' in local
    assert "dpo =" not in local
    remote = load_snippet("s3://bucket/prefix/runs/r1/", rows)
    assert "storage_options=STORAGE" in remote and "s3://bucket/prefix/runs/r1/datasets/sft/train.parquet" in remote


def test_the_rejected_rule_in_the_card_is_the_one_in_force():
    from tasks.dataset_card import ordinal, rejected_rule
    from toa_core.ranking import RankingConfig

    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 30, 102, 113)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "30th", "102nd", "113th"]
    paper = RankingConfig(dpo_rejected_rank=30, rejected_min_spread=0.0)
    assert rejected_rule(paper) == "the 30th best usable candidate (fewer than that: the worst)"
    default = RankingConfig(dpo_rejected_rank=3)
    assert rejected_rule(default) == ("the 3rd best usable candidate (fewer than that: the worst), or the next one "
                                      "down that is at least 4 reward standard deviations below the chosen (or "
                                      "the worst, when none is that far)")
    two = RankingConfig(dpo_rejected_rank=3, rejected_min_spread=2.0)  # the worst always qualifies: no cap to name
    assert rejected_rule(two) == ("the 3rd best usable candidate (fewer than that: the worst), or the next one "
                                  "down that is at least 2 reward standard deviations below the chosen")
    quantile = RankingConfig(dpo_rejected_quantile=0.8125, rejected_min_spread=0.0, rejected_lineage="other",
                             short_policy="skip")
    assert rejected_rule(quantile) == ("the candidate at quantile 0.8125 from the bottom of the prompt's usable "
                                       "candidates, or the next one down that is not an ancestor or descendant of "
                                       "the chosen")


def test_a_verifier_card_says_which_reward_decided_the_pairs(tmp_path):
    ranker = {"kind": "plugin", "callable": "tests.toa_core.rewards.plugins:length_reward"}
    for reward, expected in (({"kind": "verifier"}, "share of the prompt's checks passed"),
                             ({"kind": "verifier", "ranker": ranker}, "every passing answer ranks above every failing")):
        cfg = load_config(tiny_config_file(tmp_path), {"reward": reward})
        card_text = card_markdown(cfg, "r1", "/data/runs/r1/", {"prompts": 2}, {"enabled": False},
                                  {"counts": COUNTS, "per_model": PER_MODEL,
                                   "pairs_decided_by": {"verifier": 3, "reward model": 1}}, None)
        assert expected in card_text
        assert "DPO pairs decided by the verifier (the chosen passed more checks than the rejected): 3; " \
               "by the reward model (both in the same class): 1" in card_text
