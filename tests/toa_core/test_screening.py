"""Ranking with screening: truncated answers, refinement leakage and excluded ids never become targets;
near-duplicate answers are not paired."""
from __future__ import annotations

import pyarrow as pa

from toa_core.ranking import RankingConfig, build_datasets
from toa_core.records import CANDIDATE_COLUMNS, Candidate

# The kind of texts the demo run produced (issue 15): a preamble, the answer, a trailing list of changes.
DEMO_PREAMBLE = "Here's a revised answer that corrects any mistakes and makes it more helpful:\n\n"
DEMO_POSTSCRIPT = ("\n\nThe suggestions I made to improve the request were:\n1. Be more specific.\n"
                   "2. Mention the light conditions.")
ANSWER = "Pick low-light plants such as pothos, water them sparingly, and wipe the leaves so they get more light."


def row(index, reward, text=None, kind="fresh", finish_reason="stop", model="m1", prompt_id="p1"):
    return Candidate(
        prompt_id=prompt_id, candidate_id=f"{prompt_id}-c{index:03d}", parent_id=None if kind == "fresh" else "x",
        kind=kind, model=model, depth=1 if kind == "fresh" else 2,
        text=text if text is not None else f"answer {index}", reward=reward, reward_norm=reward, prompt_tokens=5,
        completion_tokens=7, latency_s=0.1, finish_reason=finish_reason, strategy="toa", seed=0,
    ).to_row()


def build(rows, excluded_ids=(), **options):
    options.setdefault("test_fraction", 0.0)
    options.setdefault("dpo_rejected_rank", 3)
    options.setdefault("rejected_min_spread", 0.0)  # the paper's rule: these tests place the rejected by rank
    prompts = {pid: [{"role": "user", "content": f"question {pid}"}] for pid in {r["prompt_id"] for r in rows}}
    table = pa.Table.from_pylist(rows).select(list(CANDIDATE_COLUMNS))
    return build_datasets([table], prompts, RankingConfig(**options), "run-x", excluded_ids=excluded_ids)


def sft_text(sft):
    return sft.to_pylist()[0]["messages"][-1]["content"]


def test_a_truncated_best_answer_is_not_an_sft_target():
    rows = [row(0, 9.0, "a long answer that was cut off in the mid", finish_reason="length"),
            row(1, 5.0), row(2, 4.0), row(3, 1.0)]
    sft, _, dpo, _, stats = build(rows)
    assert sft.to_pylist()[0]["candidate_id"] == "p1-c001"
    pair = dpo.to_pylist()[0]
    assert (pair["chosen_candidate_id"], pair["chosen_rank"]) == ("p1-c001", 2)
    assert pair["rejected_candidate_id"] == "p1-c002"  # the 3rd best overall, below the chosen
    assert stats.candidates_truncated == 1 and stats.targets_below_top == 1
    assert stats.per_model["m1"]["truncated"] == 1
    sft, _, _, _, _ = build(rows, allow_truncated=True)
    assert sft.to_pylist()[0]["candidate_id"] == "p1-c000"


def test_a_truncated_answer_may_still_be_rejected():
    rows = [row(0, 9.0), row(1, 5.0), row(2, 1.0, finish_reason="length")]
    _, _, dpo, _, _ = build(rows)
    assert dpo.to_pylist()[0]["rejected_candidate_id"] == "p1-c002"


def test_only_truncated_answers_give_no_rows():
    rows = [row(0, 9.0, finish_reason="length"), row(1, 5.0, finish_reason="length")]
    sft, _, dpo, _, stats = build(rows)
    assert sft.num_rows == 0 and dpo.num_rows == 0 and stats.prompts_no_eligible_target == 1


def test_demo_preamble_and_postscript_are_stripped_from_a_refine_answer():
    leaky = DEMO_PREAMBLE + ANSWER + DEMO_POSTSCRIPT
    rows = [row(0, 9.0, leaky, kind="refine", model="smol"), row(1, 5.0), row(2, 1.0)]
    sft, _, dpo, _, stats = build(rows)
    assert sft_text(sft) == ANSWER  # what the SFT dataset holds is the stripped text
    assert dpo.to_pylist()[0]["chosen"][0]["content"] == ANSWER
    assert stats.candidates_leak_stripped == 1 and stats.per_model["smol"]["leak_stripped"] == 1
    assert rows[0]["text"] == leaky  # the candidate record keeps the original


def test_fresh_answers_are_not_checked_for_leakage():
    text = DEMO_PREAMBLE + ANSWER
    sft, _, _, _, stats = build([row(0, 9.0, text, kind="fresh"), row(1, 1.0)])
    assert sft_text(sft) == text and stats.candidates_leak_checked == 0


def test_an_answer_that_is_only_talk_about_changes_is_never_chosen():
    only_talk = ("I have revised the answer to be clearer, fixed the mistakes of the original response and "
                 "added an example.")
    mentions = ANSWER + " Unlike the previous answer, this one names specific plants."
    rows = [row(0, 9.0, only_talk, kind="refine"), row(1, 8.0, mentions, kind="aggregate"),
            row(2, 7.0, "Here is an improved version:", kind="refine"), row(3, 5.0), row(4, 1.0)]
    sft, _, dpo, _, stats = build(rows, dpo_rejected_rank=5)
    assert sft.to_pylist()[0]["candidate_id"] == "p1-c003"
    pair = dpo.to_pylist()[0]
    assert pair["chosen_candidate_id"] == "p1-c003" and pair["rejected_candidate_id"] == "p1-c004"
    assert stats.candidates_leak_inseparable == 3


def test_leakage_rules_extend_from_config_and_can_be_switched_off():
    text = "Voici la version corrigée :\n\n" + ANSWER
    rows = [row(0, 9.0, text, kind="refine"), row(1, 1.0)]
    sft, _, _, _, _ = build(rows)
    assert sft_text(sft) == text
    sft, _, _, _, _ = build(rows, leakage={"extra_preamble": [r"voici la version corrig"]})
    assert sft_text(sft) == ANSWER
    leaky = DEMO_PREAMBLE + ANSWER
    sft, _, _, _, stats = build([row(0, 9.0, leaky, kind="refine"), row(1, 1.0)], leakage={"enabled": False})
    assert sft_text(sft) == leaky and stats.candidates_leak_checked == 0


def test_near_duplicate_answers_are_not_paired():
    rows = [row(0, 9.0, "The Answer is  42."), row(1, 5.0, "the answer is\n42."), row(2, 1.0, "the answer is 42.")]
    _, _, dpo, _, stats = build(rows)
    assert dpo.num_rows == 0 and stats.dpo_dropped_identical == 1


def test_excluded_ids_are_never_targets():
    rows = [row(0, 9.0), row(1, 5.0), row(2, 1.0)]
    sft, _, dpo, _, stats = build(rows, excluded_ids=["p1-c000"])
    assert sft.to_pylist()[0]["candidate_id"] == "p1-c001" and stats.candidates_excluded == 1
    assert dpo.to_pylist()[0]["chosen_candidate_id"] == "p1-c001"


def test_no_pair_when_nothing_ranks_below_the_target():
    rows = [row(0, 9.0, finish_reason="length"), row(1, 5.0)]
    sft, _, dpo, _, stats = build(rows)
    assert sft.num_rows == 1 and dpo.num_rows == 0 and stats.dpo_skipped_no_lower == 1


def test_the_test_split_is_drawn_from_prompts_that_have_a_target():
    rows = [row(0, 9.0, finish_reason="length", prompt_id=pid) for pid in ("a", "b", "c", "d", "e")]
    rows += [row(1, 5.0, prompt_id="z1"), row(1, 5.0, prompt_id="z2")]
    for seed in range(5):
        sft, sft_test, _, _, stats = build(rows, test_fraction=0.01, seed=seed)
        assert sft.num_rows == 1 and sft_test.num_rows == 1  # never a test side of target-less prompts
        assert (stats.prompts_train, stats.prompts_test) == (1, 1)
