"""Few-shot quality over folds of the K562 perturbations, not one split's eight.

The few-shot benchmark split holds out 8 of K562's 33 perturbations; which 8 decides much of
the ranking between the ST model and the baselines. This script shuffles K562's
perturbations (seeded), cuts them into ``--n-folds`` groups and, per fold, holds one group
out as test and 4 perturbations of the next group as validation (the glioblastoma lines stay
in training, as in the few-shot split). Each fold trains one ST model with the project's
configuration and scores it beside the baselines with the evaluation code
(:func:`st_quality.run_split`). Prints and writes per-fold and pooled figures.

Usage (from the project root, after the preprocessing and splits pipelines):
    python benchmarks/st_kfold.py --out folds_seed0.json [--folds 0 1 2 3] [--seed 0]
    python benchmarks/st_kfold.py --summarise folds_*.json --out docs/results/st_kfold.json
(two processes on one thread each, e.g. folds 0 1 and 2 3 with ``--params
training.cpu_threads=1``, take about 8 minutes per seed here.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from st_quality import run_split  # noqa: E402  (a sibling script)

CONTEXT = "k562"
N_VAL = 4


def fold_table(table: pd.DataFrame, fold: int, n_folds: int, seed: int) -> pd.DataFrame:
    """The few-shot table with fold ``fold``'s K562 perturbations as test (column ``fold``)."""
    cells = table[table["celltype"] == CONTEXT]
    perts = sorted(cells.loc[~cells["is_control"], "perturbation"].astype(str).unique())
    order = np.random.default_rng(seed).permutation(perts)
    groups = np.array_split(order, n_folds)
    test = set(groups[fold])
    val = set(groups[(fold + 1) % n_folds][:N_VAL])
    label = pd.Series("train", index=table.index, dtype=object)
    in_context = (table["celltype"] == CONTEXT) & ~table["is_control"]
    pert = table["perturbation"].astype(str)
    label[in_context & pert.isin(test)] = "test"
    label[in_context & pert.isin(val)] = "val"
    out = table[["dataset", "celltype", "perturbation", "is_control"]].copy()
    out["fold"] = pd.Categorical(label, categories=["train", "val", "test", "unused"])
    return out


METRICS = ("pearson_delta", "discrimination_score_l1")


def _flat(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns ``(metric, name)`` joined as ``metric/name`` (JSON keys are strings)."""
    out = frame.copy()
    out.columns = ["/".join(map(str, c)) for c in frame.columns]
    return out


SEEDED = ("st", "perturbflow")  # per-seed predictors: <name>_seed<s>


def summarise(paths: list[Path]) -> dict:
    """Merge per-run JSONs: per fold and predictor, the figures (models: mean/sd over seeds)."""
    rows = []
    for path in paths:
        for result in json.loads(path.read_text())["results"]:
            for name, row in result["predictors"].items():
                if name == "st_ensemble":
                    continue  # one seed per run: the same as st_seed<s>
                model, _, seed = name.rpartition("_seed")
                seeded = model in SEEDED
                rows.append(
                    {
                        "fold": result["fold"],
                        "predictor": model if seeded else name,
                        "seed": int(seed) if seeded else None,
                        **{m: row.get(m) for m in METRICS},
                    }
                )
    frame = pd.DataFrame(rows)
    frame["seed"] = frame["seed"].astype("Int64")
    models = frame[frame["predictor"].isin(SEEDED)]
    baselines = frame[~frame["predictor"].isin(SEEDED)].drop_duplicates(["fold", "predictor"])
    per_fold = baselines.pivot_table(index="fold", columns="predictor", values=list(METRICS))
    table = {
        "per_fold_baselines": _flat(per_fold).round(4).to_dict(),
        "baselines_mean_over_folds": baselines.groupby("predictor")[list(METRICS)]
        .mean()
        .round(4)
        .to_dict(),
        "runs": rows,
    }
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(per_fold.round(3))
        print(
            "baselines, mean over folds:\n",
            baselines.groupby("predictor")[list(METRICS)].mean().round(3),
        )
        for name in SEEDED:
            own = models[models["predictor"] == name]
            per_fold_seeds = own.groupby("fold")[list(METRICS)].agg(["mean", "std"])
            per_seed = own.groupby("seed")[list(METRICS)].mean()  # mean over folds, per seed
            per_seed.index = [f"seed{seed}" for seed in per_seed.index]
            over_seeds = per_seed.agg(["mean", "std"])
            table[f"per_fold_{name}_over_seeds"] = _flat(per_fold_seeds).round(4).to_dict()
            table[f"{name}_mean_over_folds_per_seed"] = per_seed.round(4).to_dict()
            table[f"{name}_mean_over_folds"] = over_seeds.round(4).to_dict()
            print(f"{name} per fold (mean, sd over seeds):\n", per_fold_seeds.round(3))
            print(f"{name}, mean over folds per seed:\n", per_seed.round(3))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-folds", type=int, default=4)
    parser.add_argument("--folds", nargs="+", type=int, default=None)
    parser.add_argument("--fold-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="the ST model's seed")
    parser.add_argument("--params", action="append", default=[])
    parser.add_argument("--work-dir", type=Path, default=Path("data/06_models/st_kfold"))
    parser.add_argument("--summarise", nargs="+", type=Path, help="merge these run JSONs")
    args = parser.parse_args()
    if args.summarise:
        out = summarise(args.summarise)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1, default=str))
        return
    table = pd.read_parquet("data/03_primary/splits.parquet")
    results = []
    for fold in args.folds if args.folds is not None else range(args.n_folds):
        folded = fold_table(table, fold, args.n_folds, args.fold_seed)
        result = run_split(
            "base", "fold", [args.seed], args.params, args.work_dir / f"fold{fold}", folded
        )
        result["fold"] = fold
        results.append(result)
        rows = result["predictors"]
        print(
            f"fold {fold}: "
            + "  ".join(
                f"{name} pd={row['pearson_delta']:.3f} disc={row['discrimination_score_l1']:.3f}"
                for name, row in rows.items()
            )
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"argv": sys.argv[1:], "results": results}, indent=1))


if __name__ == "__main__":
    main()
