"""Seed 004's scenario on real data: pretrain on K562, finetune on A172, test held-out A172.

Usage (from the project root, after `kedro run --pipelines preprocessing`)::

    OMP_NUM_THREADS=1 python benchmarks/finetune_scenario.py \
        --out docs/results/finetune_scenario.json [--seeds 0 1 2] \
        [--base-steps 400] [--finetune-steps 150] [--params finetuning.optimizer.lr=3e-4 ...]

The splits are ``conf/base/splits/pretrain_k562.toml`` (train: Norman 2019 K562 only) and
``conf/base/splits/finetune_a172.toml`` (A172: MAP2K3, SGK1, MAPK1 trained; MAP3K21, TGFBR2
validation; MAP4K3, MAP2K6, MAP4K5, PLK4 test). Per seed: one base run trained on K562 with
the project's training configuration (``conf/base/parameters_training.yml``, cpu size), then
four finetunings of it on A172's three training perturbations (``finetuning.contexts``):
LoRA and full, each with the base loss (energy distance only) and with the delta-aware terms
added (``delta_mse_weight`` 1, ``delta_pearson_weight`` 0.5). Every model predicts the four
test perturbations from A172's control cells, scored with the evaluation pipeline's own code
(cell-eval, ``evaluate_predictions``) beside the baselines fitted on the finetuning split's
training cells (K562 + A172's three) and the ceiling (real test cells split in halves).
"""

from __future__ import annotations

import argparse
import dataclasses
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

from perturbflow.commands import load_params
from perturbflow.evaluation.benchmark import build_baseline_predictions, evaluate_predictions
from perturbflow.models.inference.predict import predict_cells
from perturbflow.models.runs.adapter import load_finetuned
from perturbflow.models.runs.run_dir import load_run
from perturbflow.models.training.finetune import FinetuningParams, LoraParams, finetune_st
from perturbflow.models.training.train import train_st
from perturbflow.params import (
    ColumnsParams,
    EvaluationParams,
    LoaderParams,
    LossParams,
    OptimizerParams,
    TrainingParams,
)
from perturbflow.predictions import assemble_predictions
from perturbflow.splits import build_split_table, design_table, load_split_toml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from st_quality import hvg_split  # noqa: E402  (a sibling script)

METRICS = ["pearson_delta", "discrimination_score_l1", "overlap_at_N", "mse"]
SPLITS = {
    "pretrain_k562": "conf/base/splits/pretrain_k562.toml",
    "finetune_a172": "conf/base/splits/finetune_a172.toml",
}
VARIANTS = {  # name -> (method, delta-aware loss, output head adapted too)
    "lora": ("lora", False, False),
    "lora+delta": ("lora", True, False),
    "lora_head": ("lora", False, True),
    "lora_head+delta": ("lora", True, True),
    "full": ("full", False, False),
    "full+delta": ("full", True, False),
}


def split_table(obs: pd.DataFrame, columns: ColumnsParams) -> pd.DataFrame:
    table = design_table(obs, columns)
    for name, toml in SPLITS.items():
        table[name] = build_split_table(obs, load_split_toml(toml), columns)["split"]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--base-steps", type=int, default=400)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--lora-lr", type=float, default=None, help="default: the params'")
    parser.add_argument("--full-lr", type=float, default=None, help="default: the params'")
    parser.add_argument("--val-every", type=int, default=40)
    parser.add_argument("--lora-targets", nargs="+", default=None, help="default: the params'")
    parser.add_argument("--lora-rank", type=int, default=None, help="default: the params'")
    parser.add_argument("--params", action="append", default=[])
    parser.add_argument("--work-dir", type=Path, default=Path("data/06_models/finetune_scenario"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    started = time.perf_counter()
    params = load_params("conf", "base", args.params)
    columns = ColumnsParams(**params["columns"])
    loader = LoaderParams(**params["loader"])
    evaluation = EvaluationParams(**{**params["evaluation"], "ceiling": True})
    path = Path("data/02_intermediate/preprocessed.h5ad")
    adata = ad.read_h5ad(path)
    genes = json.loads(Path("data/02_intermediate/hvg_genes.json").read_text())
    table = split_table(adata.obs, columns)

    base_split = hvg_split(path, adata, table, "pretrain_k562", genes)
    ft_split = hvg_split(path, adata, table, "finetune_a172", genes)
    sub = table[["finetune_a172", *("dataset", "celltype", "perturbation", "is_control")]]
    preds, reals, *_ = build_baseline_predictions(adata, sub, genes, columns, evaluation)
    data = ft_split.data
    keys = {
        (c, p): len(data.perturbation_rows(c, p, "test"))
        for c in data.heldout_contexts("test")
        for p in data.heldout_perturbations(c, "test")
    }
    base_loss = LossParams(**params["finetuning"]["loss"])
    losses = {
        False: dataclasses.replace(base_loss, delta_mse_weight=0.0, delta_pearson_weight=0.0),
        True: dataclasses.replace(base_loss, delta_mse_weight=1.0, delta_pearson_weight=0.5),
    }
    optimizer = OptimizerParams(**params["finetuning"]["optimizer"])
    lrs = {"lora": args.lora_lr or optimizer.lr, "full": args.full_lr or optimizer.lr}
    lora = LoraParams(**params["finetuning"]["lora"])
    lora = dataclasses.replace(
        lora, targets=args.lora_targets or lora.targets, rank=args.lora_rank or lora.rank
    )
    runs: dict[str, dict] = {}
    for seed in args.seeds:
        training = TrainingParams(
            **{
                **params["training"],
                "seed": seed,
                "progress_bar": False,
                "cpu_threads": 1,
                "max_steps": args.base_steps,
                "accelerator": "cpu",
            }
        )
        base_dir = args.work_dir / f"base_seed{seed}"
        t0 = time.perf_counter()
        runs[f"base_seed{seed}"] = train_st(
            base_split, columns=columns, loader=loader, training=training, run_dir=base_dir
        )
        runs[f"base_seed{seed}"]["wall_s"] = round(time.perf_counter() - t0, 1)
        result = predict_cells(load_run(base_dir), data, keys, seed=seed, allow_unknown=True)
        preds[f"finetune_a172/none_seed{seed}"] = assemble_predictions(data, result.cells, columns)
        for name, (method, delta, head) in VARIANTS.items():
            targets = [*lora.targets, "output_head"] if head else lora.targets
            finetuning = FinetuningParams(
                **{
                    **params["finetuning"],
                    "base": base_dir.name,
                    "method": method,
                    "loss": losses[delta],
                    "optimizer": dataclasses.replace(optimizer, lr=lrs[method]),
                    "lora": dataclasses.replace(lora, targets=targets),
                    "val_every_n_steps": args.val_every,
                    "ckpt_every_n_steps": args.val_every,
                    "seed": seed,
                    "max_steps": args.finetune_steps,
                    "progress_bar": False,
                    "cpu_threads": 1,
                    "accelerator": "cpu",
                }
            )
            run_dir = args.work_dir / f"{name}_seed{seed}"
            t0 = time.perf_counter()
            summary = finetune_st(
                ft_split,
                load_run(base_dir),
                columns=columns,
                loader=loader,
                finetuning=finetuning,
                run_dir=run_dir,
            )
            summary["wall_s"] = round(time.perf_counter() - t0, 1)
            runs[f"{name}_seed{seed}"] = summary
            result = predict_cells(load_finetuned(run_dir), data, keys, seed=seed)
            preds[f"finetune_a172/{name}_seed{seed}"] = assemble_predictions(
                data, result.cells, columns
            )
            print(
                f"seed {seed} {name}: {summary['wall_s']} s, "
                f"val {summary['best_val_pearson_delta']}",
                flush=True,
            )
    agg, per = evaluate_predictions(preds, reals, columns, evaluation)
    rows = {r["predictor"]: {m: float(r[m]) for m in METRICS} for _, r in agg.iterrows()}
    summary_rows = {}
    for name in ["none", *VARIANTS]:
        values = [rows[f"{name}_seed{s}"] for s in args.seeds]
        summary_rows[name] = {
            m: {
                "mean": float(np.mean([v[m] for v in values])),
                "sd": float(np.std([v[m] for v in values], ddof=1)) if len(values) > 1 else 0.0,
            }
            for m in METRICS
        }
    baselines = {k: v for k, v in rows.items() if "_seed" not in k}
    per_pert = per.pivot_table(index="perturbation", columns="predictor", values="pearson_delta")
    out = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/finetune_scenario.py --out "
        f"{args.out} --seeds {' '.join(map(str, args.seeds))} --base-steps {args.base_steps} "
        f"--finetune-steps {args.finetune_steps} --val-every {args.val_every} "
        f"--lora-lr {lrs['lora']} --full-lr {lrs['full']} --lora-rank {lora.rank} "
        f"--lora-targets {' '.join(lora.targets)}" + "".join(f" --params {p}" for p in args.params),
        "test_perturbations": sorted(p for _, p in keys),
        "learning_rates": lrs,
        "finetuning_defaults": {
            k: params["finetuning"][k] for k in ("optimizer", "identity_dropout")
        },
        "lora": dataclasses.asdict(lora),
        "models": summary_rows,
        "baselines": baselines,
        "per_seed": rows,
        "runs": runs,
        "per_perturbation_pearson_delta": per_pert.round(4).to_dict(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": {"cpus": os.cpu_count(), "threads": 1, "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    print(markdown(out))


def markdown(out: dict) -> str:
    """The results as a markdown table (mean ± sd over seeds; baselines are deterministic)."""
    head = "| model | " + " | ".join(METRICS) + " |\n|---|" + "---|" * len(METRICS) + "\n"
    lines = []
    for name, row in out["models"].items():
        cells = [f"{row[m]['mean']:.3f} ± {row[m]['sd']:.3f}" for m in METRICS]
        lines.append(f"| {'no finetune' if name == 'none' else name} | " + " | ".join(cells) + " |")
    for name, row in out["baselines"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[m]:.3f}" for m in METRICS) + " |")
    return head + "\n".join(lines)


if __name__ == "__main__":
    main()
