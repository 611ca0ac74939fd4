"""Choose ST defaults on validation perturbations only, pooled over splits and seeds.

A split's validation set is small (4 perturbations on the few-shot split), so one run's
best validation pearson_delta cannot tell two settings apart. This script trains one model
per (split, seed) for a setting, predicts every split's *validation* perturbations from
control cells, and scores them with the evaluation pipeline's own code (cell-eval) on
pearson_delta and discrimination_score_l1, pooled over the splits' validation
perturbations. The test perturbations are never predicted nor scored. Besides each model it
scores inference-time variants of the same trained models (no retraining): ``additive``
(untrained combinations from their components' predicted deltas), ``anchored`` (the
model's own offset on the same control cells subtracted, ``control_offset="subtract"``),
``shrink`` (below) and ``ensemble`` (the mean of the seeds' predicted cells from the same
control cells).

The models' ``best`` checkpoint was selected on these same validation perturbations, so the
figures are optimistic in absolute terms; every setting gets the same advantage, and the
comparison between settings is what the script is for.

Usage (from the project root, after the preprocessing and splits pipelines of each env):
    OMP_NUM_THREADS=1 python benchmarks/st_selection.py --tag prior \
        --params training.model.response_prior=context_mean --params training.cpu_threads=1 \
        [--splits base:fewshot base:zeroshot papalexi:fewshot] [--seeds 0 1]
Each run writes ``<work-dir>/<tag>.json``; ``--summarise`` prints the table of every JSON in
the work directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from perturbflow.evaluation.benchmark import build_baseline_predictions, evaluate_predictions
from perturbflow.models.inference.predict import predict_cells
from perturbflow.models.runs.run_dir import load_run
from perturbflow.models.training.train import train_st
from perturbflow.params import ColumnsParams, EvaluationParams, LoaderParams, TrainingParams
from perturbflow.perturbations import components
from perturbflow.predictions import assemble_predictions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from st_quality import hvg_split, load_environment  # noqa: E402  (a sibling script)

METRICS = ["pearson_delta", "discrimination_score_l1"]


def validation_as_test(table: pd.DataFrame, split: str) -> pd.DataFrame:
    """The split table with ``val`` relabelled ``test`` and the real test cells unused."""
    out = table.copy()
    out[split] = out[split].replace({"test": "unused"}).replace({"val": "test"})
    return out


SHRINK_WEIGHTS = (0.5, 1.0)
# Inference variants of every trained model: (name, combine, control_offset).
VARIANTS = (
    ("joint", "joint", "keep"),
    ("additive", "additive", "keep"),
    ("joint_anchored", "joint", "subtract"),
    ("additive_anchored", "additive", "subtract"),
)


def shrink_out_of_context(
    cells: dict, run, data, weight: float
) -> dict[tuple[str, str], np.ndarray]:
    """Move the mean predicted delta of keys not trained in their context towards the mean.

    A key none of whose components was trained in its own context (a single trained only
    in other cell types, a perturbation never trained, any key of an unseen context) gets
    its cells shifted by ``weight * (mean training delta of the context - predicted mean
    delta)``: ``weight`` 1 predicts the ``perturbation_mean`` delta with the model's cells'
    spread, 0 leaves the model's prediction.
    """
    effects = run.inputs.effects
    trained = set(effects.keys)
    control = run.inputs.control_label
    out = {}
    for (context, pert), predicted in cells.items():
        parts = [p for p in components(pert) if p != control]
        if any((context, p) in trained for p in parts):
            out[(context, pert)] = predicted
            continue
        ctrl = data.X[data.control_rows(context)].mean(axis=0)
        delta = predicted.mean(axis=0) - ctrl
        shift = weight * (effects.mean_delta(context) - delta)
        out[(context, pert)] = np.clip(predicted + shift, 0.0, None)
    return out


def run_split(env: str, split: str, seeds: list[int], overrides: list[str], work: Path) -> dict:
    """Train one model per seed and score every predictor on the validation perturbations."""
    params, path, adata, table, genes = load_environment(env, overrides)
    columns = ColumnsParams(**params["columns"])
    loader = LoaderParams(**params["loader"])
    evaluation = EvaluationParams(**{**params["evaluation"], "ceiling": False})
    data = hvg_split(path, adata, table, split, genes)
    val_table = validation_as_test(table, split)
    scoring = hvg_split(path, adata, val_table, split, genes)
    sub = val_table[[split, "dataset", "celltype", "perturbation", "is_control"]]
    preds, reals, *_ = build_baseline_predictions(adata, sub, genes, columns, evaluation)
    keys = {
        (c, p): len(scoring.data.perturbation_rows(c, p, "test"))
        for c in scoring.data.heldout_contexts("test")
        for p in scoring.data.heldout_perturbations(c, "test")
    }
    cells: dict[str, dict] = {}
    walls = {}
    for seed in seeds:
        training = TrainingParams(**{**params["training"], "seed": seed, "progress_bar": False})
        run_dir = work / "runs" / f"{env}_{split}_seed{seed}"
        started = time.perf_counter()
        train_st(data, columns=columns, loader=loader, training=training, run_dir=run_dir)
        walls[seed] = round(time.perf_counter() - started, 1)
        run = load_run(run_dir)
        for name, combine, offset in VARIANTS:
            result = predict_cells(
                run,
                scoring.data,
                keys,
                seed=1000,
                allow_unknown=True,
                combine=combine,
                control_offset=offset,
            )
            cells[f"st_{name}_seed{seed}"] = result.cells
        for weight in SHRINK_WEIGHTS:
            cells[f"st_shrink{int(weight * 100)}_seed{seed}"] = shrink_out_of_context(
                cells[f"st_joint_seed{seed}"], run, scoring.data, weight
            )
    shrunk = (f"shrink{int(w * 100)}" for w in SHRINK_WEIGHTS)
    for combine in (*(name for name, _, _ in VARIANTS), *shrunk):
        members = [cells[f"st_{combine}_seed{s}"] for s in seeds]
        cells[f"st_{combine}_ensemble"] = {
            k: np.mean([m[k] for m in members], axis=0) for k in members[0]
        }
    for name, predicted in cells.items():
        preds[f"{split}/{name}"] = assemble_predictions(scoring.data, predicted, columns)
    _, per = evaluate_predictions(preds, reals, columns, evaluation)
    per = per[per["predictor"] != "ceiling"]
    return {
        "env": env,
        "split": split,
        "train_seconds": walls,
        "per_perturbation": per[["predictor", "perturbation", *METRICS]].to_dict("records"),
    }


def summarise(work: Path) -> pd.DataFrame:
    """Pooled validation figures of every setting in ``work`` (one JSON per setting)."""
    rows = []
    for path in sorted(work.glob("*.json")):
        result = json.loads(path.read_text())
        for split in result["results"]:
            for rec in split["per_perturbation"]:
                name = f"{split['env']}:{split['split']}"
                rows.append({"setting": path.stem, "split": name, **rec})
    frame = pd.DataFrame(rows)
    pooled = frame.groupby(["setting", "predictor"])[METRICS].mean()
    per_split = frame.pivot_table(
        index=["setting", "predictor"], columns="split", values="pearson_delta"
    )
    return pooled.join(per_split).round(3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", help="setting name (the JSON's and run directories' name)")
    parser.add_argument(
        "--splits", nargs="+", default=["base:fewshot", "base:zeroshot", "papalexi:fewshot"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--params", action="append", default=[])
    parser.add_argument("--work-dir", type=Path, default=Path("data/06_models/st_selection"))
    parser.add_argument("--summarise", action="store_true", help="print the pooled table")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.summarise:
        with pd.option_context(
            "display.width", 250, "display.max_columns", 20, "display.max_rows", 200
        ):
            print(summarise(args.work_dir))
        return
    if not args.tag:
        parser.error("--tag is required unless --summarise")
    results = []
    for item in args.splits:
        env, split = item.split(":")
        results.append(run_split(env, split, args.seeds, args.params, args.work_dir / args.tag))
    out = {
        "command": "python benchmarks/st_selection.py --tag "
        + " ".join([args.tag, "--splits", *args.splits, "--seeds", *map(str, args.seeds)])
        + "".join(f" --params {p}" for p in args.params),
        "results": results,
    }
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (args.work_dir / f"{args.tag}.json").write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.work_dir / args.tag}.json")


if __name__ == "__main__":
    main()
