"""`toa lc-difficulty`: estimate AlpacaEval's instruction difficulty from a folder of annotation files."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lc-difficulty", help="estimate the LC win rate's instruction difficulty from many models' annotations",
        description="Fit AlpacaEval's joint instruction-difficulty GLM (its notebooks/instruction_difficulty.ipynb) "
                    "over every annotation file of a folder (AlpacaEval annotations.json files, or the reduced "
                    "{index, generator_2, len_output_1, len_output_2, preference} JSONL) and write "
                    "`index,instruction_difficulty` as a CSV. Point evaluation.length_control.difficulty at it when "
                    "the official instruction_difficulty.csv cannot be downloaded.")
    parser.add_argument("--annotations", required=True, metavar="DIR", help="folder of annotation files, one model each")
    parser.add_argument("--out", required=True, metavar="FILE", help="CSV to write")
    parser.add_argument("--quick", action="store_true", help="fixed regularisation instead of 5-fold cross-validation")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from evaluation.metrics.difficulty import (AnnotationError, difficulty_csv, estimate_instruction_difficulty,
                                               read_annotation_folder)
    from toaflow.cli import UserError

    try:
        annotations = read_annotation_folder(args.annotations)
        series = estimate_instruction_difficulty(annotations, C=2.78 if args.quick else None)
    except AnnotationError as error:
        raise UserError(str(error)) from None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(difficulty_csv(series), encoding="utf-8")
    print(f"wrote {out}: {len(series)} instructions from {series.attrs['models']} models "
          f"({series.attrs['rows']} annotations, C={series.attrs['C']:.3g}); set "
          f"evaluation.length_control.difficulty: {out}")
    return 0
