"""Instruction difficulty for AlpacaEval's LC GLM, estimated from many models' annotations at once.

AlpacaEval's `notebooks/instruction_difficulty.ipynb` fits one GLM jointly over the annotations of many models:

    preference ~ C(model):tanh(std_delta_len) + C(model) + C(index) + not_gamed_baseline - 1

(each model its own length slope and strength, each instruction its own effect), with the same soft-label,
L1, 5-fold cross-validated logistic fit as the per-model GLM. The per-instruction coefficients are the
difficulty; instruction 0 is the reference level (0). We build the same design as a sparse matrix (805
instructions x many models would not fit densely) and fit it with AlpacaEval's own `fit_LogisticRegressionCV`.
Rows whose model output is empty are left out, as the notebook does.

`toa lc-difficulty --annotations DIR --out FILE` writes the result; `evaluation.length_control.annotations_dir`
makes the evaluation estimate it (once, cached in the store) when the official file is not available.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

ANNOTATION_COLUMNS = ("generator_2", "index", "len_output_1", "len_output_2", "preference")


class AnnotationError(ValueError):
    """An annotation file that cannot be read; the message names the file, the record and the fix."""


def _preference_01(value: Any) -> float | None:
    """AlpacaEval's preference (1 = baseline wins, 2 = model wins, 0 = tie) as P(model wins); None if missing."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    value = float(value)
    if value < 0:
        return None
    return (1.5 if value == 0.0 else value) - 1.0


def _records(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path}: not valid JSON ({error.msg}, line {error.lineno}); "
                              f"expected AlpacaEval annotations (annotations.json or one record per line)") from None
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a list of annotation records")
    return data


def annotation_rows(path: Path) -> list[dict[str, Any]] | None:
    """One file's annotations as {generator_2 (the model: the file's name), index, len_output_1, len_output_2,
    preference (0..1 or None)}.

    Accepts the shared reduced format (`index`, `len_output_1`, `len_output_2`) and AlpacaEval's own
    annotations.json (`output_1`, `output_2`; index = position in the file). None for a file that holds no
    annotations (no `preference` field), such as an instruction list."""
    records = _records(path)
    if not records or not all(isinstance(r, dict) and "preference" in r for r in records):
        return None
    # One model per file, named by the file (as AlpacaEval's notebook names each by its results folder: the
    # annotations' own generator_2 can be a placeholder, e.g. "example"); AlpacaEval's annotations.json keeps it.
    model = str(records[0].get("generator_2") or path.stem) if path.stem == "annotations" else path.stem
    rows = []
    for number, record in enumerate(records):
        where = f"{path}: record {number + 1}"
        try:
            len_1 = record["len_output_1"] if "len_output_1" in record else len(record["output_1"] or "")
            len_2 = record["len_output_2"] if "len_output_2" in record else len(record["output_2"] or "")
        except KeyError as error:
            raise AnnotationError(f"{where}: no {error.args[0]} (give len_output_1/len_output_2 or "
                                  f"output_1/output_2)") from None
        rows.append({"generator_2": model,
                     "index": int(record.get("index", number)), "len_output_1": int(len_1),
                     "len_output_2": int(len_2), "preference": _preference_01(record["preference"])})
    return rows


def read_annotation_folder(folder: str | Path):
    """Every annotation file (*.json, *.jsonl) of `folder` as one DataFrame (one model per file)."""
    import pandas as pd

    folder = Path(folder)
    if not folder.is_dir():
        raise AnnotationError(f"{folder}: not a folder of annotation files")
    frames = []
    for path in sorted(folder.glob("*.json*")):
        if path.suffix not in (".json", ".jsonl"):
            continue
        rows = annotation_rows(path)
        if rows is not None:
            frames.append(pd.DataFrame(rows, columns=list(ANNOTATION_COLUMNS)))
    if not frames:
        raise AnnotationError(f"{folder}: no annotation files (*.json / *.jsonl records with a `preference`)")
    return pd.concat(frames, ignore_index=True)


def estimate_instruction_difficulty(annotations, *, n_splits: int = 5, C: float | None = None):
    """Per-instruction difficulty (pandas Series indexed by instruction index) from a joint GLM over models.

    `annotations`: DataFrame with ANNOTATION_COLUMNS (preference in [0, 1]); needs at least two models.
    `C` fixed skips the cross-validation (a quick estimate)."""
    import pandas as pd
    from scipy import sparse

    frame = annotations[annotations["preference"].notna() & (annotations["len_output_2"] != 0)].reset_index(drop=True)
    models = sorted(frame["generator_2"].unique())
    if len(models) < 2:
        raise AnnotationError(f"a joint difficulty fit needs annotations of at least two models, got {len(models)}")
    instructions = np.sort(frame["index"].unique())
    n, m = len(frame), len(models)
    model_of_row = frame["generator_2"].map({name: k for k, name in enumerate(models)}).to_numpy()
    column_of_index = {index: k for k, index in enumerate(instructions[1:])}  # the first is the reference level
    delta = (frame["len_output_1"] - frame["len_output_2"]).astype(float)
    sd = delta.groupby(frame["generator_2"]).transform("std").replace(0.0, np.nan)
    length = np.tanh((delta / sd).fillna(0.0)).to_numpy()

    rows = np.arange(n)
    index_columns = frame["index"].map(column_of_index)
    has_index = index_columns.notna().to_numpy()
    n_columns = 2 * m + len(instructions) - 1 + 1
    data = np.concatenate([length, np.ones(n), np.ones(has_index.sum()), np.ones(n)])
    row_ids = np.concatenate([rows, rows, rows[has_index], rows])
    col_ids = np.concatenate([model_of_row, m + model_of_row,
                              2 * m + index_columns[has_index].to_numpy().astype(int), np.full(n, n_columns - 1)])
    design = sparse.csc_matrix((data, (row_ids, col_ids)), shape=(n, n_columns))
    names = ([f"length:{name}" for name in models] + [f"strength:{name}" for name in models]
             + [f"index:{index}" for index in instructions[1:]] + ["not_gamed_baseline"])
    table = pd.DataFrame.sparse.from_spmatrix(design, columns=names)
    table["preference"] = frame["preference"].to_numpy()

    from evaluation.metrics.length_control import fit_alpaca_eval_glm

    model = fit_alpaca_eval_glm(table, n_splits=0 if C is not None else n_splits, C=C)
    coefficients = model.coef_[0]
    values = np.concatenate([[0.0], coefficients[2 * m:2 * m + len(instructions) - 1]])
    series = pd.Series(values, index=pd.Index(instructions, name="index"), name="instruction_difficulty")
    series.attrs.update(models=len(models), rows=n, C=float(np.ravel(getattr(model, "C_", [C]))[0]))
    return series


def difficulty_csv(series) -> str:
    """The CSV layout of AlpacaEval's instruction_difficulty.csv: `index,instruction_difficulty`."""
    return series.to_csv(header=True, float_format="%.10f")


def read_difficulty(path: str | Path, data: bytes | None = None) -> dict[int, float]:
    """{instruction index: difficulty} from a CSV with columns `index` and `instruction_difficulty` (read from
    `data` when given; `path` then only names it in errors)."""
    import io

    import pandas as pd

    try:
        table = pd.read_csv(io.BytesIO(data) if data is not None else Path(path))
    except (OSError, ValueError) as error:
        raise AnnotationError(f"{path}: cannot read the instruction difficulty ({error})") from None
    if "instruction_difficulty" not in table.columns:
        raise AnnotationError(f"{path}: no `instruction_difficulty` column (expected `index,instruction_difficulty`, "
                              f"as AlpacaEval's instruction_difficulty.csv or `toa lc-difficulty` write it)")
    index = table["index"] if "index" in table.columns else table.iloc[:, 0]
    return {int(i): float(v) for i, v in zip(index, table["instruction_difficulty"])}
