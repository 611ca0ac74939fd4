"""Is a seed ensemble worth it at the same training budget? Scored on validation only.

``training.ensemble: K`` multiplies the training time by K. This asks whether K networks
of ``max_steps / K`` steps each (the default run's time) beat one network of ``max_steps``
on the validation perturbations of the sets ``benchmarks/prior_rule.py`` chooses on (the
three development splits and both shuffles of the 4-fold benchmark, 48 keys), beside
``prior_rule.py``'s one network (mean of three seeds) and ensemble of three full networks.
Each short network is trained with the product's ``train_st`` (resumed or reused in
``--work-dir``) and the ensemble scored with the product's ``predict_mean_deltas`` over its
runs, under the default ``prior_scope`` (``informed``).

Usage (from the project root; about 25 minutes on 2 cores for 33 trainings of 333 steps;
run ``benchmarks/prior_rule.py`` first, whose ``docs/results/prior_rule.json`` it reads):
    OMP_NUM_THREADS=1 python benchmarks/ensemble_budget.py --steps 333 --members 3 \\
        --out docs/results/ensemble_budget_3x333.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from st_kfold import fold_table  # noqa: E402  (a sibling script)
from st_quality import hvg_split, load_environment  # noqa: E402

from perturbflow.baselines import real_deltas  # noqa: E402
from perturbflow.baselines.linear import pearson  # noqa: E402
from perturbflow.models.inference.validation import predict_mean_deltas  # noqa: E402
from perturbflow.models.runs.members import member_trainings  # noqa: E402
from perturbflow.models.runs.run_dir import load_run  # noqa: E402
from perturbflow.models.training.train import train_st  # noqa: E402
from perturbflow.params import ColumnsParams, LoaderParams, TrainingParams  # noqa: E402


def validation_sets() -> list[tuple[str, str, str, pd.DataFrame | None]]:
    """``(set name as in prior_rule.json, environment, split, split table or None)``."""
    sets: list[tuple[str, str, str, pd.DataFrame | None]] = [
        (name, *name.split(":"), None)
        for name in ("base:fewshot", "base:zeroshot", "papalexi:fewshot")
    ]
    base = pd.read_parquet("data/03_primary/splits.parquet")
    for fold_seed in (0, 1):
        for fold in range(4):
            suffix = "" if fold_seed == 0 else f"s{fold_seed}"
            sets.append(
                (f"kfold{fold}{suffix}", "base", "fold", fold_table(base, fold, 4, fold_seed))
            )
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=333, help="max_steps of each network")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="default data/06_models/ensemble_budget/<steps>x<members>",
    )
    parser.add_argument("--reference", type=Path, default=Path("docs/results/prior_rule.json"))
    args = parser.parse_args()
    work = args.work_dir or Path(f"data/06_models/ensemble_budget/{args.steps}x{args.members}")
    environments: dict[str, tuple] = {}
    rows, wall = [], {}
    for name, env, split, table in validation_sets():
        if env not in environments:
            environments[env] = load_environment(env, ["training.cpu_threads=1"])
        params, path, adata, env_table, genes = environments[env]
        data = hvg_split(path, adata, env_table if table is None else table, split, genes)
        columns, loader = ColumnsParams(**params["columns"]), LoaderParams(**params["loader"])
        runs = []
        ensemble = TrainingParams(
            **{
                **params["training"],
                "seed": 0,
                "ensemble": args.members,
                "max_steps": args.steps,
                "progress_bar": False,
            }
        )
        for _, training in member_trainings(name, ensemble):
            run_dir = work / name.replace(":", "_") / f"seed{training.seed}"
            train_st(data, columns=columns, loader=loader, training=training, run_dir=run_dir)
            runs.append(load_run(run_dir))
            # the training's own time (run.json), also when a finished run is reused
            wall[f"{name}/seed{training.seed}"] = runs[-1].summary.get("fit_wall_seconds")
        for label in ("val", "test"):  # chosen on val; test reported, never chosen on
            real = real_deltas(data.data, label)
            alone = [predict_mean_deltas(run, data.data, seed=0, label=label) for run in runs]
            for key, delta in predict_mean_deltas(runs, data.data, seed=0, label=label).items():
                rows.append(
                    {
                        "set": name,
                        "label": label,
                        "perturbation": key[1],
                        "short_ensemble": pearson(delta, real[key]),
                        # what finetuning and adaptation start from: the first member alone
                        "short_first_member": pearson(alone[0][key], real[key]),
                        "short_member_mean": float(
                            np.mean([pearson(a[key], real[key]) for a in alone])
                        ),
                    }
                )
    reference = pd.DataFrame(json.loads(args.reference.read_text())["ensemble_rows"])
    both = reference.merge(
        pd.DataFrame(rows), on=["set", "label", "perturbation"], validate="one_to_one"
    )
    table = both[both["label"] == "val"]
    columns_ = ["informed", "ensemble", "short_ensemble", "short_first_member", "short_member_mean"]
    names = {
        "informed": "one network of the default max_steps (mean of 3 seeds; prior_rule.py)",
        "ensemble": "3 networks of the default max_steps (prior_rule.py)",
        "short_ensemble": f"{args.members} networks of {args.steps} steps",
        "short_first_member": f"the first of them alone (seed 0, {args.steps} steps)",
        "short_member_mean": f"one network of {args.steps} steps (mean of the members alone)",
    }
    summary = {
        "what": names,
        "pooled": table[columns_].mean().round(4).to_dict(),
        "test_pooled_reported": both.loc[both["label"] == "test", columns_]
        .mean()
        .round(4)
        .to_dict(),
        "per_set": table.groupby("set")[columns_].mean().round(4).to_dict("index"),
        "short_against_one_network_keys_better_minus_worse": int(
            (table["short_ensemble"] > table["informed"] + 1e-9).sum()
            - (table["short_ensemble"] < table["informed"] - 1e-9).sum()
        ),
        "n_keys": len(table),
    }
    print(table.groupby("set")[columns_].mean().round(3))
    print(both.groupby("label")[columns_].mean().round(4))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "summary": summary,
                "rows": both.round(4).to_dict("records"),
                "fit_wall_seconds": wall,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
