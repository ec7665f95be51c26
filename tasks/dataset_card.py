"""The dataset card of a synthesis run: `runs/<id>/datasets/README.md` (Hugging Face dataset-card format) and
the same markdown as a Prefect artifact.

Someone who finds `datasets/dpo/train.parquet` in the bucket should learn from the README beside it, without
reading the manifest: where the prompts came from and under which licence, which strategy, models, reward model
and budget made the answers, the ranking rule, the counts, what truncation / leakage / decontamination removed,
the lineage, and how to load the files. The YAML header is written with huggingface_hub's DatasetCardData, so
the Hub (and `huggingface_hub.DatasetCard.load`) read it; its `configs` let `load_dataset(<folder>, "sft")` work
on a copy of the folder too.
"""
from __future__ import annotations

import json
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from toa_core.credentials import redact_text
from infra.store import open_store
from runconfig import RunConfig

CARD_FILE = "datasets/README.md"
SPLITS = (("sft", "train"), ("sft", "test"), ("dpo", "train"), ("dpo", "test"))


def _size_category(rows: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if rows < limit:
            return label
    return "10M<n<100M"


def split_rows(counts: dict[str, int]) -> dict[tuple[str, str], int]:
    return {(kind, split): int(counts.get(f"{kind}_{split}", 0)) for kind, split in SPLITS}


def load_snippet(run_uri: str, rows: dict[tuple[str, str], int]) -> str:
    """Python that loads the run's datasets with `datasets` (only splits that have rows)."""
    base = run_uri.rstrip("/") + "/datasets"
    lines = ["from datasets import load_dataset", ""]
    storage = ", storage_options=STORAGE" if base.startswith("s3://") else ""
    if storage:
        lines[1:1] = ["STORAGE = {}  # s3fs options, e.g. {\"client_kwargs\": {\"endpoint_url\": \"http://...\"}}"]
    for kind in ("sft", "dpo"):
        files = {split: f"{base}/{kind}/{split}.parquet" for k, split in SPLITS if k == kind and rows[(k, split)]}
        if files:
            lines.append(f"{kind} = load_dataset(\"parquet\", data_files={json.dumps(files)}{storage})")
    return "\n".join(lines)


def quality_markdown(counts: dict[str, int], per_model: dict[str, dict[str, int]],
                     decontamination: dict[str, Any] | None, allow_truncated: bool = False) -> list[str]:
    """Truncation, leakage and decontamination results (shared by the card and the synthesis summary)."""
    rule = ("`ranking.allow_truncated: true` lets them be SFT targets and DPO chosen" if allow_truncated else
            "they are never SFT targets or DPO chosen (`ranking.allow_truncated: false`), but may be DPO rejected")
    lines = ["### Truncated answers", "",
             f"{counts.get('candidates_truncated', 0)} usable candidates were cut off at `max_tokens` "
             f"(`finish_reason: length`); {rule}.", "",
             "### Refinement leakage", "",
             f"Of {counts.get('candidates_leak_checked', 0)} refine/aggregate answers checked, "
             f"{counts.get('candidates_leak_stripped', 0)} had a preamble/postscript about the revision that was "
             f"stripped (the datasets hold the stripped text; `samples/` keeps the original) and "
             f"{counts.get('candidates_leak_inseparable', 0)} could not be separated from it (never a target).", ""]
    if per_model:
        lines += ["| model | usable | truncated | leak checked | stripped | inseparable |", "|---|---|---|---|---|---|"]
        lines += [f"| {model} | {c.get('usable', 0)} | {c.get('truncated', 0)} | {c.get('leak_checked', 0)} | "
                  f"{c.get('leak_stripped', 0)} | {c.get('leak_inseparable', 0)} |" for model, c in per_model.items()]
        lines.append("")
    lines += [f"Targets that are not the top-reward answer (better ones ruled out): {counts.get('targets_below_top', 0)}; "
              f"prompts without any eligible target: {counts.get('prompts_no_eligible_target', 0)} "
              f"({counts.get('prompts_below_min_reward', 0)} because no answer reached ranking.target_min_reward); "
              f"DPO pairs dropped as near-duplicates (same text up to whitespace/case): "
              f"{counts.get('dpo_dropped_identical', 0)}.", "", "### Decontamination", ""]
    if not decontamination or not decontamination.get("enabled"):
        lines += ["Off (`synthesis.decontaminate: false`): prompts were **not** checked against evaluation sets.", ""]
        return lines
    by_benchmark = decontamination.get("by_benchmark", {})
    lines += [f"{decontamination.get('checked', 0)} prompts checked by {decontamination.get('rule', '')}; "
              f"{decontamination.get('quarantined', 0)} quarantined "
              f"({', '.join(f'{k}: {v}' for k, v in sorted(by_benchmark.items())) or 'none'}; "
              "`decontamination/prompts.jsonl` lists each with its benchmark, item id and matching n-gram). "
              f"Chosen answers replaced because they overlapped an evaluation set: {counts.get('candidates_excluded', 0)}.",
              "", "| evaluation set | items | licence | source |", "|---|---|---|---|"]
    lines += [f"| {b['name']} | {b['items']} | {b.get('license') or '-'} | {b.get('source') or '-'} |"
              for b in decontamination.get("index", [])]
    for unchecked in decontamination.get("unchecked", []):
        lines += ["", f"Not checked: evaluation set `{unchecked['benchmark']}` could not be read ({unchecked['reason']})."]
    lines.append("")
    return lines


def card_markdown(cfg: RunConfig, run_id: str, run_uri: str, ingest: dict[str, Any],
                  decontamination: dict[str, Any] | None, ranking: dict[str, Any],
                  manifest: dict[str, Any] | None) -> str:
    """The card: YAML header (huggingface_hub DatasetCardData) + markdown body."""
    from huggingface_hub import DatasetCardData

    counts = ranking["counts"]
    rows = split_rows(counts)
    prompts_cfg = cfg.synthesis.prompts
    license_id = prompts_cfg.license if prompts_cfg and prompts_cfg.license else "other"
    search, rank = cfg.search, cfg.synthesis.ranking
    configs = []
    for kind in ("sft", "dpo"):
        files = [{"split": split, "path": f"{kind}/{split}.parquet"} for k, split in SPLITS if k == kind and rows[(k, split)]]
        if files:
            configs.append({"config_name": kind, "data_files": files})
    header = DatasetCardData(
        pretty_name=f"toaflow synthesis {run_id}", license=license_id,
        task_categories=["text-generation"], tags=["synthetic", "toaflow", "sft", "dpo", search.strategy],
        size_categories=[_size_category(max(rows.values(), default=0))],
        source_datasets=[prompts_cfg.source] if prompts_cfg else None, configs=configs or None,
    )
    models = "\n".join(
        f"| {m.name} | `{m.model}` | {m.backend}{f' via {m.served_by}' if m.served_by else ''} | "
        f"{m.temperature if m.temperature is not None else search.temperature} | "
        f"{(m.system_prompt or '-').replace('|', '/')} |" for m in cfg.models)
    reward = cfg.reward
    manifest = manifest or {}
    git = manifest.get("git") or {}
    lineage = "\n".join(f"- **{entry['stage']}**: {len(entry.get('inputs', []))} input(s) -> "
                        f"{len(entry.get('outputs', []))} output(s)" for entry in manifest.get("lineage", []))
    body = [
        f"# toaflow synthesis run `{run_id}`", "",
        f"SFT and DPO data written by [toaflow](https://arxiv.org/abs/2412.17061)'s `{search.strategy}` search: "
        f"several models answer and refine each other's answers, a reward model scores every answer, and the "
        f"ranking below turns them into datasets. Run folder: `{run_uri}`.", "",
        "## Source prompts", "",
        f"- source: `{prompts_cfg.source if prompts_cfg else '-'}`; licence: **{license_id}**"
        + ("" if prompts_cfg and prompts_cfg.license else " (not given: set `synthesis.prompts.license`)"),
        f"- prompts ingested {ingest.get('prompts', '-')}"
        + (f" (of {ingest['rows']} rows; bad rows quarantined {ingest.get('quarantined', 0)}, duplicates dropped "
           f"{ingest.get('duplicates', 0)})" if "rows" in ingest else "")
        + f"; overlapping evaluation sets: "
          f"{decontamination.get('quarantined', 0) if decontamination and decontamination.get('enabled') else 'not checked'}",
        "- the answers are model outputs: their use is also bound by the licences of the models below", "",
        "## How the answers were made", "",
        f"- strategy `{search.strategy}`, budget {search.budget} generations per prompt (one generation = one "
        f"completion + one reward score), temperature {search.temperature}, top_p {search.top_p}, "
        f"max_tokens {search.max_tokens}" + (f", tau {search.tau}, alpha {search.alpha}" if search.strategy == "toa" else ""),
        reward_line(reward, ranking.get("pairs_decided_by")), "",
        "| agent | model | backend | temperature | system prompt |", "|---|---|---|---|---|", models, "",
        *policy_markdown(cfg, manifest, counts),
        "## Ranking rule", "",
        f"Per prompt, usable candidates (no error, finite reward, non-blank text) are ordered by reward. The SFT target "
        f"and DPO chosen is the best candidate that is not truncated"
        f"{' (truncated allowed)' if rank.allow_truncated else ''}, not inseparable refinement leakage, and not "
        f"overlapping an evaluation set; DPO rejected is {rejected_rule(rank)}, below the chosen, not a "
        f"near-duplicate of it, with a reward margin above {rank.min_margin}. Prompts are split by a seeded hash "
        f"(seed {rank.seed}, test fraction {rank.test_fraction}). Exact rules: docs/data_formats.md.", "",
        "## Contents", "",
        "| config | split | rows |", "|---|---|---|",
        *[f"| {kind} | {split} | {rows[(kind, split)]} |" for kind, split in SPLITS],
        "",
        f"{counts.get('prompts', 0)} prompts with usable answers out of {counts.get('candidates', 0)} candidates "
        f"({counts.get('candidates_failed', 0)} failed, {counts.get('candidates_unscored', 0)} unscored, "
        f"{counts.get('candidates_blank', 0)} blank).", "",
        "Columns: `sft` has `messages` (TRL conversational), `dpo` has `prompt`, `chosen`, `rejected` (TRL "
        "preference format); both carry provenance (`prompt_id`, candidate ids, models, rewards, ranks, `run_id`).", "",
        "## Data quality", "",
        *quality_markdown(counts, ranking.get("per_model", {}), decontamination, rank.allow_truncated),
        "## Lineage", "",
        f"- manifest: `{run_uri.rstrip('/')}/manifest.json` (config hash `{manifest.get('config_hash', '-')}`, "
        f"git `{git.get('sha', '-')}`{' (dirty)' if git.get('dirty') else ''})",
        lineage or "- (no lineage recorded)", "",
        "## How to load", "",
        "```python", load_snippet(run_uri, rows), "```", "",
        "From a copy of this folder: `load_dataset(\"<folder>\", \"sft\")` (the `configs` of the header), or "
        "`load_dataset(\"parquet\", data_files={\"train\": \"sft/train.parquet\"})`. TRL's `SFTTrainer` and "
        "`DPOTrainer` take the splits unchanged.", "",
    ]
    return f"---\n{header.to_yaml()}\n---\n\n" + "\n".join(body)


def reward_line(reward, decided_by: dict[str, int] | None) -> str:
    """The card's reward line; for a verifier, its rule and which reward decided each DPO pair."""
    if reward.kind != "verifier":
        return f"- reward model: {reward.kind} `{reward.model or reward.callable or '-'}`"
    counts = decided_by or {}
    if reward.ranker is None:
        rule = ("- reward: **verifier** (each prompt's own checks, `metadata.verify`: gold math answers through "
                "math-verify, instruction constraints); reward = share of the prompt's checks passed, 1 = pass")
    else:
        ranker = reward.ranker
        rule = (f"- reward: **verifier + reward model** {ranker.kind} `{ranker.model or ranker.callable or '-'}`: the "
                f"checks decide pass/fail, the model ranks inside each class; reward = 2 x [all checks pass] + "
                f"sigmoid(model score / {reward.ranker_scale:g}), so every passing answer ranks above every failing one")
    return (rule + f"\n- DPO pairs decided by the verifier (the chosen passed more checks than the rejected): "
                   f"{counts.get('verifier', 0)}; by the reward model (both in the same class): "
                   f"{counts.get('reward model', 0)}")


def policy_markdown(cfg: RunConfig, manifest: dict[str, Any], counts: dict[str, Any]) -> list[str]:
    """Which model version the policy agent was (the promoted `latest` pinned by the run), and its share of the pairs."""
    policy = manifest.get("policy")
    if not policy:
        return []
    pairs = cfg.synthesis.policy_agent.pairs
    rule = {"all": "ranked with every agent's answers", "on_policy": "on-policy only: chosen and rejected both "
            "written by the policy", "mixed": "mixed: chosen from any agent, rejected written by the policy"}[pairs]
    return [f"Agent `{policy['agent']}` is the policy in the loop: the model promoted to `latest` by run "
            f"`{policy['run_id']}` (`{policy['model']}`, {policy.get('weights') or 'weights'}, promoted "
            f"{policy.get('promoted_at') or '-'}). DPO pairs: {rule} (`synthesis.policy_agent.pairs: {pairs}`); "
            f"pairs with the policy's answer as chosen {counts.get('dpo_pairs_policy_chosen', 0)}, as rejected "
            f"{counts.get('dpo_pairs_policy_rejected', 0)}, both {counts.get('dpo_pairs_policy_both', 0)}. The "
            "columns `model_version` (sft) and `chosen_model_version` / `rejected_model_version` (dpo) name the model "
            "version that wrote each answer.", ""]


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, 21st, ..."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def rejected_rule(rank) -> str:
    """The rejected-side rule in force, in words (toa_core/pair_selection.py has the exact one)."""
    if rank.dpo_rejected_quantile is not None:
        target = (f"the candidate at quantile {rank.dpo_rejected_quantile} from the bottom of the prompt's usable "
                  "candidates")
    else:
        short = "the worst" if rank.short_policy == "worst" else "no pair"
        target = f"the {ordinal(rank.dpo_rejected_rank)} best usable candidate (fewer than that: {short})"
    moved = []
    if rank.rejected_min_spread > 0:
        # Above 2 standard deviations the rule can run out of candidates; it then takes the worst (pair_selection).
        capped = " (or the worst, when none is that far)" if rank.rejected_min_spread > 2 else ""
        moved.append(f"at least {rank.rejected_min_spread:g} reward standard deviations below the chosen{capped}")
    if rank.rejected_lineage == "other":
        moved.append("not an ancestor or descendant of the chosen")
    return target + (", or the next one down that is " + " and ".join(moved) if moved else "")


@task(name="dataset-card", cache_policy=NO_CACHE)
def write_dataset_card(cfg: RunConfig, run_id: str, ingest: dict[str, Any], decontamination: dict[str, Any] | None,
                       ranking: dict[str, Any]) -> str:
    """Write `datasets/README.md` and publish it as a Prefect markdown artifact; returns its store URI."""
    from tasks.artifacts import publish_markdown

    store = open_store(cfg.store)
    run_uri = store.uri(f"runs/{run_id}") + "/"
    manifest_key = f"runs/{run_id}/manifest.json"
    manifest = store.read_json(manifest_key) if store.exists(manifest_key) else None
    # The card is published (store, Prefect artifact, a dataset hub): the one redaction, like every other file.
    markdown = redact_text(card_markdown(cfg, run_id, run_uri, ingest, decontamination, ranking, manifest))
    key = f"runs/{run_id}/{CARD_FILE}"
    store.write_text(key, markdown)
    publish_markdown(None, None, artifact_markdown(markdown), title=f"dataset card of run {run_id}",
                     artifact="dataset-card")
    return store.uri(key)


def artifact_markdown(card: str) -> str:
    """The card for the Prefect UI: the YAML header shown as a code block (markdown renderers would turn the
    front matter's `---` into rules and run its lines together)."""
    if card.startswith("---\n"):
        header, _, body = card[4:].partition("\n---\n")
        return f"{body.lstrip()}\n<details><summary>YAML header</summary>\n\n```yaml\n{header.strip()}\n```\n</details>\n"
    return card
