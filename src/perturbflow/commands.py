"""``perturbflow train`` and ``perturbflow infer``: the library outside a Kedro session.

(Not named ``cli.py``: Kedro loads ``<package>.cli`` as the project's own kedro commands.)

``train`` is how multi-GPU and multi-node training is launched: Lightning's DDP starts one
process per device by re-running this command, which a Kedro node could not survive (each
process would re-run ``kedro run``). It reads the same configuration as the pipeline
(``conf/<env>``) and calls the same function, :func:`perturbflow.models.train.train_st`.
``infer`` predicts perturbations on any AnnData from its control cells.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd
import yaml

from perturbflow.datasets.h5ad_cells import read_h5ad_cells
from perturbflow.exceptions import InputError
from perturbflow.io_utils import atomic_path
from perturbflow.params import ColumnsParams, LoaderParams, TrainingParams

logger = logging.getLogger("perturbflow")

COMMANDS = ("train", "infer")


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        if not isinstance(node.get(key), dict):
            raise InputError(f"--params {dotted}: {key!r} is not a params group.")
        node = node[key]
    if leaf not in node:
        raise InputError(f"--params {dotted}: no such key (have {sorted(node)}).")
    node[leaf] = value


def load_params(conf: str, env: str, overrides: list[str]) -> dict[str, Any]:
    """The project's parameters as Kedro resolves them, with ``key=value`` overrides."""
    from kedro.config import OmegaConfigLoader

    loader = OmegaConfigLoader(
        conf_source=conf,
        base_env="base",
        default_run_env=env,
        merge_strategy={"parameters": "soft"},
    )
    params = dict(loader["parameters"])
    for item in overrides:
        for part in item.split(","):
            if "=" not in part:
                raise InputError(f"--params {part!r}: expected key=value.")
            key, value = part.split("=", 1)
            _set(params, key.strip(), yaml.safe_load(value))
    return params


PIPELINE_HINT = (
    "run `kedro run --pipeline preprocessing` and `kedro run --pipeline splits` first, or "
    "pass --adata, --split-table and --genes"
)


def _existing(path: str, flag: str, hint: str) -> Path:
    """``path`` as a Path, or a clear error naming the flag before any work starts."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{flag} {path}: no such file ({hint}).")
    return p


def cmd_train(args: argparse.Namespace) -> int:
    """Train the ST model of one split (DDP when ``training.strategy`` says so)."""
    from perturbflow.models.train import split_data_from_file, train_st

    params = load_params(args.conf, args.env, args.params)
    columns = ColumnsParams(**params["columns"])
    loader = LoaderParams(**params["loader"])
    training = TrainingParams(**params["training"])
    table = pd.read_parquet(_existing(args.split_table, "--split-table", PIPELINE_HINT))
    if args.split not in table.columns:
        raise InputError(
            f"--split {args.split!r} is not a column of {args.split_table} (its columns: "
            f"{list(table.columns)}; splits are named in parameters_splits.yml)."
        )
    genes_file = _existing(args.genes, "--genes", PIPELINE_HINT) if loader.obsm_key else None
    genes = json.loads(genes_file.read_text()) if genes_file else []
    adata = read_h5ad_cells(_existing(args.adata, "--adata", PIPELINE_HINT))  # obs only
    split = split_data_from_file(
        adata,
        table,
        args.split,
        genes=genes,
        loader=loader,
    )
    run_dir = args.run or str(Path(training.runs_dir) / args.split)
    summary = train_st(split, columns=columns, loader=loader, training=training, run_dir=run_dir)
    print(json.dumps(summary, indent=1))
    return 0


def _perturbation_list(path: str, pert_col: str, control: str) -> list[str]:
    p = _existing(path, "--perturbations", "expected a text, CSV or h5ad file")
    if p.suffix == ".h5ad":
        obs = read_h5ad_cells(p).obs
        if pert_col not in obs:
            raise InputError(f"{path}: obs has no column {pert_col!r}.")
        return sorted(set(obs[pert_col].astype(str)) - {control})
    if p.suffix == ".csv":
        frame = pd.read_csv(p)
        col = pert_col if pert_col in frame.columns else frame.columns[0]
        return [str(v) for v in frame[col].dropna() if str(v) != control]
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]


def cmd_infer(args: argparse.Namespace) -> int:
    """Predict perturbations from the control cells of an AnnData."""
    from perturbflow.models.adapter import ADAPTER_CONFIG, load_finetuned
    from perturbflow.models.inference import infer_adata
    from perturbflow.models.run_dir import load_run

    if (Path(args.run) / ADAPTER_CONFIG).is_file():  # a finetuned run: adapter + its base
        run = load_finetuned(args.run, base=args.base)
    else:
        if args.base is not None:
            raise InputError(f"--base is for finetuned runs; {args.run} has no {ADAPTER_CONFIG}.")
        run = load_run(args.run)
    trained = run.config["columns"]
    wanted = (
        _perturbation_list(args.perturbations, args.pert_col, args.control)
        if args.perturbations
        else None
    )
    source = str(args.adata)
    adata = ad.read_h5ad(_existing(args.adata, "--adata", "expected an h5ad file"))
    dataset_col = args.dataset_col
    if dataset_col is None and trained.get("dataset_col") in adata.obs.columns:
        dataset_col = trained["dataset_col"]
    columns = ColumnsParams(
        pert_col=args.pert_col,
        celltype_col=args.celltype_col,
        batch_col=args.batch_col,
        control_label=args.control,
        dataset_col=dataset_col,
        dataset_name=args.dataset_name or trained["dataset_name"],
    )
    out, sources = infer_adata(
        run,
        adata,
        columns,
        perturbations=wanted,
        cells_per_perturbation=args.cells_per_perturbation,
        control_mean=args.control_mean,
        allow_unknown=args.allow_unknown,
        control_offset=args.control_offset,
        per_batch=args.per_batch,
        seed=args.seed,
        source=source,
    )
    output = Path(args.output)
    with atomic_path(output) as tmp:
        out.write_h5ad(tmp)
    with atomic_path(output.with_suffix(".sources.csv")) as tmp:
        sources.to_csv(tmp, index=False)
    logger.info("Wrote %s (%d cells) and %s", output, out.n_obs, output.with_suffix(".sources.csv"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``perturbflow train|infer`` argument parser."""
    parser = argparse.ArgumentParser(prog="perturbflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the ST model of one named split")
    train.add_argument("--split", required=True, help="named split (parameters_splits.yml)")
    train.add_argument("--env", default="local", help="conf environment (default: local)")
    train.add_argument("--conf", default="conf", help="conf directory")
    train.add_argument("--params", action="append", default=[], help="key=value[,key=value]")
    train.add_argument("--adata", default="data/02_intermediate/preprocessed.h5ad")
    train.add_argument("--split-table", default="data/03_primary/splits.parquet")
    train.add_argument("--genes", default="data/02_intermediate/hvg_genes.json")
    train.add_argument("--run", default=None, help="run directory (default runs_dir/<split>)")
    train.set_defaults(func=cmd_train)
    infer = sub.add_parser("infer", help="predict perturbations from control cells")
    infer.add_argument(
        "--run", required=True, help="a finished run directory, or a finetuned (adapter) run"
    )
    infer.add_argument(
        "--base", default=None, help="a finetuned run's base run (default: the path it recorded)"
    )
    infer.add_argument("--adata", required=True, help="input h5ad (log1p, with controls)")
    infer.add_argument("--pert-col", required=True)
    infer.add_argument("--control", required=True, help="control label of --pert-col")
    infer.add_argument("--celltype-col", required=True)
    infer.add_argument("--batch-col", default=None)
    infer.add_argument("--dataset-col", default=None)
    infer.add_argument("--dataset-name", default=None)
    infer.add_argument("--perturbations", default=None, help="text, CSV or h5ad file")
    infer.add_argument("--cells-per-perturbation", type=int, default=None)
    infer.add_argument("--control-mean", action="store_true", help="start from control means")
    infer.add_argument("--allow-unknown", action="store_true")
    infer.add_argument(
        "--per-batch",
        action="store_true",
        help="predict each batch (plate) of --batch-col from its own control cells",
    )
    infer.add_argument(
        "--control-offset",
        choices=["keep", "subtract"],
        default="keep",
        help="subtract: remove what the model does to each control sentence as the control",
    )
    infer.add_argument("--seed", type=int, default=0)
    infer.add_argument("--output", required=True)
    infer.set_defaults(func=cmd_infer)
    return parser


def run_cli(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; bad input exits 2 with its message."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as err:
        print(f"perturbflow {args.command}: error: {err}", file=sys.stderr)
        return 2
