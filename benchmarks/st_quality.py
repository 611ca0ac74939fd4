"""ST model vs the baselines on held-out real perturbations, over several seeds.

Usage (from the project root, after `kedro run --pipelines preprocessing` and `--pipeline
splits` for each environment used):
    python benchmarks/st_quality.py --out docs/results/st_quality.json \
        [--splits base:fewshot base:zeroshot papalexi:fewshot] [--seeds 0 1 2] \
        [--params training.max_steps=1000 ...]

For each split: trains one ST model per seed with the project's configuration (conf/base,
plus conf/<env> for the environment), predicts the test perturbations from control cells,
and scores everything with the evaluation pipeline's own code (cell-eval, one call per
split), beside the baselines and the ceiling. Per seed it also builds the ``perturbflow``
predictor (the candidate, among the baselines and that seed's ST, best on the split's
validation perturbations: ``perturbflow_seed<s>``), and ``st_ensemble``: the mean of the
seeds' predicted cells from the same control cells. Writes per-seed and mean/sd figures as
JSON and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.commands import load_params
from perturbflow.evaluation.benchmark import build_baseline_predictions, evaluate_predictions
from perturbflow.evaluation.selection import choose_by_validation
from perturbflow.evaluation.variability import variability_table
from perturbflow.models.inference.predict import predict_ensemble
from perturbflow.models.inference.validation import model_validation_scores
from perturbflow.models.runs.members import member_trainings
from perturbflow.models.runs.run_dir import TrainedRun, load_run
from perturbflow.models.training.train import train_st
from perturbflow.params import ColumnsParams, EvaluationParams, LoaderParams, TrainingParams
from perturbflow.predictions import assemble_predictions
from perturbflow.splits.split_data import SplitData, split_data

METRICS = ["pearson_delta", "discrimination_score_l1", "overlap_at_N", "mse"]


def load_environment(
    env: str, overrides: list[str]
) -> tuple[dict, Path, ad.AnnData, pd.DataFrame, list[str]]:
    """An environment's params, preprocessed h5ad (path and AnnData), split table and HVGs.

    Reads what ``kedro run --env <env> --pipelines preprocessing`` and ``--pipelines splits``
    wrote (``data/`` for ``base``, ``data/runs/<env>/`` otherwise).
    """
    params = load_params("conf", env, overrides)
    root = Path("data") if env in ("base", "local") else Path("data/runs") / env
    path = root / "02_intermediate/preprocessed.h5ad"
    table = pd.read_parquet(root / "03_primary/splits.parquet")
    genes = json.loads((root / "02_intermediate/hvg_genes.json").read_text())
    return params, path, ad.read_h5ad(path), table, genes


def hvg_split(
    path: Path, adata: ad.AnnData, table: pd.DataFrame, split: str, genes: list[str]
) -> SplitData:
    """One split of a preprocessed file, its cells read from ``obsm['X_hvg']``."""
    return split_data(
        str(path),
        adata.obs,
        table,
        split,
        genes=genes,
        all_genes=list(adata.var_names),
        matrix=adata.obsm["X_hvg"],
        obsm_key="X_hvg",
    )


def run_split(
    env: str,
    split: str,
    seeds: list[int],
    overrides: list[str],
    work: Path,
    table: pd.DataFrame | None = None,
) -> dict:
    """Train one model per seed on ``split`` and score it beside the baselines on its test set.

    ``table`` replaces the environment's split table (``benchmarks/st_kfold.py``'s folds).
    """
    params, path, adata, env_table, genes = load_environment(env, overrides)
    table = env_table if table is None else table
    columns = ColumnsParams(**params["columns"])
    loader = LoaderParams(**params["loader"])
    evaluation = EvaluationParams(**{**params["evaluation"], "ceiling": True})
    sub = table[[split, "dataset", "celltype", "perturbation", "is_control"]]
    data = hvg_split(path, adata, table, split, genes)
    baselines = build_baseline_predictions(adata, sub, genes, columns, evaluation)
    preds, reals = baselines.predictions, baselines.reals
    keys = {
        (c, p): len(data.data.perturbation_rows(c, p, "test"))
        for c in data.data.heldout_contexts("test")
        for p in data.data.heldout_perturbations(c, "test")
    }
    trainings, chosen, members = {}, {}, []
    for seed in seeds:
        training = TrainingParams(**{**params["training"], "seed": seed, "progress_bar": False})
        runs = _train_members(data, training, columns, loader, work / f"{env}_{split}", trainings)
        result = predict_ensemble(runs, data.data, keys, seed=seed, allow_unknown=True)
        preds[f"{split}/st_seed{seed}"] = assemble_predictions(data.data, result.cells, columns)
        members.append(predict_ensemble(runs, data.data, keys, seed=0, allow_unknown=True).cells)
        st_val = model_validation_scores(
            runs, data.data, split=split, predictor=f"st_seed{seed}", seed=seed
        )
        names = [n for n in evaluation.predictors if n != "control"] + [f"st_seed{seed}"]
        table_ = choose_by_validation(
            pd.concat([baselines.validation, st_val], ignore_index=True), [split], {split: names}
        )
        pick = table_.loc[table_["chosen"], "predictor"].iloc[0]
        chosen[seed] = table_.to_dict("records")
        preds[f"{split}/perturbflow_seed{seed}"] = preds[f"{split}/{pick}"]
    ensemble = {k: np.mean([m[k] for m in members], axis=0) for k in members[0]}
    preds[f"{split}/st_ensemble"] = assemble_predictions(data.data, ensemble, columns)
    agg, per = evaluate_predictions(preds, reals, columns, evaluation)
    variability = variability_table(preds, reals, columns).set_index("predictor")
    rows = {}
    for _, row in agg.iterrows():
        rows[row["predictor"]] = {m: float(row[m]) for m in METRICS if m in row}
        if row["predictor"] in variability.index:
            rows[row["predictor"]]["std_ratio"] = float(
                variability.loc[row["predictor"], "std_ratio_mean"]
            )
    summary = _seed_summary([rows[f"st_seed{s}"] for s in seeds])
    chosen_summary = _seed_summary([rows[f"perturbflow_seed{s}"] for s in seeds])
    ceiling = rows.get("ceiling", {}).get("pearson_delta")
    summary["share_of_ceiling_pearson_delta"] = (
        summary["pearson_delta"]["mean"] / ceiling if ceiling else None
    )
    per_pert = per.pivot_table(index="perturbation", columns="predictor", values="pearson_delta")
    return {
        "env": env,
        "split": split,
        "predictors": rows,
        "st_summary": summary,
        "perturbflow_summary": chosen_summary,
        "perturbflow_selection": chosen,
        "validation_baselines": baselines.validation.to_dict("records"),
        "prior_sources": _prior_sources(work / f"{env}_{split}_seed{seeds[0]}", keys),
        "trainings": trainings,
        "per_perturbation_pearson_delta": per_pert.round(4).to_dict(),
    }


def _train_members(
    data: SplitData,
    training: TrainingParams,
    columns: ColumnsParams,
    loader: LoaderParams,
    prefix: Path,
    trainings: dict,
) -> list[TrainedRun]:
    """Train (or reuse) the networks of one seed's model: one, or its seed ensemble.

    With ``training.ensemble`` K the model is the product's ensemble of K networks with
    seeds ``training.seed`` ... ``+ K - 1`` (:mod:`perturbflow.models.runs.members`), each
    in ``<prefix>_seed<s>``; a network that another seed's ensemble shares is trained once.
    Records each training's summary in ``trainings`` under its seed.
    """
    runs = []
    for _, member in member_trainings(str(prefix), training):
        run_dir = Path(f"{prefix}_seed{member.seed}")
        started = time.perf_counter()
        summary = train_st(data, columns=columns, loader=loader, training=member, run_dir=run_dir)
        summary["wall_seconds_incl_setup"] = round(time.perf_counter() - started, 1)
        trainings[member.seed] = summary
        runs.append(load_run(run_dir))
    return runs


def _seed_summary(rows: list[dict]) -> dict:
    """Mean and sd over seeds of each metric."""
    return {
        m: {
            "mean": float(np.mean([r[m] for r in rows])),
            "sd": float(np.std([r[m] for r in rows], ddof=1)) if len(rows) > 1 else 0.0,
        }
        for m in [*METRICS, "std_ratio"]
        if all(m in r for r in rows)
    }


def _prior_sources(run_dir: Path, keys: dict) -> dict:
    """Which prior each test perturbation started from (the run's key table)."""
    table = pd.read_csv(run_dir / "perturbation_sources.csv")
    if "prior" not in table:
        return {}
    table = table.set_index(["context", "perturbation"])
    return {p: str(table.loc[(c, p), "prior"]) for c, p in keys if (c, p) in table.index}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--splits", nargs="+", default=["base:fewshot", "base:zeroshot", "papalexi:fewshot"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--params", action="append", default=[])
    parser.add_argument("--work-dir", type=Path, default=Path("data/06_models/st_quality"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = []
    for item in args.splits:
        env, split = item.split(":")
        results.append(run_split(env, split, args.seeds, args.params, args.work_dir))
        r = results[-1]
        print(f"\n{env}:{split}")
        for name, row in r["predictors"].items():
            print(f"  {name:18s} " + "  ".join(f"{k}={v:.3f}" for k, v in row.items()))
        for name in ("st", "perturbflow"):
            print(
                f"  {name} mean/sd: "
                + "  ".join(
                    f"{m}={v['mean']:.3f}±{v['sd']:.3f}"
                    for m, v in r[f"{name}_summary"].items()
                    if isinstance(v, dict)
                )
            )
    out = {
        "command": "python benchmarks/st_quality.py "
        + " ".join(
            ["--splits", *args.splits, "--seeds", *map(str, args.seeds)]
            + [f"--params {p}" for p in args.params]
        ),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
