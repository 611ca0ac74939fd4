"""MMD shift adaptation on real data: zero-shot A172 predictions with and without it.

Usage (from the project root, after `kedro run --pipelines preprocessing` and
`--pipelines splits`):
    OMP_NUM_THREADS=1 python benchmarks/adaptation_real.py --out docs/results/adaptation.json \
        [--seeds 0 1 2] [--steps 300] [--work-dir data/06_models/adaptation_bench]

The project's zero-shot split of the PerturBench devel subset holds out every cell of the
glioblastoma line A172 (test) and U87MG (validation); the ST model trains on K562
(Norman 2019, CRISPRa) and T98G (McFaline-Figueroa 2023, CRISPRi). Per seed this script
trains a small ST model on that training set (cpu size, one thread), then predicts the 9
A172 perturbations from A172's control cells:

* ``st_unadapted``: the plain prediction (no shift);
* ``st_adapted_<source>``: a per-gene shift of A172's control expression fitted so that
  the frozen basal encoder maps it onto the control embeddings of ``<source>``: T98G (the
  other CRISPRi glioblastoma line), K562, or both (two files through a glob pattern);
* ``st_adapted_T98G_scale``: shift and per-gene scale, source T98G;
* ``st_adapted_T98G_no_map_back``: as ``st_adapted_T98G`` but the predicted cells are left
  in the adapted space (the shift then shows up as part of every effect).

Everything is scored with the evaluation pipeline's own code (cell-eval), beside the
baselines (control, perturbation_mean, context_mean, linear) and the data ceiling;
``context_mean`` is the context transfer a linear response prior starts a held-out context
from. Under the default ``prior_scope: informed`` every A172 perturbation is predicted at
that prior whatever the shift; ``--params training.model.prior_scope=all`` lets the
network (and so the shift) move it, and ``--params training.model.response_prior=none``
scores the network alone (the table of docs/adaptation.md). The
source files are written per cell line into the work directory (controls only).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from perturbflow.adaptation import (
    ShiftFitParams,
    fit_shift,
    predict_adapted,
    source_embeddings,
)
from perturbflow.adaptation.io import control_expression
from perturbflow.commands import load_params
from perturbflow.evaluation.benchmark import build_baseline_predictions, evaluate_predictions
from perturbflow.models.runs.run_dir import load_run
from perturbflow.models.training.train import train_st
from perturbflow.params import ColumnsParams, EvaluationParams, LoaderParams, TrainingParams

sys.path.insert(0, str(Path(__file__).resolve().parent))
from st_quality import hvg_split  # noqa: E402  (a sibling script)

SPLIT = "zeroshot"
TARGET = "A172"
METRICS = ["pearson_delta", "discrimination_score_l1", "mse", "overlap_at_N"]
SOURCES = {"T98G": "src_T98G.h5ad", "k562": "src_k562.h5ad", "pooled": "src_*.h5ad"}


def fit_params(seed: int, *, scale: bool) -> ShiftFitParams:
    """The shift fit of conf/base/parameters_adaptation.yml, with the seed."""
    params = load_params("conf", "base", [])["adaptation"]["fit"]
    return ShiftFitParams(**{**params, "seed": seed, "scale": scale})


def write_inputs(adata: ad.AnnData, columns: ColumnsParams, work: Path) -> ad.AnnData:
    """Per-cell-line source control files, and the target's cells (in memory)."""
    obs = adata.obs
    is_ctrl = (obs[columns.pert_col].astype(str) == columns.control_label).to_numpy()
    line = obs[columns.celltype_col].astype(str).to_numpy()
    for name in ("T98G", "k562"):
        path = work / f"src_{name}.h5ad"
        if not path.exists():
            adata[is_ctrl & (line == name)].copy().write_h5ad(path)
    return adata[line == TARGET].copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300, help="ST training steps")
    parser.add_argument("--work-dir", type=Path, default=Path("data/06_models/adaptation_bench"))
    parser.add_argument(
        "--params",
        action="append",
        default=[],
        help="overrides of the project's params, e.g. training.model.prior_scope=all",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    started = time.perf_counter()
    args.work_dir.mkdir(parents=True, exist_ok=True)

    params = load_params("conf", "base", args.params)
    columns = ColumnsParams(**params["columns"])
    loader = LoaderParams(**params["loader"])
    evaluation = EvaluationParams(**{**params["evaluation"], "ceiling": True, "num_threads": 1})
    path = Path("data/02_intermediate/preprocessed.h5ad")
    adata = ad.read_h5ad(path)
    table = pd.read_parquet("data/03_primary/splits.parquet")
    genes = json.loads(Path("data/02_intermediate/hvg_genes.json").read_text())
    data = hvg_split(path, adata, table, SPLIT, genes)
    # the shift reads X by gene name; the evaluation reads obsm['X_hvg']: the same values
    cols = adata.var_names.get_indexer(genes)
    X = adata.X[:, cols]
    np.testing.assert_allclose(X.toarray() if hasattr(X, "toarray") else X, adata.obsm["X_hvg"])
    target = write_inputs(adata, columns, args.work_dir)
    context = f"mcfaline23.{TARGET}"
    perts = data.data.heldout_perturbations(context, "test")
    sub = table[[SPLIT, "dataset", "celltype", "perturbation", "is_control"]]
    preds, reals, *_ = build_baseline_predictions(adata, sub, genes, columns, evaluation)

    seeds: dict[int, dict] = {}
    for seed in args.seeds:
        overrides = {
            "seed": seed,
            "max_steps": args.steps,
            "cpu_threads": 1,
            "progress_bar": False,
            "splits": [SPLIT],
        }
        training = TrainingParams(**{**params["training"], **overrides})
        run_dir = args.work_dir / f"st_{SPLIT}_seed{seed}"
        t0 = time.perf_counter()
        summary = train_st(data, columns=columns, loader=loader, training=training, run_dir=run_dir)
        run = load_run(run_dir)
        info: dict = {
            "training_wall_s": round(time.perf_counter() - t0, 1),
            "steps": summary.get("steps"),
        }
        out = predict_adapted(run, target, columns, None, perturbations=perts, seed=seed)
        preds[f"{SPLIT}/st_unadapted_seed{seed}"] = out.cells[:, genes].copy()
        is_ctrl = (target.obs[columns.pert_col].astype(str) == columns.control_label).to_numpy()
        controls = control_expression(target[is_ctrl], run, source=f"{TARGET} controls")
        fits = {}
        for name, pattern in [*SOURCES.items(), ("T98G_scale", SOURCES["T98G"])]:
            src = source_embeddings(
                str(args.work_dir / pattern),
                run,
                pert_col=columns.pert_col,
                control_label=columns.control_label,
            )
            t1 = time.perf_counter()
            fit = fit_shift(
                run.net.basal_encoder,
                controls,
                src.embeddings,
                fit_params(seed, scale=name.endswith("scale")),
            )
            fits[name] = {
                "source_files": src.files,
                "mmd2_before": fit.mmd_before,
                "mmd2_after": fit.mmd_after,
                "mmd2_reduction": 1 - fit.mmd_after / fit.mmd_before,
                "best_step": fit.best_step,
                "steps": fit.steps,
                "stopped_early": fit.stopped_early,
                "shift_rms": float(fit.shift.shift.pow(2).mean().sqrt()),
                "bandwidths": fit.bandwidths,
                "fit_wall_s": round(time.perf_counter() - t1, 2),
                "curve": fit.curve.round(6).to_dict(orient="list"),
            }
            adapted = predict_adapted(
                run, target, columns, fit.shift, perturbations=perts, seed=seed
            )
            preds[f"{SPLIT}/st_adapted_{name}_seed{seed}"] = adapted.cells[:, genes].copy()
            if name == "T98G":
                raw = predict_adapted(
                    run,
                    target,
                    columns,
                    fit.shift,
                    perturbations=perts,
                    seed=seed,
                    map_back=False,
                )
                preds[f"{SPLIT}/st_adapted_T98G_no_map_back_seed{seed}"] = raw.cells[
                    :, genes
                ].copy()  # the output carries every gene of the target file: score the model's
        info["adaptation"] = fits
        seeds[seed] = info
        print(
            f"seed {seed}: trained in {info['training_wall_s']} s; MMD^2 "
            + ", ".join(
                f"{k} {v['mmd2_before']:.4f}->{v['mmd2_after']:.4f}" for k, v in fits.items()
            ),
            flush=True,
        )

    agg, per = evaluate_predictions(preds, reals, columns, evaluation)
    rows = {
        row["predictor"]: {m: float(row[m]) for m in METRICS if m in row}
        for _, row in agg.iterrows()
    }
    conditions = sorted({k.rsplit("_seed", 1)[0] for k in rows if "_seed" in k})
    summary = {}
    for cond in conditions:
        vals = [rows[f"{cond}_seed{s}"] for s in args.seeds]
        summary[cond] = {
            m: {
                "mean": float(np.mean([v[m] for v in vals])),
                "sd": float(np.std([v[m] for v in vals], ddof=1)) if len(vals) > 1 else 0.0,
            }
            for m in METRICS
        }
    for name in [*SOURCES, "T98G_scale"]:
        red = [seeds[s]["adaptation"][name]["mmd2_reduction"] for s in args.seeds]
        before = [seeds[s]["adaptation"][name]["mmd2_before"] for s in args.seeds]
        after = [seeds[s]["adaptation"][name]["mmd2_after"] for s in args.seeds]
        summary[f"st_adapted_{name}"]["mmd2"] = {
            "before_mean": float(np.mean(before)),
            "after_mean": float(np.mean(after)),
            "reduction_mean": float(np.mean(red)),
        }
    per_pert = per.pivot_table(index="perturbation", columns="predictor", values="pearson_delta")
    result = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/adaptation_real.py --out "
        f"{args.out} --seeds {' '.join(map(str, args.seeds))} --steps {args.steps}"
        + "".join(f" --params {p}" for p in args.params),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "split": SPLIT,
        "target": context,
        "perturbations": perts,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "baselines": {k: v for k, v in rows.items() if "_seed" not in k},
        "summary": summary,
        "per_seed": {str(s): v for s, v in seeds.items()},
        "per_seed_metrics": {k: v for k, v in rows.items() if "_seed" in k},
        "per_perturbation_pearson_delta": per_pert.round(4).to_dict(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print("\nbaselines")
    for name, row in result["baselines"].items():
        print(f"  {name:32s} " + "  ".join(f"{k}={v:.3f}" for k, v in row.items()))
    print("ST (mean ± sd over seeds)")
    for name, row in summary.items():
        text = "  ".join(
            f"{m}={v['mean']:.3f}±{v['sd']:.3f}" for m, v in row.items() if m in METRICS
        )
        mmd = row.get("mmd2")
        extra = f"  MMD² {mmd['before_mean']:.4f}->{mmd['after_mean']:.4f}" if mmd else ""
        print(f"  {name:32s} {text}{extra}")
    print(f"wall {result['wall_seconds']} s")


if __name__ == "__main__":
    main()
