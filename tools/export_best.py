"""Export the best-of-N response of every prompt of a synthesis run, for scoring with the official tools.

    .venv/bin/python tools/export_best.py --config configs/paper/alpaca_eval/toa.yaml --run-id paper-alpaca_eval-toa \
        --out exports/alpaca_eval_toa.jsonl --alpaca-eval exports/alpaca_eval_toa_model_outputs.json

The paper's inference tables (AlpacaEval 2.0, WMT'22, math) score the response with the highest raw reward among a
prompt's N candidates. This reads `runs/<id>/samples/*.parquet` and `runs/<id>/prompts/` from the config's store
and writes one JSON line per prompt, in prompt order:
    {"id": source id (synthesis.prompts.id_field), "prompt_id", "instruction": the last user message,
     "output": best text or null, "reward", "model", "candidates": scored candidates, "failed": failed ones,
     "reference": from --references when given}
A prompt whose every candidate failed gets output null (never an arbitrary candidate). Ties keep the smallest
candidate id (the earliest generation), as the ranking into SFT data does.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def best_rows(store: Any, run_id: str) -> dict[str, dict[str, Any]]:
    """prompt_id -> {text, reward, model, candidate_id, candidates, failed} of the best scored candidate."""
    import pyarrow.parquet as pq

    keys = [k for k in store.list(f"runs/{run_id}/samples/") if k.endswith(".parquet")]
    if not keys:
        raise SystemExit(f"error: no samples in {store.uri(f'runs/{run_id}/samples/')}; is the run id right "
                         "and did its sample stage finish?")
    best: dict[str, dict[str, Any]] = {}
    counts: dict[str, list[int]] = {}
    columns = ["prompt_id", "candidate_id", "model", "text", "reward", "error"]
    for key in keys:
        for row in pq.read_table(io.BytesIO(store.read_bytes(key)), columns=columns).to_pylist():
            tally = counts.setdefault(row["prompt_id"], [0, 0])
            if row["reward"] is None or row["text"] is None:
                tally[1] += 1
                continue
            tally[0] += 1
            current = best.get(row["prompt_id"])
            if current is None or row["reward"] > current["reward"] or (
                    row["reward"] == current["reward"] and _index(row["candidate_id"]) < _index(current["candidate_id"])):
                best[row["prompt_id"]] = row
    for prompt_id, (scored, failed) in counts.items():
        best.setdefault(prompt_id, {"text": None, "reward": None, "model": None, "candidate_id": None})
        best[prompt_id].update(candidates=scored, failed=failed)
    return best


def _index(candidate_id: str) -> int:
    """The generation index at the end of a candidate id (`<prompt_id>-<index>`)."""
    return int(candidate_id.rsplit("-", 1)[1])


def read_references(path: Path, id_field: str, reference_field: str) -> dict[str, Any]:
    references = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if id_field not in row or reference_field not in row:
                raise SystemExit(f"error: {path}:{number}: needs '{id_field}' and '{reference_field}'")
            references[str(row[id_field])] = row[reference_field]
    return references


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the run config (its store is read)")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--out", required=True, type=Path, help="JSONL, one line per prompt")
    parser.add_argument("--alpaca-eval", type=Path, metavar="FILE.json",
                        help="also write AlpacaEval's model_outputs.json ({instruction, output, generator, dataset})")
    parser.add_argument("--generator", help="generator name in the AlpacaEval file (default: the run id)")
    parser.add_argument("--references", type=Path, metavar="FILE.jsonl", help="add `reference` by id from this file")
    parser.add_argument("--reference-field", default="reference")
    parser.add_argument("--id-field", default="id", help="id column of --references (matches synthesis.prompts.id_field)")
    args = parser.parse_args(argv)

    from infra.store import open_store
    from toa_core.ingest import read_prompts
    from runconfig import load_config

    store = open_store(load_config(args.config).store)
    prompts = read_prompts(store, args.run_id)
    best = best_rows(store, args.run_id)
    references = read_references(args.references, args.id_field, args.reference_field) if args.references else None
    rows = []
    for prompt in prompts:
        found = best.get(prompt.prompt_id, {"text": None, "reward": None, "model": None, "candidates": 0, "failed": 0})
        row = {"id": prompt.metadata.get("source_id"), "prompt_id": prompt.prompt_id, "instruction": prompt.question,
               "output": found["text"], "reward": found["reward"], "model": found["model"],
               "candidates": found["candidates"], "failed": found["failed"]}
        if references is not None:
            row["reference"] = references.get(str(row["id"]))
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    missing = sum(1 for r in rows if r["output"] is None)
    print(f"wrote {len(rows)} prompts to {args.out} ({missing} without a scored candidate)")
    if args.alpaca_eval:
        generator = args.generator or args.run_id
        outputs = [{"instruction": r["instruction"], "output": r["output"] or "", "generator": generator,
                    "dataset": "toaflow"} for r in rows]
        args.alpaca_eval.parent.mkdir(parents=True, exist_ok=True)
        args.alpaca_eval.write_text(json.dumps(outputs, ensure_ascii=False, indent=1), encoding="utf-8")
        print(f"wrote AlpacaEval model outputs to {args.alpaca_eval}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
