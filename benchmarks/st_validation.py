"""Train the ST model of one split and print its best validation pearson_delta.

Defaults are chosen with this (validation perturbations only; the test perturbations are
never scored). Usage, from the project root after the preprocessing and splits pipelines:
    OMP_NUM_THREADS=1 python benchmarks/st_validation.py --env base --split fewshot \
        --tag prior --params training.model.response_prior=context_mean \
        --params training.cpu_threads=1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import anndata as ad
import pandas as pd

from perturbflow.commands import load_params
from perturbflow.models.training.train import train_st
from perturbflow.params import ColumnsParams, LoaderParams, TrainingParams
from perturbflow.splits.split_data import split_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="base")
    parser.add_argument("--split", default="fewshot")
    parser.add_argument("--tag", required=True, help="run name suffix")
    parser.add_argument("--params", action="append", default=[])
    parser.add_argument("--work-dir", type=Path, default=Path("data/06_models/st_validation"))
    args = parser.parse_args()
    params = load_params("conf", args.env, args.params)
    root = Path("data") if args.env in ("base", "local") else Path("data/runs") / args.env
    path = root / "02_intermediate/preprocessed.h5ad"
    adata = ad.read_h5ad(path)
    table = pd.read_parquet(root / "03_primary/splits.parquet")
    genes = json.loads((root / "02_intermediate/hvg_genes.json").read_text())
    data = split_data(
        str(path),
        adata.obs,
        table,
        args.split,
        genes=genes,
        all_genes=list(adata.var_names),
        matrix=adata.obsm["X_hvg"],
        obsm_key="X_hvg",
    )
    training = TrainingParams(**{**params["training"], "progress_bar": False})
    started = time.perf_counter()
    summary = train_st(
        data,
        columns=ColumnsParams(**params["columns"]),
        loader=LoaderParams(**params["loader"]),
        training=training,
        run_dir=args.work_dir / f"{args.env}_{args.split}_{args.tag}",
    )
    best = summary.get("best_val_pearson_delta")
    wall = time.perf_counter() - started
    print(f"{args.env}:{args.split} {args.tag}: best val pearson_delta {best} ({wall:.0f} s)")


if __name__ == "__main__":
    main()
