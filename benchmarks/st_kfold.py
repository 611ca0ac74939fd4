"""Few-shot quality over folds of the K562 perturbations, not one split's eight.

The few-shot benchmark split holds out 8 of K562's 33 perturbations; which 8 decides much of
the ranking between the ST model and the baselines. This script shuffles K562's
perturbations (seeded), cuts them into ``--n-folds`` groups and, per fold, holds one group
out as test and 4 perturbations of the next group as validation (the glioblastoma lines stay
in training, as in the few-shot split). Each fold trains one ST model with the project's
configuration and scores it beside the baselines with the evaluation code
(:func:`st_quality.run_split`). Prints and writes per-fold and pooled figures.

Usage (from the project root, after the preprocessing and splits pipelines):
    python benchmarks/st_kfold.py --out docs/results/st_kfold.json [--folds 0 1 2 3]
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
    cells = table[table["context"] == CONTEXT]
    perts = sorted(cells.loc[~cells["is_control"], "perturbation"].astype(str).unique())
    order = np.random.default_rng(seed).permutation(perts)
    groups = np.array_split(order, n_folds)
    test = set(groups[fold])
    val = set(groups[(fold + 1) % n_folds][:N_VAL])
    label = pd.Series("train", index=table.index, dtype=object)
    in_context = (table["context"] == CONTEXT) & ~table["is_control"]
    pert = table["perturbation"].astype(str)
    label[in_context & pert.isin(test)] = "test"
    label[in_context & pert.isin(val)] = "val"
    out = table[["dataset", "context", "perturbation", "is_control"]].copy()
    out["fold"] = pd.Categorical(label, categories=["train", "val", "test", "unused"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-folds", type=int, default=4)
    parser.add_argument("--folds", nargs="+", type=int, default=None)
    parser.add_argument("--fold-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="the ST model's seed")
    parser.add_argument("--params", action="append", default=[])
    parser.add_argument("--work-dir", type=Path, default=Path("data/06_models/st_kfold"))
    args = parser.parse_args()
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
