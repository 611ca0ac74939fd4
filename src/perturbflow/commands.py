"""``perturbflow train`` and ``perturbflow infer``: the library outside a Kedro session.

(Not named ``cli.py``: Kedro loads ``<package>.cli`` as the project's own kedro commands.)

``train`` is how multi-GPU and multi-node training is launched: Lightning's DDP starts one
process per device by re-running this command, which a Kedro node could not survive (each
process would re-run ``kedro run``). It reads the same configuration as the pipeline
(``conf/<env>``) and calls the same function, :func:`perturbflow.models.training.train.train_st`.
``infer`` predicts perturbations on any AnnData from its control cells.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd
import yaml

from perturbflow.command_options import INFER_DESCRIPTION, INFER_OPTIONS, TRAIN_OPTIONS, Option
from perturbflow.datasets.h5ad_cells import read_h5ad_cells
from perturbflow.error_report import short_report, verbose
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
    "run `kedro run --pipelines preprocessing` and `kedro run --pipelines splits` first, or "
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
    from perturbflow.models.runs.members import member_trainings
    from perturbflow.models.training.train import train_st
    from perturbflow.splits.split_data import split_data_from_file

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
    summaries = []
    for name, member in member_trainings(args.split, training):
        run_dir = member_run_dir(args.run, args.split, name)
        summaries.append(
            train_st(split, columns=columns, loader=loader, training=member, run_dir=run_dir)
        )
    print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=1))
    return 0


def member_run_dir(run: str, split: str, member: str) -> str:
    """Where ``--run`` puts an ensemble member (``training.ensemble``).

    ``<split>`` in ``run`` is replaced by the member's name; a fixed folder gets the
    member's suffix appended (``run``, ``run.seed1``, ...).
    """
    if "<split>" in run:
        return run.replace("<split>", member)
    return run + member[len(split) :]


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


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (resolved alike, or the same inode when both exist)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def checked_output(output: str, inputs: dict[str, str | None]) -> Path:
    """The ``--output`` path, refused before any work when writing it would lose data.

    Args:
        output: The ``--output`` argument.
        inputs: The input files by flag (``--adata``, ``--perturbations``); ``None`` is
            skipped.

    Returns:
        ``output`` as a Path.

    Raises:
        InputError: The output or its ``.sources.csv`` table is one of the inputs (by
            resolved path, or by inode: a symlink or a hard link), or the output's folder
            does not exist, is not a folder or is not writable, or the output is a folder.
    """
    out = Path(output)
    written = {"--output": out, "the sources table of --output": out.with_suffix(".sources.csv")}
    for flag, given in inputs.items():
        for what, target in written.items():
            if given is not None and _same_file(target, Path(given)):
                raise InputError(
                    f"{what} {target} is the same file as {flag} {given}: writing the "
                    f"predictions would replace the input. Give --output another path."
                )
    if out.is_dir():
        raise InputError(f"--output {output} is a folder; give the path of an h5ad file.")
    folder = out.absolute().parent
    if not folder.exists():
        raise InputError(f"--output {output}: its folder {folder} does not exist; create it.")
    if not folder.is_dir():
        raise InputError(f"--output {output}: {folder} is not a folder.")
    read_only = not folder.stat().st_mode & 0o222  # no write bit: read-only, even for root
    if read_only or not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"--output {output}: its folder {folder} is not writable.")
    return out


def cmd_infer(args: argparse.Namespace) -> int:
    """Predict perturbations from the control cells of an AnnData."""
    from perturbflow.models.inference.infer import InferOptions, infer
    from perturbflow.models.runs.adapter import ADAPTER_CONFIG, load_finetuned
    from perturbflow.models.runs.run_dir import load_run

    output = checked_output(
        args.output, {"--adata": args.adata, "--perturbations": args.perturbations}
    )
    paths = list(args.run)  # one run, or a seed ensemble's (nargs="+")
    adapters = [p for p in paths if (Path(p) / ADAPTER_CONFIG).is_file()]
    if adapters and len(paths) > 1:
        raise InputError(
            f"--run {adapters[0]} is a finetuned (adapter) run: give it alone, not in an "
            "ensemble of several runs."
        )
    if adapters:  # a finetuned run: adapter + its base
        runs = [load_finetuned(paths[0], base=args.base)]
    else:
        if args.base is not None:
            raise InputError(f"--base is for finetuned runs; {paths[0]} has no {ADAPTER_CONFIG}.")
        runs = [load_run(p) for p in paths]
    run = runs[0]
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
    options = InferOptions(
        perturbations=wanted,
        cells_per_perturbation=args.cells_per_perturbation,
        control_mean=args.control_mean,
        allow_unknown=args.allow_unknown,
        control_offset=args.control_offset,
        per_batch=args.per_batch,
        seed=args.seed,
    )
    out, sources = infer(runs, adata, columns, options, source=source)
    with atomic_path(output) as tmp:
        out.write_h5ad(tmp)
    with atomic_path(output.with_suffix(".sources.csv")) as tmp:
        sources.to_csv(tmp, index=False)
    logger.info("Wrote %s (%d cells) and %s", output, out.n_obs, output.with_suffix(".sources.csv"))
    return 0


def _add_options(parser: argparse.ArgumentParser, options: list[Option]) -> None:
    """Add every ``(flag, keywords)`` option to ``parser``."""
    for flag, keywords in options:
        parser.add_argument(flag, **keywords)


def build_parser() -> argparse.ArgumentParser:
    """The ``perturbflow train|infer`` argument parser."""
    parser = argparse.ArgumentParser(prog="perturbflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the ST model of one named split")
    _add_options(train, TRAIN_OPTIONS)
    train.set_defaults(func=cmd_train)
    infer = sub.add_parser(
        "infer", help="predict perturbations from control cells", description=INFER_DESCRIPTION
    )
    _add_options(infer, INFER_OPTIONS)
    infer.set_defaults(func=cmd_infer)
    return parser


def run_cli(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command.

    Bad input exits 2 with its message, a stopped training 1 with where it resumes (one short
    block each); any other error is a bug and keeps its traceback. ``PERTURBFLOW_TRACEBACK=1``
    shows the traceback of every error.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as err:
        if verbose():
            raise
        print(f"perturbflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a stopped training, a Kedro or pydantic error: short if it is
        report = None if verbose() else short_report(err)
        if report is None:
            raise
        print(report, file=sys.stderr)
        return 1
