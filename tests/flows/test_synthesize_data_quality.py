"""A synthesis run's data quality end to end: prompts copied from evaluation sets are quarantined before any
generation, counted in the manifest and the report, and the run's dataset card renders (file and Prefect
artifact) and loads with `datasets` exactly as it says."""
from __future__ import annotations

import json
import re

import yaml

from infra.store import open_store
from tests.fixtures.models import REPO_ROOT, tiny_config_file

ALPACA_EVAL_0 = "What are the names of some famous actors that started their careers on Broadway?"  # CC BY-NC 4.0
MATH_500_572 = "How many positive whole-number divisors does 196 have?"  # MIT


def test_contaminated_prompts_are_quarantined_and_the_card_loads(tmp_path, prefect_harness, count_generations,
                                                                 tiny_llama_dir, tiny_reward_dir):
    from huggingface_hub import DatasetCard
    from prefect.client.orchestration import get_client

    from flows.synthesize import synthesize

    own = [json.loads(line)["instruction"] for line in
           (REPO_ROOT / "data" / "prompts" / "mixed_instructions.jsonl").read_text().splitlines()[:4]]
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"instruction": t} for t in own] + [{"instruction": "  " + ALPACA_EVAL_0.upper()},
                                                {"instruction": MATH_500_572.replace(" ", "\n ")}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    search = yaml.safe_load((REPO_ROOT / "configs" / "tiny.yaml").read_text())["search"] | {"budget": 6}
    config = tiny_config_file(tmp_path, search=search)
    result = synthesize(config=str(config), run_id="dq", prompts=str(prompts))

    assert count_generations["n"] == 4 * 6  # the two contaminated prompts were never searched
    store = open_store(str(tmp_path / "store"))
    quarantined = [json.loads(line) for line in store.read_text("runs/dq/decontamination/prompts.jsonl").splitlines()]
    assert [(q["line"], q["benchmark"], q["item_id"]) for q in quarantined] == [
        (5, "alpaca_eval", "0"), (6, "math500", "test/number_theory/572.json")]
    assert all(q["ngram"] for q in quarantined)
    manifest = store.read_json("runs/dq/manifest.json")
    assert manifest["counts"]["decontaminate.prompts_quarantined"] == 2
    assert manifest["counts"]["decontaminate.quarantined.math500"] == 1
    assert "2 quarantined" in store.read_text("runs/dq/reports/synthesis.md")

    card_text = store.read_text("runs/dq/datasets/README.md")
    assert result["card"].endswith("datasets/README.md")
    card = DatasetCard(card_text)
    assert card.data.license == "apache-2.0" and [c["config_name"] for c in card.data.configs] == ["sft", "dpo"]
    for needle in ("## Source prompts", "tiny-a", "builtin:tiny-reward", "budget 6", "## Ranking rule",
                   "### Truncated answers", "### Refinement leakage", "### Decontamination", "## Lineage",
                   "manifest.json"):
        assert needle in card_text, needle

    # the card's own loading code, run as written
    [snippet] = re.findall(r"```python\n(.*?)```", card_text, re.S)
    namespace: dict = {}
    exec(snippet, namespace)  # noqa: S102 - our own generated snippet
    counts = result["counts"]
    assert {split: len(ds) for split, ds in namespace["sft"].items()} == \
        {s: counts[f"sft_{s}"] for s in ("train", "test") if counts[f"sft_{s}"]}
    assert namespace["dpo"]["train"].column_names[:3] == ["prompt", "chosen", "rejected"]

    async def card_artifact():
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["dataset-card"])))  # one key for every run's card

    import asyncio

    [artifact] = [a for a in asyncio.run(card_artifact()) if (a.description or "").endswith("of run dq")]
    assert artifact.type == "markdown" and "## How to load" in artifact.data
    assert not artifact.data.startswith("---")  # the YAML header is shown as a code block, not as rules
